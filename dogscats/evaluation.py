"""Evaluation outputs people look at: ROC curve and confusion matrix data for `dvc plots`, and an HTML page of
the worst validation mistakes with their thumbnails."""

import base64
import html
import io

import numpy as np
import pandas as pd
from sklearn.metrics import roc_auc_score, roc_curve

from dogscats.dataset import CLASSES
from dogscats.images import load_rgb

THUMBNAIL = 160  # pixels, longest side


def roc_points(y: np.ndarray, p: np.ndarray) -> pd.DataFrame:
    """The ROC curve: false and true positive rates (dog is positive) at each threshold."""
    fpr, tpr, thresholds = roc_curve(y, p)
    return pd.DataFrame({"fpr": fpr, "tpr": tpr, "threshold": np.minimum(thresholds, 1.0)})


def auc(y: np.ndarray, p: np.ndarray) -> float:
    """Area under the ROC curve."""
    return float(roc_auc_score(y, p))


def confusion_rows(y: np.ndarray, p: np.ndarray) -> pd.DataFrame:
    """One (actual, predicted) row per image, class names at threshold 0.5: DVC's confusion template input."""
    return pd.DataFrame(
        {"actual": [CLASSES[int(t)] for t in y], "predicted": [CLASSES[int(q >= 0.5)] for q in np.asarray(p)]}
    )


def thumbnail_data_uri(path: str) -> str:
    """A small JPEG of the image as a data: URI, so the HTML page stands alone."""
    image = load_rgb(path)
    image.thumbnail((THUMBNAIL, THUMBNAIL))
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=85)
    return "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode()


def worst_mistakes_html(rows: pd.DataFrame, title: str) -> str:
    """An HTML page of the rows (id, file, label 0/1, p = p(dog), loss), in the given order."""
    cards = []
    for row in rows.itertuples():
        truth = CLASSES[int(row.label)]
        caption = f"{html.escape(str(row.id))}: a {truth}, p(dog) = {row.p:.4f}, loss {row.loss:.3f}"
        cards.append(
            f'<figure><img src="{thumbnail_data_uri(row.file)}" alt="{html.escape(str(row.id))}">'
            f"<figcaption>{caption}</figcaption></figure>"
        )
    style = (
        "body{font-family:sans-serif;margin:1em}figure{display:inline-block;width:180px;margin:6px;"
        "vertical-align:top}img{max-width:170px;max-height:170px}figcaption{font-size:13px}"
    )
    return (
        f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
        f"<style>{style}</style></head><body><h1>{html.escape(title)}</h1>{''.join(cards)}</body></html>\n"
    )
