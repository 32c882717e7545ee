"""The Kaggle submission: written sorted by id, checked, and scored against an answer key."""

import math

import numpy as np
import pandas as pd
import pytest

from dogscats.data.dataset import CLASSES
from dogscats.data.submission import make_submission, score_submission, write_submission


def _predictions(tmp_path, ids, labels):
    path = tmp_path / "pred.csv"
    pd.DataFrame({"id": ids, "p_cat": 1 - np.array(labels), "p_dog": labels}).to_csv(path, index=False)
    return path


def test_submission_is_sorted_by_numeric_id(tmp_path):
    path = _predictions(tmp_path, ["10", "2", "1"], [0.1, 0.2, 0.3])
    sub = make_submission(path, ["1", "2", "10"], CLASSES)
    assert sub.id.tolist() == ["1", "2", "10"] and sub.label.tolist() == [0.3, 0.2, 0.1]


def test_numeric_ids_keep_their_leading_zeros_and_score_against_the_key(tmp_path):
    path = _predictions(tmp_path, ["0010", "0002"], [0.1, 0.8])
    sub = make_submission(path, ["0002", "0010"], CLASSES)
    assert sub.id.tolist() == ["0002", "0010"]
    key = pd.DataFrame({"id": ["0010", "0002"], "label": ["cat", "dog"]})
    assert score_submission(sub, key, CLASSES)["test_accuracy"] == 1.0


@pytest.mark.parametrize(
    ("ids", "labels", "message"),
    [
        (["1", "2"], [0.1, 0.2], "missing test ids \\['3'\\]"),
        (["1", "2", "3", "3"], [0.1, 0.2, 0.3, 0.3], "predicted twice"),
        (["1", "2", "3"], [0.1, float("nan"), 0.3], "probabilities"),
        (["1", "2", "3"], [0.1, 1.2, 0.3], "probabilities"),
    ],
)
def test_bad_predictions_are_refused(tmp_path, ids, labels, message):
    with pytest.raises(ValueError, match=message):
        make_submission(_predictions(tmp_path, ids, labels), ["1", "2", "3"], CLASSES)


def test_score_against_answer_key():
    sub = pd.DataFrame({"id": ["1", "2"], "label": [0.9, 0.2]})
    key = pd.DataFrame({"id": ["2", "1"], "label": ["cat", "dog"]})
    score = score_submission(sub, key, CLASSES)
    assert score["test_accuracy"] == 1.0
    assert score["test_logloss"] == pytest.approx(-(math.log(0.9) + math.log(0.8)) / 2)
    with pytest.raises(ValueError, match="the answer key has 1 ids"):
        score_submission(sub, key.iloc[:1], CLASSES)


@pytest.mark.parametrize("odd_id", ["NA", "null", "None", "nan", ""])
def test_ids_that_pandas_would_read_as_missing_stay_text(tmp_path, odd_id):
    path = _predictions(tmp_path, [odd_id, "b"], [0.9, 0.2])
    sub = make_submission(path, ["b", odd_id], CLASSES)
    assert sorted(sub.id) == sorted(["b", odd_id])
    assert (
        score_submission(sub, pd.DataFrame({"id": ["b", odd_id], "label": ["cat", "dog"]}), CLASSES)["test_accuracy"]
        == 1.0
    )


def test_three_class_submission_has_a_column_per_class_and_is_scored_by_class_name(tmp_path):
    path = tmp_path / "pred.csv"
    probs = np.array([[0.7, 0.2, 0.1], [0.1, 0.1, 0.8]])
    pd.DataFrame({"id": ["b", "a"], "p_bird": probs[:, 0], "p_cat": probs[:, 1], "p_dog": probs[:, 2]}).to_csv(path)
    sub = make_submission(path, ["a", "b"], ["bird", "cat", "dog"])
    assert list(sub) == ["id", "bird", "cat", "dog"] and sub.id.tolist() == ["a", "b"]
    key = pd.DataFrame({"id": ["a", "b"], "label": ["dog", "cat"]})
    score = score_submission(sub, key, ["bird", "cat", "dog"])
    assert score["test_accuracy"] == 0.5
    assert score["test_logloss"] == pytest.approx(-(math.log(0.8) + math.log(0.2)) / 2)


def test_the_submission_is_scored_as_written_with_six_decimals(tmp_path):
    path = _predictions(tmp_path, ["1", "2"], [4e-7, 0.7000004])  # 4e-7 is written as 0.0: a dog predicted a cat
    sub = make_submission(path, ["1", "2"], CLASSES)
    write_submission(tmp_path / "submission.csv", sub)
    written = pd.read_csv(tmp_path / "submission.csv", dtype={"id": str})
    assert written.label.tolist() == [0.0, 0.7]
    key = pd.DataFrame({"id": ["1", "2"], "label": ["dog", "dog"]})
    score = score_submission(sub, key, CLASSES)
    assert score == score_submission(written, key, CLASSES)
    assert score["test_logloss"] == pytest.approx(-(math.log(1e-15) + math.log(0.7)) / 2)  # not -log(4e-7)
