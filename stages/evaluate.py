"""Stage evaluate: ROC curve, confusion matrix, reliability (calibration) curve and per-class figures (precision,
recall, log loss) of the labelled images' final out-of-fold probabilities (choices made without each image's fold)
for `dvc plots` and `dvc metrics`, and an HTML page of the worst mistakes (thumbnail, true class, its predicted
probability), each beside its class activation map (the exported classifier's, for the class it predicted:
dogscats.product.explain)."""

import sys

import numpy as np

from dogscats.base.atomic import atomic_path, write_csv, write_json
from dogscats.base.params import load_params
from dogscats.base.scoring import as_matrix, predicted_class
from dogscats.data.dataset import classes_of, image_paths, read_manifest
from dogscats.data.predictions import read_prediction_table, read_probabilities
from dogscats.models.evaluation import (
    auc,
    calibration_rows,
    confusion_rows,
    per_class_figures,
    per_class_metrics,
    roc_points,
    worst_mistakes,
    worst_mistakes_html,
)
from dogscats.product.explain import page_overlays


def main(
    manifest_path: str,
    oof_predictions_path: str,
    roc_path: str,
    confusion_path: str,
    calibration_path: str,
    per_class_path: str,
    html_path: str,
    metrics_path: str,
    classifier_dir: str = "",
) -> None:
    """Write the four plots' data, the mistakes page (with class activation maps from the exported classifier in
    classifier_dir, when given and it has them), the AUC and the per-class figures."""
    params = load_params()
    cfg, raw = params["evaluate"], params["data"]["raw"]  # data.raw locates the thumbnails' images; not tracked
    manifest = read_manifest(manifest_path)
    manifest = manifest[manifest.split == "train"].set_index("id")
    classes = classes_of(manifest.label)
    oof = read_prediction_table(oof_predictions_path)  # each image predicted by models that never saw it
    p, y = read_probabilities(oof, classes), oof.label.to_numpy()
    write_csv(roc_path, roc_points(y, p))
    write_csv(confusion_path, confusion_rows(y, p, classes))
    write_csv(calibration_path, calibration_rows(y, p))
    per_class = per_class_figures(y, p, classes)
    write_csv(per_class_path, per_class)

    files = np.array(image_paths(manifest.loc[oof.id], raw))
    errors = int((predicted_class(p) != y).sum())
    worst = worst_mistakes(oof.id, files, y, p, classes, cfg["worst_mistakes"])
    title = f"The {len(worst)} worst of {errors} mistakes among {len(oof)} labelled images (out of fold)"
    with atomic_path(html_path, suffix=".html") as tmp:
        predicted = predicted_class(as_matrix(p)[worst.index]).tolist()
        overlays = page_overlays(classifier_dir, worst.file.tolist(), predicted, f"evaluate: {html_path}")
        page = worst_mistakes_html(
            worst, title if errors else f"No mistakes among {len(oof)} labelled images", overlays
        )
        tmp.write_text(page)
    metrics = {"cv_auc": auc(y, p), "cv_errors": errors, "per_class": per_class_metrics(per_class)}
    if metrics["cv_auc"] is None:
        present = ", ".join(classes[i] for i in sorted(set(y)))
        print(f"evaluate: the labelled images hold one class only ({present}): no ROC curve or AUC", file=sys.stderr)
    write_json(metrics_path, metrics)
    print(f"evaluate: {metrics}; worst mistakes in {html_path}")


if __name__ == "__main__":
    main(*sys.argv[1:])
