"""Prediction tables: one row per image, one probability column per class, named p_<class>[<suffix>]."""

from pathlib import Path

import numpy as np
import pandas as pd


def read_prediction_table(path: Path | str) -> pd.DataFrame:
    """A prediction table as written, ids as strings exactly (an id NA, null or None stays that text, not NaN); an
    empty cell elsewhere is missing (NaN)."""
    missing = {column: [""] for column in pd.read_csv(path, nrows=0).columns if column != "id"}
    return pd.read_csv(path, dtype={"id": str}, keep_default_na=False, na_values=missing)


def prob_columns(classes: list[str], suffix: str = "") -> list[str]:
    """The probability columns of the classes, in class order."""
    return [f"p_{label}{suffix}" for label in classes]


def read_probabilities(frame: pd.DataFrame, classes: list[str], suffix: str = "") -> np.ndarray:
    """The (N, K) probabilities stored in a table."""
    return frame[prob_columns(classes, suffix)].to_numpy(dtype=np.float64)


def probability_table(probs: np.ndarray, classes: list[str], suffix: str = "") -> pd.DataFrame:
    """(N, K) probabilities as a table's columns."""
    return pd.DataFrame(np.asarray(probs), columns=prob_columns(classes, suffix))
