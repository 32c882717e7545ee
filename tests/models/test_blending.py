"""Blend weight, temperature and clip bounds chosen on out-of-fold probabilities."""

import numpy as np
import pytest

from dogscats.base.scoring import log_loss
from dogscats.models.blending import (
    CLIP_GRID,
    apply,
    best_blend_weight,
    best_clip,
    best_temperature,
    best_temperature_and_clip,
    blend,
    choose,
    cross_fitted,
    with_temperature,
)
from dogscats.models.calibration import TEMPERATURE_RANGE


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


def test_a_temperature_at_the_ranges_end_stays_inside_it_so_the_exported_settings_load():
    """Half right, half wrong with p = sigmoid(+-2): the loss falls as T grows, to the grid's end, exp(log(100)), which
    is 100.00000000000004: above the bound the classifier's settings check, so the export did not load."""
    y = np.array([1, 0, 0, 1])
    p = 1 / (1 + np.exp(np.array([-2.0, -2.0, 2.0, 2.0])))
    t = best_temperature(y, p)
    assert TEMPERATURE_RANGE[0] <= t <= TEMPERATURE_RANGE[1] and t == pytest.approx(TEMPERATURE_RANGE[1])


def test_out_of_fold_probabilities_without_mistakes_keep_the_temperature_at_one():
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


def _noisy_models(seed: int = 0, n: int = 200) -> tuple[np.ndarray, list[np.ndarray], list[np.ndarray]]:
    """Labels and two models' probabilities at three epochs each, of varying quality."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n)
    by_epoch = [
        [np.clip(np.where(y == 1, 0.5 + q, 0.5 - q) + rng.normal(0, 0.2, n), 0.01, 0.99) for q in qualities]
        for qualities in ((0.1, 0.3, 0.2), (0.2, 0.25, 0.35))
    ]
    return y, *by_epoch


SETTINGS = {"blend": "auto", "calibrate": True, "clip": "auto"}


def test_choose_takes_each_models_best_epoch_then_the_blend_temperature_and_clip():
    y, head, tuned = _noisy_models()
    choices = choose(y, head, tuned, SETTINGS)
    assert choices.head_epoch == int(np.argmin([log_loss(y, p) for p in head]))
    assert choices.epoch == int(np.argmin([log_loss(y, p) for p in tuned]))
    assert 0 <= choices.blend <= 1 and choices.temperature > 0 and choices.low < choices.high
    fixed = choose(y, head, tuned, {"blend": 0.25, "calibrate": False, "clip": [0.01, 0.99]})
    assert (fixed.blend, fixed.temperature, fixed.low, fixed.high) == (0.25, 1.0, 0.01, 0.99)
    assert log_loss(y, apply(choices, head, tuned)) <= log_loss(y, apply(fixed, head, tuned))


def test_a_folds_cross_fitted_probabilities_ignore_its_own_labels():
    y, head, tuned = _noisy_models()
    folds = np.arange(len(y)) % 4 + 1
    nested = cross_fitted(y, folds, head, tuned, SETTINGS)
    flipped = np.where(folds == 1, 1 - y, y)  # fold 1's labels changed: only the other folds' choices may move
    again = cross_fitted(flipped, folds, head, tuned, SETTINGS)
    assert np.allclose(nested[folds == 1], again[folds == 1])
    assert not np.allclose(nested[folds != 1], again[folds != 1])
    others = folds != 1
    on_others = choose(y[others], [p[others] for p in head], [p[others] for p in tuned], SETTINGS)
    assert np.allclose(nested[folds == 1], apply(on_others, [p[~others] for p in head], [p[~others] for p in tuned]))


def _clipped_loss(y: np.ndarray, p: np.ndarray, temperature: float, low: float, high: float) -> float:
    return log_loss(y, np.clip(with_temperature(p, temperature), low, high))


def test_the_temperature_is_chosen_on_the_clipped_loss_that_is_scored():
    """Two near-certain mistakes among confident right answers: unclipped, they pull the temperature far above 1;
    clipped at [0.05, 0.95] they cost -log(0.05) whatever the temperature, so a sharper one scores better."""
    y = np.array([1] * 30 + [0] * 30 + [1, 0])
    p = np.concatenate([np.full(30, 0.8), np.full(30, 0.2), [1e-9, 1 - 1e-9]])
    low, high = 0.05, 0.95
    chosen = choose(y, [p], [p], {"blend": 0, "calibrate": True, "clip": [low, high]})
    grid = np.exp(np.linspace(np.log(0.01), np.log(100), 2001))
    best_on_grid = min(_clipped_loss(y, p, t, low, high) for t in grid)
    assert _clipped_loss(y, p, chosen.temperature, low, high) <= best_on_grid + 1e-9
    assert chosen.temperature < 1 < best_temperature(y, p)  # unclipped, the mistakes soften it


def test_clip_auto_chooses_each_bounds_best_temperature_and_the_best_pair():
    y = np.array([1] * 30 + [0] * 30 + [1, 0])
    p = np.concatenate([np.full(30, 0.8), np.full(30, 0.2), [1e-9, 1 - 1e-9]])
    chosen = choose(y, [p], [p], {"blend": 0, "calibrate": True, "clip": "auto"})
    scored = _clipped_loss(y, p, chosen.temperature, chosen.low, chosen.high)
    for low in (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05):
        assert scored <= _clipped_loss(y, p, best_temperature(y, p, low, 1 - low), low, 1 - low) + 1e-12
    assert scored < _clipped_loss(
        y, p, best_temperature(y, p), *best_clip(y, with_temperature(p, best_temperature(y, p)))
    )


def test_clip_auto_keeps_every_class_above_its_floor_with_many_classes():
    rng = np.random.default_rng(0)
    k = 25  # 1/K = 0.04: the grid's 0.05 would clip every class above chance
    p = np.clip(rng.dirichlet(np.full(k, 0.05), 200), 1e-12, 1)  # as predict's blend gives them: no exact zero
    p /= p.sum(axis=1, keepdims=True)
    y = rng.integers(0, k, 200)  # labels unrelated to p: the widest clip wins where it is allowed
    low, high = best_clip(y, p)
    assert low < 1 / k and low == max(g for g in CLIP_GRID if g < 1 / k)
    temperature, low, high = best_temperature_and_clip(y, p)
    assert low < 1 / k < high
