"""Stage prepare: apply the overrides (data/overrides.csv), check every raw image and the answer key, deal the
labelled images into k folds (seeded, stratified), link the layout, write the manifest (image paths relative to the
image root, data.raw's folder or its table's, so moving the photos changes no output: dogscats.data.dataset
explains)."""

import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pandas as pd
from tqdm import tqdm

from dogscats.base.atomic import atomic_dir, write_csv, write_json
from dogscats.base.params import load_params
from dogscats.data.dataset import (
    MANIFEST_COLUMNS,
    check_link_tree,
    checked_answer_key,
    classes_of,
    file_md5,
    image_paths,
    image_root,
    link_paths,
    scan_raw,
    stratified_folds,
    write_symlink_tree,
)
from dogscats.data.images import decode_problem
from dogscats.data.overrides import apply_overrides, read_overrides
from dogscats.data.untrusted import DataError


def check_image(path: str) -> tuple[str, str]:
    """Why an image cannot be used ("" if it decodes), and its md5: the manifest records each image's hash, so the
    stages that read images depend on the manifest alone, and DVC hashes data.raw once, for prepare."""
    return decode_problem(path) or "", file_md5(path)


def main(
    overrides_path: str, out_dir: str, manifest_path: str, key_path: str, report_path: str, metrics_path: str
) -> None:
    """Prepare the raw data named by data.raw with the overrides applied, and the answer key named by submit.labels
    (an empty one if null)."""
    params = load_params()
    raw, prep, labels = Path(params["data"]["raw"]), params["prepare"], params["submit"]["labels"]
    check_link_tree(Path(out_dir))  # replaced whole at the end: a folder holding anything else stops the run here
    images, bad = scan_raw(raw)
    images, overridden = apply_overrides(images, read_overrides(overrides_path), overrides_path)
    test_ids = images.id[images.split == "test"].tolist()
    key = pd.DataFrame({"id": [], "label": []})
    if labels:
        key = checked_answer_key(Path(labels), raw, test_ids, classes_of(images.label))
    with ThreadPoolExecutor() as pool:
        paths = image_paths(images, raw)
        checks = tqdm(pool.map(check_image, paths), total=len(images), desc="prepare: checking images")
        images["problem"], images["md5"] = zip(*checks, strict=True)
    for source, problem, split in images[images.problem != ""][["source", "problem", "split"]].itertuples(index=False):
        bad.append((source, problem if split == "train" else f"{problem} (test image kept, predicted with the prior)"))
        print(f"prepare: warning: {image_root(raw) / source}: {problem}", file=sys.stderr)
    write_csv(report_path, pd.DataFrame(bad, columns=["file", "reason"]))
    n_train = int((images.split == "train").sum())
    n_bad_train = int(((images.split == "train") & (images.problem != "")).sum())
    if n_bad_train > prep["max_bad_fraction"] * n_train:
        raise DataError(
            f"{n_bad_train} of {n_train} training images cannot be used, more than prepare.max_bad_fraction"
            f" ({prep['max_bad_fraction']}); the reasons are in {report_path}"
        )
    # Unusable training images are left out; a test image is never dropped, it is flagged instead.
    images = images[(images.split == "test") | (images.problem == "")].reset_index(drop=True)
    train = images.split == "train"
    if prep["folds"] > train.sum():
        raise DataError(f"prepare.folds is {prep['folds']}, but {raw} has {train.sum()} usable labelled images")
    images["fold"] = 0
    images.loc[train, "fold"] = stratified_folds(images.md5[train], images.label[train], prep["folds"], prep["seed"])
    for label, count in images.label[train].value_counts().sort_index().items():
        if count < prep["folds"]:
            print(
                f"prepare: warning: class {label} has {count} image(s) for {prep['folds']} folds: "
                f"{prep['folds'] - count} fold(s) hold none of it; its figures out of fold are poor, since each of its "
                "images is predicted by a model that saw one image fewer of the class",
                file=sys.stderr,
            )
    out = Path(out_dir)
    images["file"] = [str(link) for link in link_paths(images, out)]
    with atomic_dir(out) as tmp:  # a sibling of out, so the relative links stay valid after the rename
        write_symlink_tree(images, raw, tmp)
    write_csv(manifest_path, images[MANIFEST_COLUMNS])
    write_csv(key_path, key)
    counts = images.split.value_counts()
    metrics = {f"n_{s}": int(counts.get(s, 0)) for s in ("train", "test")}
    metrics["folds"] = prep["folds"]
    metrics["n_bad"], metrics["n_bad_train"] = len(bad), n_bad_train
    metrics["n_classes"] = len(classes_of(images.label))
    metrics |= overridden
    write_json(metrics_path, metrics)
    print(f"prepare: {metrics}")


if __name__ == "__main__":
    try:
        main(*sys.argv[1:])
    except DataError as err:  # the user's data breaks a rule: one line naming the file, line and rule
        sys.exit(f"prepare: {err}")
