"""The submission: one row per test image, sorted by id (numerically when every id is a number).

Two classes: Kaggle's `id,label`, label = p(second class), p(dog). More: `id,<class>,...`, one probability column per
class, rows summing to 1. Probabilities are rounded to DECIMALS places when the frame is made, so what is scored is what
is written."""

from pathlib import Path

import numpy as np
import pandas as pd

from dogscats.base.atomic import write_csv
from dogscats.base.scoring import accuracy, log_loss
from dogscats.data.predictions import read_prediction_table, read_probabilities

DECIMALS = 6  # the submission's probabilities, as written and as scored


def make_submission(predictions_path: Path | str, test_ids: list[str], classes: list[str]) -> pd.DataFrame:
    """The submission frame, checked: every test id exactly once, probabilities in [0, 1], rounded to DECIMALS places
    (as written, and so as scored)."""
    pred = read_prediction_table(predictions_path)
    dup = pred.id[pred.id.duplicated()].tolist()
    if dup:
        raise ValueError(f"{predictions_path}: ids predicted twice: {dup[:10]}")
    missing, extra = sorted(set(test_ids) - set(pred.id)), sorted(set(pred.id) - set(test_ids))
    if missing or extra:
        raise ValueError(f"{predictions_path}: missing test ids {missing[:10]}, unknown ids {extra[:10]}")
    probs = read_probabilities(pred, classes)
    if not np.all((probs >= 0) & (probs <= 1)):  # also catches NaN
        raise ValueError(f"{predictions_path}: labels must be probabilities in [0, 1]")
    probs = probs.round(DECIMALS)
    if len(classes) == 2:
        submission = pd.DataFrame({"id": pred.id, "label": probs[:, 1]})
    else:
        submission = pd.DataFrame({"id": pred.id}).join(pd.DataFrame(probs, columns=classes, index=pred.index))
    numeric = pred.id.str.fullmatch(r"\d+").all()  # ids are kept as written (0001 stays 0001), sorted by value
    order = submission.id.astype(int) if numeric else submission.id
    return submission.iloc[np.argsort(order.to_numpy(), kind="stable")].reset_index(drop=True)


def write_submission(path: Path | str, submission: pd.DataFrame) -> None:
    """Write the CSV atomically: make_submission's frame, its probabilities rounded already."""
    write_csv(path, submission)


def score_submission(submission: pd.DataFrame, key: pd.DataFrame, classes: list[str]) -> dict[str, float]:
    """Log loss and accuracy of the submission against an answer key of class names for the same ids."""
    truth = key.set_index("id").label.reindex(submission.id)
    if truth.isna().any() or len(key) != len(submission):
        raise ValueError(f"the answer key has {len(key)} ids, the submission {len(submission)}; rerun prepare")
    y = truth.map({name: i for i, name in enumerate(classes)}).to_numpy()
    p = submission.label if len(classes) == 2 else submission[classes]
    return {"test_logloss": log_loss(y, p.to_numpy(dtype=np.float64)), "test_accuracy": accuracy(y, p.to_numpy())}
