"""The Kaggle submission: `id,label` with label = p(dog), one row per test image, sorted by numeric id."""

from pathlib import Path

import numpy as np
import pandas as pd

from dogscats.atomic import write_csv
from dogscats.scoring import accuracy, log_loss


def make_submission(predictions_path: Path | str, test_ids: list[str]) -> pd.DataFrame:
    """The submission frame, checked: every test id exactly once, numeric ids, labels in [0, 1]."""
    pred = pd.read_csv(predictions_path, dtype={"id": str})
    dup = pred.id[pred.id.duplicated()].tolist()
    if dup:
        raise ValueError(f"{predictions_path}: ids predicted twice: {dup[:10]}")
    missing, extra = sorted(set(test_ids) - set(pred.id)), sorted(set(pred.id) - set(test_ids))
    if missing or extra:
        raise ValueError(f"{predictions_path}: missing test ids {missing[:10]}, unknown ids {extra[:10]}")
    labels = pred.label.to_numpy(dtype=np.float64)
    if not np.all((labels >= 0) & (labels <= 1)):  # also catches NaN
        raise ValueError(f"{predictions_path}: labels must be probabilities in [0, 1]")
    submission = pd.DataFrame({"id": pred.id.astype(int), "label": labels})
    return submission.sort_values("id", kind="stable").reset_index(drop=True)


def write_submission(path: Path | str, submission: pd.DataFrame) -> None:
    """Write the CSV atomically, probabilities with 6 decimals."""
    write_csv(path, submission.assign(label=submission.label.round(6)))


def read_answer_key(path: Path | str) -> pd.DataFrame:
    """An answer key: id,label with label 1 = dog, 0 = cat."""
    key = pd.read_csv(path)
    if list(key.columns[:2]) != ["id", "label"]:
        raise ValueError(f"{path}: an answer key needs the columns id,label")
    return key


def score_submission(submission: pd.DataFrame, key: pd.DataFrame) -> dict[str, float]:
    """Log loss and accuracy of the submission against the answer key (which must cover the same ids)."""
    merged = submission.merge(key, on="id", suffixes=("", "_true"), validate="one_to_one")
    if len(merged) != len(submission) or len(merged) != len(key):
        raise ValueError(f"answer key has {len(key)} ids, the submission {len(submission)}, {len(merged)} shared")
    return {
        "test_logloss": log_loss(merged.label_true, merged.label),
        "test_accuracy": accuracy(merged.label_true, merged.label),
    }
