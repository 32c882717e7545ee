"""Blending the ensemble head with the fine-tuned model, calibrating and clipping: each number fixed in params or
chosen on out-of-fold probabilities, and the honest figure, where each fold's choices are made on the other folds."""

from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy.optimize import minimize_scalar

from dogscats.base.scoring import as_matrix, clip, log_loss, predicted_class
from dogscats.models.calibration import TEMPERATURE_RANGE, blend, final_p, with_temperature

TEMPERATURE_GRID = 41  # log-spaced temperatures tried before the minimiser refines the best
CLIP_GRID = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05)  # low bounds tried by clip: auto (high = 1 - low)


def best_blend_weight(y: np.ndarray, p_head: np.ndarray, p_finetuned: np.ndarray) -> float:
    """The fine-tuned model's weight in [0, 1] with the lowest log loss: the loss of a mixture is convex in its
    weight, so a bounded scalar search finds it; the ends are tried too (the search stops just inside them)."""
    loss = lambda w: log_loss(y, blend(p_head, p_finetuned, w))  # noqa: E731
    found = minimize_scalar(loss, bounds=(0.0, 1.0), method="bounded", options={"xatol": 1e-4})
    candidates = [0.0, round(float(found.x), 4), 1.0]
    return min(candidates, key=loss)


def best_temperature(y: np.ndarray, p: np.ndarray, low: float = 0.0, high: float = 1.0) -> float:
    """The temperature with the lowest log loss of the probabilities clipped to [low, high] (the loss that is scored;
    temperature scaling, a one-parameter calibration), over log T across TEMPERATURE_RANGE: a grid, then a bounded
    scalar minimiser between the best point's neighbours (clipping can give the loss more than one minimum). When
    every image is classified right the loss only falls as T goes to 0 (unclipped, no finite best; clipped, until every
    probability reaches its bound): nothing out of fold tells how far to sharpen, so T stays 1, deliberately."""
    if np.all(predicted_class(p) == np.asarray(y)):
        return 1.0
    p = np.clip(np.asarray(p, dtype=np.float64), 1e-12, 1 - 1e-12)

    def loss(log_t: float) -> float:
        return log_loss(y, clip(with_temperature(p, np.exp(log_t)), low, high))

    grid = np.linspace(*np.log(TEMPERATURE_RANGE), TEMPERATURE_GRID)
    losses = [loss(log_t) for log_t in grid]
    ties = [i for i, value in enumerate(losses) if value <= min(losses) + 1e-12]  # a flat, clipped stretch: nearest 1
    best = min(ties, key=lambda i: abs(grid[i]))
    bounds = (grid[max(best - 1, 0)], grid[min(best + 1, len(grid) - 1)])
    found = minimize_scalar(loss, bounds=bounds, method="bounded", options={"xatol": 1e-5})
    t = float(np.exp(found.x if found.fun < losses[best] else grid[best]))
    return min(max(t, TEMPERATURE_RANGE[0]), TEMPERATURE_RANGE[1])  # exp(log(100)) is 100.00000000000004: out of range


def clip_grid(p: np.ndarray) -> list[float]:
    """The grid's low bounds that leave every one of the K classes above its floor (low < 1/K)."""
    return [low for low in CLIP_GRID if low < 1 / as_matrix(p).shape[1]]


def best_clip(y: np.ndarray, p: np.ndarray) -> tuple[float, float]:
    """Symmetric clip bounds from the grid with the lowest log loss; the widest margin of ties (the safest)."""
    grid = clip_grid(p)
    losses = [log_loss(y, clip(p, low, 1 - low)) for low in grid]
    best = max(i for i, loss in enumerate(losses) if loss <= min(losses) + 1e-12)
    return grid[best], 1 - grid[best]


def best_temperature_and_clip(y: np.ndarray, p: np.ndarray) -> tuple[float, float, float]:
    """(temperature, low, high): per symmetric clip bound of the grid its best temperature (on the clipped loss),
    and of those pairs the one with the lowest loss; the widest margin of ties (the safest)."""
    pairs = [(best_temperature(y, p, low, 1 - low), low) for low in clip_grid(p)]
    losses = [log_loss(y, clip(with_temperature(p, t), low, 1 - low)) for t, low in pairs]
    best = max(i for i, loss in enumerate(losses) if loss <= min(losses) + 1e-12)
    temperature, low = pairs[best]
    return temperature, low, 1 - low


@dataclass(frozen=True)
class Choices:
    """The numbers predict applies: each model's epoch, the blend weight, the temperature and the clip bounds."""

    head_epoch: int
    epoch: int
    blend: float
    temperature: float
    low: float
    high: float


def best_epoch(y: np.ndarray, p_by_epoch: list[np.ndarray]) -> int:
    """The position of the epoch whose probabilities have the lowest log loss; the earliest of ties."""
    return int(np.argmin([log_loss(y, p) for p in p_by_epoch]))


def choose(
    y: np.ndarray, head_by_epoch: list[np.ndarray], tuned_by_epoch: list[np.ndarray] | None, settings: dict[str, Any]
) -> Choices:
    """Fix or choose on (y, probabilities), in order, each model's epoch, the blend weight, temperature and clip
    bounds; settings holds predict's blend (a weight or auto), calibrate (bool) and clip ([low, high] or auto).
    tuned_by_epoch None: there is no fine-tuned model (finetune skipped it), and the blend must be 0."""
    if tuned_by_epoch is None and settings["blend"] != 0:
        raise ValueError(f"predict.blend {settings['blend']} needs the fine-tuned model, which finetune did not train")
    head_epoch = best_epoch(y, head_by_epoch)
    epoch = 0 if tuned_by_epoch is None else best_epoch(y, tuned_by_epoch)
    p_head = head_by_epoch[head_epoch]
    p_tuned = p_head if tuned_by_epoch is None else tuned_by_epoch[epoch]
    weight = best_blend_weight(y, p_head, p_tuned) if settings["blend"] == "auto" else float(settings["blend"])
    blended = final_p(p_head, p_tuned, weight, 1.0, 0.0, 1.0)
    if settings["clip"] != "auto":  # the temperature with the lowest loss as scored: clipped
        low, high = settings["clip"]
        temperature = best_temperature(y, blended, low, high) if settings["calibrate"] else 1.0
    elif settings["calibrate"]:
        temperature, low, high = best_temperature_and_clip(y, blended)
    else:
        temperature, (low, high) = 1.0, best_clip(y, blended)
    return Choices(head_epoch, epoch, weight, temperature, float(low), float(high))


def apply(choices: Choices, head_by_epoch: list[np.ndarray], tuned_by_epoch: list[np.ndarray] | None) -> np.ndarray:
    """The final probabilities under the choices."""
    p_head = head_by_epoch[choices.head_epoch]
    p_tuned = p_head if tuned_by_epoch is None else tuned_by_epoch[choices.epoch]
    return final_p(p_head, p_tuned, choices.blend, choices.temperature, choices.low, choices.high)


def cross_fitted(
    y: np.ndarray,
    folds: np.ndarray,
    head_by_epoch: list[np.ndarray],
    tuned_by_epoch: list[np.ndarray] | None,
    settings: dict[str, Any],
) -> np.ndarray:
    """Each labelled image's final probabilities under choices made on the other folds' images only (nested): the
    log loss of these is an honest estimate for new images."""
    out = np.zeros_like(np.asarray(head_by_epoch[0], dtype=np.float64))
    for fold in np.unique(folds):
        fit, held = folds != fold, folds == fold
        choices = choose(y[fit], rows_of(head_by_epoch, fit), rows_of(tuned_by_epoch, fit), settings)
        out[held] = apply(choices, rows_of(head_by_epoch, held), rows_of(tuned_by_epoch, held))
    return out


def rows_of(by_epoch: list[np.ndarray] | None, rows: np.ndarray) -> list[np.ndarray] | None:
    """Each epoch's probabilities of the rows (None stays None: no fine-tuned model)."""
    return None if by_epoch is None else [p[rows] for p in by_epoch]
