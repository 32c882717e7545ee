"""Blend weight, temperature and clip bounds chosen on validation."""

import numpy as np
import pytest

from dogscats.blending import best_blend_weight, best_clip, best_temperature, blend, with_temperature


def test_blend_is_the_weighted_mean():
    assert blend(np.array([0.2]), np.array([0.6]), 0.25)[0] == pytest.approx(0.3)


def test_best_weight_follows_the_better_model():
    y = np.array([0, 1, 0, 1])
    sharp, vague = np.array([0.05, 0.95, 0.05, 0.95]), np.array([0.4, 0.6, 0.4, 0.6])
    assert best_blend_weight(y, vague, sharp) == 1.0
    assert best_blend_weight(y, sharp, vague) == 0.0


def test_best_blend_of_two_complementary_models_is_inside():
    y = np.array([0, 1, 0, 1])
    a, b = np.array([0.01, 0.99, 0.6, 0.99]), np.array([0.01, 0.6, 0.01, 0.99])  # each wrong-ish on one image
    assert 0 < best_blend_weight(y, a, b) < 1


def test_a_confident_mistake_widens_the_clip():
    y = np.ones(100)
    p = np.full(100, 0.9999)
    assert best_clip(y, p) == (0.0005, 0.9995)  # no mistake: the narrowest margin
    p[0] = 0.0
    low, high = best_clip(y, p)
    assert low > 0.0005 and high == pytest.approx(1 - low)


def test_temperature_one_changes_nothing_and_above_one_softens():
    p = np.array([0.1, 0.5, 0.99])
    assert np.allclose(with_temperature(p, 1.0), p)
    soft = with_temperature(p, 2.0)
    assert soft[0] > 0.1 and soft[1] == pytest.approx(0.5) and soft[2] < 0.99


def test_an_over_confident_model_gets_a_temperature_above_one():
    y = np.array([1] * 9 + [0])
    p = np.full(10, 0.999)  # right 9 times in 10, but claims 999 in 1000
    assert best_temperature(y, p) > 1.5
    assert best_temperature(y, np.full(10, 0.9)) == pytest.approx(1.0, abs=0.06)


def test_temperature_on_three_classes_keeps_rows_normalised_and_matches_two_classes():
    p3 = np.array([[0.7, 0.2, 0.1], [0.1, 0.1, 0.8]])
    soft = with_temperature(p3, 2.0)
    assert np.allclose(soft.sum(axis=1), 1) and soft[0, 0] < 0.7 and soft[1, 2] < 0.8
    assert np.allclose(with_temperature(p3, 1.0), p3)
    p = np.array([0.1, 0.9])  # the (N,) p(second class) form and its (N, 2) matrix agree
    assert np.allclose(with_temperature(p, 0.5), with_temperature(np.column_stack([1 - p, p]), 0.5)[:, 1])


@pytest.mark.parametrize(("right", "wrong"), [(149, 1), (6, 4)])
def test_the_temperature_is_found_over_its_whole_range(right, wrong):
    """A model that says p = sigmoid(+-2) where a share right / (right + wrong) is right: the best temperature makes
    sigmoid(2 / T) equal that share, T = 2 / log(right / wrong): 0.400 and 4.93, beyond the old grid's [0.5, 2]."""
    y = np.array([1] * right + [0] * wrong + [0] * right + [1] * wrong)
    p = 1 / (1 + np.exp(np.repeat([-2.0, 2.0], right + wrong)))
    assert best_temperature(y, p) == pytest.approx(2 / np.log(right / wrong), rel=1e-3)


def test_a_validation_set_without_mistakes_keeps_the_temperature_at_one():
    y = np.array([1, 1, 0, 0])
    assert best_temperature(y, np.array([0.9, 0.6, 0.2, 0.45])) == 1.0  # sharper is always better: no finite best


def test_blend_and_temperature_choices_work_on_three_classes():
    y = np.array([0, 1, 2, 2])
    sharp = np.eye(3)[y] * 0.9 + 0.1 / 3
    vague = np.full((4, 3), 1 / 3)
    assert best_blend_weight(y, vague, sharp) == 1.0
    p = np.eye(3)[y] * 0.6 + 0.4 / 3
    p[0] = [0.2, 0.7, 0.1]  # one mistake, three confident right answers: sharpen
    assert best_temperature(y, p) < 1.0
