"""Stage submit: write the Kaggle submission (id,label sorted by numeric id), checked; score it if labels are given."""

import sys

from dogscats.atomic import write_json
from dogscats.dataset import read_manifest
from dogscats.params import load_params
from dogscats.submission import make_submission, read_answer_key, score_submission, write_submission


def main(manifest_path: str, predictions_path: str, submission_path: str, metrics_path: str) -> None:
    """Check and write the submission; when submit.labels names an answer key, score it."""
    cfg = load_params()["submit"]
    test_ids = read_manifest(manifest_path).query("split == 'test'").id.tolist()
    submission = make_submission(predictions_path, test_ids)
    write_submission(submission_path, submission)
    metrics = {"n_rows": len(submission)}
    if cfg.get("labels"):
        metrics.update(score_submission(submission, read_answer_key(cfg["labels"])))
    write_json(metrics_path, metrics)
    print(f"submit: {submission_path}: {metrics}")


if __name__ == "__main__":
    main(*sys.argv[1:])
