"""Stage submit: write the submission (Kaggle's id,label for two classes), checked; score it if labels are given."""

import sys

from dogscats.atomic import write_json
from dogscats.dataset import classes_of, read_manifest
from dogscats.params import load_params
from dogscats.submission import make_submission, read_answer_key, score_submission, write_submission


def main(manifest_path: str, predictions_path: str, submission_path: str, metrics_path: str) -> None:
    """Check and write the submission; when submit.labels names an answer key, score it."""
    cfg = load_params()["submit"]
    manifest = read_manifest(manifest_path)
    classes = classes_of(manifest.label)
    submission = make_submission(predictions_path, manifest.query("split == 'test'").id.tolist(), classes)
    write_submission(submission_path, submission)
    metrics = {"n_rows": len(submission)}
    if cfg.get("labels"):
        metrics.update(score_submission(submission, read_answer_key(cfg["labels"]), classes))
    write_json(metrics_path, metrics)
    print(f"submit: {submission_path}: {metrics}")


if __name__ == "__main__":
    main(*sys.argv[1:])
