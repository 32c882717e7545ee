"""Stage submit: write the submission (Kaggle's id,label for two classes), checked; score it against the answer key
that prepare checked, if there is one. Without photos to predict it writes the header alone and says so."""

import sys

from dogscats.base.atomic import write_json
from dogscats.base.params import load_params
from dogscats.data.dataset import classes_of, read_answer_key, read_manifest
from dogscats.data.submission import make_submission, score_submission, write_submission

NO_TEST = "no photos to predict (no test/ folder, or no empty labels in the table): nothing to submit"


def main(manifest_path: str, predictions_path: str, key_path: str, submission_path: str, metrics_path: str) -> None:
    """Check and write the submission; score it when the answer key has rows."""
    load_params()
    manifest = read_manifest(manifest_path)
    classes = classes_of(manifest.label)
    submission = make_submission(predictions_path, manifest.query("split == 'test'").id.tolist(), classes)
    write_submission(submission_path, submission)
    metrics = {"n_rows": len(submission), "n_test": int((manifest.split == "test").sum())}
    if not metrics["n_test"]:
        metrics["note"] = NO_TEST
    key = read_answer_key(key_path)
    if len(key):
        metrics.update(score_submission(submission, key, classes))
    write_json(metrics_path, metrics)
    print(f"submit: {submission_path}: {metrics}")


if __name__ == "__main__":
    main(*sys.argv[1:])
