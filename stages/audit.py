"""Stage audit: the data's problems before they cost you. Likely wrong labels (confident learning on the final
out-of-fold probabilities), exact and near duplicates (leaks across folds or into the test photos, conflicting
labels) and outliers (far from every photo in the backbones' feature space), in data/audit.csv (one row per
finding), an HTML page of thumbnails (a label issue's beside its class activation map for the suggested class, from
the exported classifier: dogscats.product.explain) and the counts per kind."""

import sys
import time

import numpy as np

from dogscats.base.atomic import atomic_path, write_csv, write_json
from dogscats.base.params import load_params
from dogscats.data.dataset import classes_of, image_root, read_manifest
from dogscats.data.overrides import read_overrides
from dogscats.data.predictions import read_prediction_table, read_probabilities
from dogscats.models.audit import (
    audit_features,
    audit_html,
    cam_rows,
    counts,
    duplicates,
    findings_table,
    label_issues,
    neighbour_search,
    outliers,
)
from dogscats.models.neighbours import search_method
from dogscats.product.explain import page_overlays


def main(
    manifest_path: str,
    oof_predictions_path: str,
    features_dir: str,
    audit_path: str,
    html_path: str,
    metrics_path: str,
    classifier_dir: str = "",
    overrides_path: str = "",
) -> None:
    """Find the label issues, duplicates and outliers; write the table (each finding marked reviewed where the
    decisions in overrides_path cover it), the page (with class activation maps from the exported classifier in
    classifier_dir, when given and it has them) and the counts."""
    params = load_params()
    cfg, raw = params["audit"], params["data"]["raw"]  # data.raw locates the thumbnails' images; not tracked
    manifest = read_manifest(manifest_path)
    classes = classes_of(manifest.label)
    oof = read_prediction_table(oof_predictions_path)  # the final probabilities, each from models that never saw it
    p = read_probabilities(oof, classes)
    p_head = read_probabilities(oof, classes, "_head")  # unclipped: orders the photos the clip bound ties
    labels = label_issues(oof.id.tolist(), oof.label.to_numpy(), p, p_head)

    ids, features, usable = audit_features([f"{features_dir}/{name}.h5" for name in params["backbones"]])
    indexed = manifest.set_index("id")
    if sorted(ids) != sorted(indexed.index):
        raise ValueError(f"{features_dir}: its images differ from {manifest_path}'s; rerun (dvc repro)")
    rows = indexed.loc[ids].reset_index()
    kept = np.flatnonzero(usable)
    method = search_method(cfg["search"], len(kept))
    start = time.perf_counter()
    near, scores = neighbour_search(features, usable, cfg["near_duplicate"], cfg["outlier_neighbours"], method)
    seconds = time.perf_counter() - start
    del features  # the largest thing this stage holds; the page needs it no more
    pairs = duplicates(rows, near)
    far = outliers([ids[i] for i in kept], scores, cfg["outlier_fence"])

    overrides = read_overrides(overrides_path) if overrides_path else None
    decided = dict(zip(overrides.id, overrides.action, strict=True)) if overrides is not None else {}
    table = findings_table(indexed, labels, pairs, far, classes, decided)
    write_csv(audit_path, table)
    found = counts(table)
    title = f"Audit of {len(oof)} labelled and {int((manifest.split == 'test').sum())} test photos: " + ", ".join(
        f"{n} {kind}" for kind, n in found.items()
    )
    shown, targets = cam_rows(table, cfg["show"], classes)
    files = [str(image_root(raw) / table.file[i]) for i in shown]
    overlays = page_overlays(classifier_dir, files, targets, f"audit: {html_path}")
    by_row = dict(zip(shown, overlays, strict=True)) if overlays else None
    with atomic_path(html_path, suffix=".html") as tmp:
        tmp.write_text(audit_html(table, image_root(raw), cfg["show"], title, by_row))
    write_json(metrics_path, found)
    print(
        f"audit: {found} (neighbour search, {method}, {seconds:.1f} s over {len(kept)} photos); the page is {html_path}"
    )


if __name__ == "__main__":
    main(*sys.argv[1:])
