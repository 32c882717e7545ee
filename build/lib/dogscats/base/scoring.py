"""The competition's metric, log loss, and accuracy, for two classes or more.

Probabilities come as an (N, K) matrix, one column per class, or for two classes as the (N,) probability of the
second class (p(dog)); labels are class indices."""

import numpy as np

LOSS_EPS = 1e-15  # Kaggle clips probabilities to [eps, 1 - eps] (and rescales rows to sum to 1) before scoring


def as_matrix(p: np.ndarray) -> np.ndarray:
    """(N, K) class probabilities as float64; an (N,) p(second class) becomes the columns (1 - p, p)."""
    p = np.asarray(p, dtype=np.float64)
    return np.column_stack([1 - p, p]) if p.ndim == 1 else p


def as_probabilities(outputs: np.ndarray) -> np.ndarray:
    """A model's (N, 1) or (N, K) outputs as (N, K) float64 class probabilities: a sigmoid's single column p (the
    second class's) becomes (1 - p, p)."""
    outputs = np.asarray(outputs)
    return as_matrix(outputs[:, 0]) if outputs.shape[1] == 1 else as_matrix(outputs)


def image_log_losses(y_true: np.ndarray, p: np.ndarray, eps: float = LOSS_EPS) -> np.ndarray:
    """Each image's cross-entropy, probabilities clipped to [eps, 1 - eps] and rows rescaled as Kaggle does."""
    probs = np.clip(as_matrix(p), eps, 1 - eps)
    probs /= probs.sum(axis=1, keepdims=True)
    return -np.log(probs[np.arange(len(probs)), np.asarray(y_true, dtype=np.int64)])


def log_loss(y_true: np.ndarray, p: np.ndarray, eps: float = LOSS_EPS) -> float:
    """The competition's metric: the mean of the images' log losses."""
    return float(np.mean(image_log_losses(y_true, p, eps)))


def predicted_class(p: np.ndarray) -> np.ndarray:
    """The most probable class of each row; with two classes, the second from p = 0.5 on (a tie goes to dog)."""
    p = np.asarray(p, dtype=np.float64)
    if p.ndim == 2 and p.shape[1] == 2:
        p = p[:, 1]
    return (p >= 0.5).astype(np.int64) if p.ndim == 1 else np.argmax(p, axis=1)


def accuracy(y_true: np.ndarray, p: np.ndarray) -> float:
    """Share of images whose most probable class is the true one."""
    return float(np.mean(predicted_class(p) == np.asarray(y_true)))


def clip(p: np.ndarray, low: float, high: float) -> np.ndarray:
    """Clip probabilities, so a confident mistake costs at most -log(low). Two classes: p(second) is clipped to
    [low, high] exactly and the first is 1 - p; more: the rows are rescaled to sum to 1 after clipping, so the bounds
    hold only approximately."""
    p = np.asarray(p, dtype=np.float64)
    if p.ndim == 1:
        return np.clip(p, low, high)
    if p.shape[1] == 2:
        return as_matrix(np.clip(p[:, 1], low, high))
    clipped = np.clip(p, low, high)
    return clipped / clipped.sum(axis=1, keepdims=True)
