"""The competition's metric (binary log loss on p(dog)) and accuracy at 0.5."""

import numpy as np

LOSS_EPS = 1e-15  # Kaggle clips probabilities to [eps, 1 - eps] before scoring


def image_log_losses(y_true: np.ndarray, p: np.ndarray, eps: float = LOSS_EPS) -> np.ndarray:
    """Each image's binary cross-entropy, probabilities clipped to [eps, 1 - eps] as Kaggle does."""
    y, p = np.asarray(y_true, dtype=np.float64), np.clip(np.asarray(p, dtype=np.float64), eps, 1 - eps)
    return -(y * np.log(p) + (1 - y) * np.log(1 - p))


def log_loss(y_true: np.ndarray, p: np.ndarray, eps: float = LOSS_EPS) -> float:
    """The competition's metric: the mean of the images' log losses."""
    return float(np.mean(image_log_losses(y_true, p, eps)))


def accuracy(y_true: np.ndarray, p: np.ndarray) -> float:
    """Share of predictions on the right side of 0.5."""
    return float(np.mean((np.asarray(p) >= 0.5) == (np.asarray(y_true) == 1)))


def clip(p: np.ndarray, low: float, high: float) -> np.ndarray:
    """Clip probabilities: a confident mistake then costs at most -log(low)."""
    return np.clip(p, low, high)
