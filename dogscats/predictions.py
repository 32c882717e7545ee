"""Prediction tables: one row per image, one probability column per class, named p_<class>[<suffix>]."""

import numpy as np
import pandas as pd


def prob_columns(classes: list[str], suffix: str = "") -> list[str]:
    """The probability columns of the classes, in class order."""
    return [f"p_{label}{suffix}" for label in classes]


def read_probabilities(frame: pd.DataFrame, classes: list[str], suffix: str = "") -> np.ndarray:
    """The (N, K) probabilities stored in a table."""
    return frame[prob_columns(classes, suffix)].to_numpy(dtype=np.float64)


def probability_table(probs: np.ndarray, classes: list[str], suffix: str = "") -> pd.DataFrame:
    """(N, K) probabilities as a table's columns."""
    return pd.DataFrame(np.asarray(probs), columns=prob_columns(classes, suffix))
