"""The submission: one row per test image, sorted by id (numerically when every id is a number).

Two classes: Kaggle's `id,label`, label = p(second class), p(dog). More: `id,<class>,...`, one probability column per
class, rows summing to 1."""

from pathlib import Path

import numpy as np
import pandas as pd

from dogscats.atomic import write_csv
from dogscats.predictions import read_probabilities
from dogscats.scoring import accuracy, log_loss


def make_submission(predictions_path: Path | str, test_ids: list[str], classes: list[str]) -> pd.DataFrame:
    """The submission frame, checked: every test id exactly once, probabilities in [0, 1]."""
    pred = pd.read_csv(predictions_path, dtype={"id": str})
    dup = pred.id[pred.id.duplicated()].tolist()
    if dup:
        raise ValueError(f"{predictions_path}: ids predicted twice: {dup[:10]}")
    missing, extra = sorted(set(test_ids) - set(pred.id)), sorted(set(pred.id) - set(test_ids))
    if missing or extra:
        raise ValueError(f"{predictions_path}: missing test ids {missing[:10]}, unknown ids {extra[:10]}")
    probs = read_probabilities(pred, classes)
    if not np.all((probs >= 0) & (probs <= 1)):  # also catches NaN
        raise ValueError(f"{predictions_path}: labels must be probabilities in [0, 1]")
    if len(classes) == 2:
        submission = pd.DataFrame({"id": pred.id, "label": probs[:, 1]})
    else:
        submission = pd.DataFrame({"id": pred.id}).join(pd.DataFrame(probs, columns=classes, index=pred.index))
    numeric = pred.id.str.fullmatch(r"\d+").all()  # ids are kept as written (0001 stays 0001), sorted by value
    order = submission.id.astype(int) if numeric else submission.id
    return submission.iloc[np.argsort(order.to_numpy(), kind="stable")].reset_index(drop=True)


def write_submission(path: Path | str, submission: pd.DataFrame) -> None:
    """Write the CSV atomically, probabilities with 6 decimals."""
    write_csv(path, submission.round({c: 6 for c in submission.columns if c != "id"}))


def read_answer_key(path: Path | str) -> pd.DataFrame:
    """An answer key: id,label, the label a class index (two classes: 1 = dog, 0 = cat) or a class name."""
    key = pd.read_csv(path, dtype={"id": str, "label": str})
    if list(key.columns[:2]) != ["id", "label"]:
        raise ValueError(f"{path}: an answer key needs the columns id,label")
    return key


def score_submission(submission: pd.DataFrame, key: pd.DataFrame, classes: list[str]) -> dict[str, float]:
    """Log loss and accuracy of the submission against the answer key (which must cover the same ids)."""
    sub = submission.assign(id=submission.id.astype(str))
    merged = sub.merge(key, on="id", suffixes=("", "_true"), validate="one_to_one")
    if len(merged) != len(submission) or len(merged) != len(key):
        raise ValueError(f"answer key has {len(key)} ids, the submission {len(submission)}, {len(merged)} shared")
    truth = merged.label_true if len(classes) == 2 else merged.label
    index = {name: i for i, name in enumerate(classes)} | {str(i): i for i in range(len(classes))}
    unknown = sorted(set(truth) - set(index))
    if unknown:
        raise ValueError(f"answer key labels {unknown[:10]} are neither class indices nor names ({', '.join(classes)})")
    y = truth.map(index).to_numpy()
    p = merged.label.to_numpy(dtype=np.float64) if len(classes) == 2 else merged[classes].to_numpy(dtype=np.float64)
    return {"test_logloss": log_loss(y, p), "test_accuracy": accuracy(y, p)}
