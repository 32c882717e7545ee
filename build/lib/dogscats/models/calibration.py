"""The arithmetic from the models' probabilities to the submitted ones: blend, temperature, clip. NumPy only (no
SciPy), so the exported classifier applies it as predict does without importing an optimiser; dogscats.models.blending
chooses the numbers."""

import numpy as np

from dogscats.base.scoring import as_matrix, clip

TEMPERATURE_RANGE = (0.01, 100.0)  # searched by calibrate: true (below 1 sharpens, above 1 softens), and allowed


def blend(p_head: np.ndarray, p_finetuned: np.ndarray, weight: float) -> np.ndarray:
    """Weighted mean of the two models' probabilities: weight is the fine-tuned model's share."""
    return (1 - weight) * np.asarray(p_head) + weight * np.asarray(p_finetuned)


def with_temperature(p: np.ndarray, temperature: float) -> np.ndarray:
    """Divide the log-probabilities by the temperature and renormalise (softmax(log p / T); for two classes the
    log-odds divided by T): above 1 softens over-confident probabilities, below 1 sharpens. Keeps p's shape."""
    scaled = np.log(as_matrix(p)) / temperature
    probs = np.exp(scaled - scaled.max(axis=1, keepdims=True))
    probs /= probs.sum(axis=1, keepdims=True)
    return probs[:, 1] if np.ndim(p) == 1 else probs


def final_p(
    p_head: np.ndarray, p_finetuned: np.ndarray, weight: float, temperature: float, low: float, high: float
) -> np.ndarray:
    """The submitted probabilities: blend, then temperature, then clip."""
    p = np.clip(blend(p_head, p_finetuned, weight), 1e-12, 1 - 1e-12)
    return clip(with_temperature(p, temperature), low, high)
