"""Blending the ensemble head with the fine-tuned model, and clipping, each chosen on validation or fixed."""

import numpy as np
from scipy.optimize import minimize_scalar

from dogscats.scoring import as_matrix, clip, log_loss, predicted_class

BLEND_GRID = np.linspace(0, 1, 21)  # fine-tuned model weights tried by blend: auto
TEMPERATURE_RANGE = (0.01, 100.0)  # searched by calibrate: true (below 1 sharpens, above 1 softens)
CLIP_GRID = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05)  # low bounds tried by clip: auto (high = 1 - low)


def blend(p_head: np.ndarray, p_finetuned: np.ndarray, weight: float) -> np.ndarray:
    """Weighted mean of the two models' probabilities: weight is the fine-tuned model's share."""
    return (1 - weight) * np.asarray(p_head) + weight * np.asarray(p_finetuned)


def best_blend_weight(y: np.ndarray, p_head: np.ndarray, p_finetuned: np.ndarray) -> float:
    """The grid weight with the lowest log loss on (y, predictions); the first of ties."""
    losses = [log_loss(y, blend(p_head, p_finetuned, w)) for w in BLEND_GRID]
    return float(BLEND_GRID[int(np.argmin(losses))])


def with_temperature(p: np.ndarray, temperature: float) -> np.ndarray:
    """Divide the log-probabilities by the temperature and renormalise (softmax(log p / T); for two classes the
    log-odds divided by T): above 1 softens over-confident probabilities, below 1 sharpens. Keeps p's shape."""
    scaled = np.log(as_matrix(p)) / temperature
    probs = np.exp(scaled - scaled.max(axis=1, keepdims=True))
    probs /= probs.sum(axis=1, keepdims=True)
    return probs[:, 1] if np.ndim(p) == 1 else probs


def best_temperature(y: np.ndarray, p: np.ndarray) -> float:
    """The temperature with the lowest log loss (temperature scaling, a one-parameter calibration), found by a bounded
    scalar minimiser over log T across TEMPERATURE_RANGE: the loss is convex in 1 / T, so it has one minimum, unless
    every image is classified right. Then the loss only falls as T goes to 0 (no finite best), and T stays 1."""
    if np.all(predicted_class(p) == np.asarray(y)):
        return 1.0
    p = np.clip(np.asarray(p, dtype=np.float64), 1e-12, 1 - 1e-12)
    found = minimize_scalar(
        lambda log_t: log_loss(y, with_temperature(p, np.exp(log_t))),
        bounds=np.log(TEMPERATURE_RANGE),
        method="bounded",
        options={"xatol": 1e-5},
    )
    return float(np.exp(found.x))


def best_clip(y: np.ndarray, p: np.ndarray) -> tuple[float, float]:
    """Symmetric clip bounds from the grid with the lowest log loss; the widest margin of ties (the safest)."""
    losses = [log_loss(y, clip(p, low, 1 - low)) for low in CLIP_GRID]
    best = max(i for i, loss in enumerate(losses) if loss <= min(losses) + 1e-12)
    return CLIP_GRID[best], 1 - CLIP_GRID[best]


def final_p(
    p_head: np.ndarray, p_finetuned: np.ndarray, weight: float, temperature: float, low: float, high: float
) -> np.ndarray:
    """The submitted probabilities: blend, then temperature, then clip."""
    p = np.clip(blend(p_head, p_finetuned, weight), 1e-12, 1 - 1e-12)
    return clip(with_temperature(p, temperature), low, high)
