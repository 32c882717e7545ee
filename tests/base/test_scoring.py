"""Log loss, accuracy and the clip, for two classes and more."""

import math

import numpy as np
import pytest

from dogscats.base.scoring import accuracy, clip, log_loss


def test_log_loss_and_accuracy():
    assert log_loss(np.array([1, 0]), np.array([0.5, 0.5])) == pytest.approx(math.log(2))
    assert log_loss(np.array([1]), np.array([0.0])) == pytest.approx(-math.log(1e-15))
    assert accuracy(np.array([1, 0, 1]), np.array([0.9, 0.2, 0.4])) == pytest.approx(2 / 3)
    assert log_loss(np.array([1]), clip(np.array([0.0]), 0.005, 0.995)) == pytest.approx(-math.log(0.005))


def test_three_class_log_loss_accuracy_and_clip():
    y = np.array([0, 2, 1])
    p = np.array([[0.8, 0.1, 0.1], [0.2, 0.2, 0.6], [0.5, 0.25, 0.25]])
    assert log_loss(y, p) == pytest.approx(-(math.log(0.8) + math.log(0.6) + math.log(0.25)) / 3)
    assert accuracy(y, p) == pytest.approx(2 / 3)
    clipped = clip(np.array([[1.0, 0.0, 0.0]]), 0.005, 0.995)
    assert np.allclose(clipped.sum(axis=1), 1) and clipped.min() > 0.004


def test_two_class_forms_agree():
    y, p = np.array([1, 0, 1]), np.array([0.9, 0.3, 0.2])
    matrix = np.column_stack([1 - p, p])
    assert log_loss(y, p) == pytest.approx(log_loss(y, matrix))
    assert accuracy(y, p) == accuracy(y, matrix)
    tie = np.array([0.5])
    assert accuracy([1], tie) == accuracy([1], np.column_stack([1 - tie, tie])) == 1.0  # a tie goes to dog


def test_two_class_clip_bounds_hold_exactly_even_when_asymmetric():
    p = np.array([0.95, 0.001, 0.5])
    clipped = clip(np.column_stack([1 - p, p]), 0.005, 0.9)
    assert clipped[:, 1].tolist() == pytest.approx([0.9, 0.005, 0.5]) and np.allclose(clipped.sum(axis=1), 1)
