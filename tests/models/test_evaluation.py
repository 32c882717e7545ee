"""ROC, confusion and per-class data for dvc plots and metrics, and the worst-mistakes page."""

import numpy as np
import pandas as pd
import pytest

from dogscats.base.scoring import image_log_losses, log_loss
from dogscats.models.evaluation import (
    auc,
    confusion_rows,
    per_class_figures,
    per_class_metrics,
    roc_points,
    worst_mistakes,
    worst_mistakes_html,
)

from ..conftest import write_image


def test_roc_of_a_perfect_ranking():
    y, p = np.array([0, 0, 1, 1]), np.array([0.1, 0.4, 0.6, 0.9])
    roc = roc_points(y, p)
    assert auc(y, p) == 1.0 and roc.tpr.iloc[-1] == 1 and roc.fpr.iloc[-1] == 1
    assert (roc.threshold <= 1).all()


def test_confusion_rows_name_classes():
    rows = confusion_rows(np.array([0, 1, 1]), np.array([0.7, 0.9, 0.2]), ["cat", "dog"])
    assert rows.values.tolist() == [["cat", "dog"], ["dog", "dog"], ["dog", "cat"]]
    three = confusion_rows(np.array([2, 0]), np.array([[0.2, 0.3, 0.5], [0.1, 0.8, 0.1]]), ["bird", "cat", "dog"])
    assert three.values.tolist() == [["dog", "dog"], ["bird", "cat"]]


# Three classes, six photos: bird 0, 1; cat 2, 3, 4; dog 5. Predicted (most probable): bird, cat; cat, cat, bird; dog.
Y3 = np.array([0, 0, 1, 1, 1, 2])
P3 = np.array(
    [
        [0.8, 0.1, 0.1],  # bird, right
        [0.25, 0.5, 0.25],  # bird as cat
        [0.1, 0.8, 0.1],  # cat, right
        [0.2, 0.5, 0.3],  # cat, right
        [0.5, 0.25, 0.25],  # cat as bird
        [0.1, 0.1, 0.8],  # dog, right
    ]
)


def test_confusion_rows_of_three_classes_hold_every_actual_and_predicted_pair():
    rows = confusion_rows(Y3, P3, ["bird", "cat", "dog"])
    matrix = pd.crosstab(rows.actual, rows.predicted).reindex(
        index=["bird", "cat", "dog"], columns=["bird", "cat", "dog"], fill_value=0
    )
    assert matrix.to_numpy().tolist() == [[1, 1, 0], [1, 2, 0], [0, 0, 1]]


def test_per_class_precision_recall_and_log_loss_of_three_classes():
    figures = per_class_figures(Y3, P3, ["bird", "cat", "dog"])
    assert figures["class"].tolist() == ["bird", "cat", "dog"] and figures.n.tolist() == [2, 3, 1]
    assert figures.precision.tolist() == pytest.approx([1 / 2, 2 / 3, 1])  # bird: 1 of 2 predicted; cat: 2 of 3
    assert figures.recall.tolist() == pytest.approx([1 / 2, 2 / 3, 1])
    bird, cat, dog = -np.log([0.8, 0.25]).mean(), -np.log([0.8, 0.5, 0.25]).mean(), -np.log(0.8)
    assert figures.log_loss.tolist() == pytest.approx([bird, cat, dog])
    assert np.average(figures.log_loss, weights=figures.n) == pytest.approx(log_loss(Y3, P3))  # the overall figure
    metrics = per_class_metrics(figures)
    assert list(metrics) == ["bird", "cat", "dog"]
    assert metrics["cat"] == {"n": 3, "precision": pytest.approx(2 / 3), "recall": pytest.approx(2 / 3),
                              "log_loss": pytest.approx(cat)}  # fmt: skip


def test_per_class_figures_of_a_class_never_predicted_or_labelled_are_zero_and_null():
    figures = per_class_figures(np.array([0, 0, 1]), np.array([0.2, 0.3, 0.4]), ["cat", "dog"])  # all cats
    assert figures.precision.tolist() == pytest.approx([2 / 3, 0]) and figures.recall.tolist() == [1, 0]
    none_labelled = per_class_figures(np.array([0, 1]), np.array([[0.9, 0.05, 0.05], [0.1, 0.8, 0.1]]), list("abc"))
    assert per_class_metrics(none_labelled)["c"] == {"n": 0, "precision": 0.0, "recall": 0.0, "log_loss": None}


def test_three_class_roc_is_the_one_vs_rest_micro_average():
    y = np.array([0, 1, 2])
    p = np.array([[0.8, 0.1, 0.1], [0.1, 0.8, 0.1], [0.1, 0.1, 0.8]])
    assert auc(y, p) == 1.0 and roc_points(y, p).tpr.iloc[-1] == 1
    assert auc(y, np.roll(p, 1, axis=1)) < 0.5  # every true class gets a low probability


def test_image_log_losses():
    assert np.allclose(image_log_losses(np.array([1, 0]), np.array([0.5, 0.5])), np.log(2))
    assert np.isfinite(image_log_losses(np.array([1]), np.array([0.0]))).all()


def test_worst_mistakes_page_embeds_thumbnails(tmp_path):
    big = write_image(tmp_path / "cat.1.jpg", (200, 60, 40), size=(800, 600))
    rows = pd.DataFrame({"id": ["cat.1<b>"], "file": [str(big)], "truth": ["cat"], "p_truth": [0.03], "loss": [3.5]})
    page = worst_mistakes_html(rows, "worst")
    assert page.count('src="data:image/jpeg;base64,') == 1
    assert "cat.1&lt;b&gt;: a cat, p(cat) = 0.0300" in page


def test_a_single_class_among_the_scored_images_has_no_roc_and_no_error():
    y, p = np.array([1, 1, 1]), np.array([0.9, 0.4, 0.8])
    assert auc(y, p) is None and roc_points(y, p).empty and list(roc_points(y, p)) == ["fpr", "tpr", "threshold"]


def test_worst_mistakes_are_only_mistakes_the_costliest_first():
    ids = pd.Series(["a", "b", "c", "d", "e"])
    y = np.array([1, 1, 0, 0, 1])
    p = np.array([0.9, 0.2, 0.6, 0.1, 0.01])  # b, c and e are wrong; a and d are right
    worst = worst_mistakes(ids, np.array(list("ABCDE")), y, p, ["cat", "dog"], count=24)
    assert worst.id.tolist() == ["e", "b", "c"] and worst.file.tolist() == ["E", "B", "C"]
    assert worst.truth.tolist() == ["dog", "dog", "cat"] and worst.p_truth.tolist() == pytest.approx([0.01, 0.2, 0.4])
    assert worst_mistakes(ids, np.array(list("ABCDE")), y, p, ["cat", "dog"], count=2).id.tolist() == ["e", "b"]
    assert worst_mistakes(ids, np.array(list("ABCDE")), y, 1.0 * y, ["cat", "dog"], count=24).empty
