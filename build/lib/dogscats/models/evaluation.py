"""Evaluation outputs people look at: ROC curve, confusion matrix and per-class figures for `dvc plots` and
`dvc metrics`, and an HTML page of the worst out-of-fold mistakes with their thumbnails."""

import base64
import html
import io

import numpy as np
import pandas as pd
from sklearn.calibration import calibration_curve
from sklearn.metrics import precision_recall_fscore_support, roc_auc_score, roc_curve

from dogscats.base.scoring import as_matrix, image_log_losses, predicted_class
from dogscats.data.images import read_image

THUMBNAIL = 160  # pixels, longest side
CAM_NOTE = (
    "<p>Beside each photo: the class activation map of the class the model predicted, over the photo as the network"
    " saw it (red: where the evidence for that class lies; blue: least).</p>"
)


def roc_points(y: np.ndarray, p: np.ndarray) -> pd.DataFrame:
    """The ROC curve: false and true positive rates at each threshold; the second class is positive (dog), and with
    more classes the curve is the micro-average of one class against the rest. No rows when it is undefined (one
    class only)."""
    truth, score = _one_vs_rest(y, p)
    if not has_roc(truth):
        return pd.DataFrame({"fpr": [], "tpr": [], "threshold": []})
    fpr, tpr, thresholds = roc_curve(truth, score)
    return pd.DataFrame({"fpr": fpr, "tpr": tpr, "threshold": np.minimum(thresholds, 1.0)})


def auc(y: np.ndarray, p: np.ndarray) -> float | None:
    """Area under that ROC curve; None when it is undefined (one class only)."""
    truth, score = _one_vs_rest(y, p)
    return float(roc_auc_score(truth, score)) if has_roc(truth) else None


def has_roc(truth: np.ndarray) -> bool:
    """Whether there are both positives and negatives, without which a ROC curve is undefined."""
    return bool(truth.any() and not truth.all())


def _one_vs_rest(y: np.ndarray, p: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(is positive, score) pairs: p(second class) for two classes; every (image, class) cell for more."""
    probs = as_matrix(p)
    if probs.shape[1] == 2:
        return np.asarray(y) == 1, probs[:, 1]
    return (np.eye(probs.shape[1])[np.asarray(y)] == 1).ravel(), probs.ravel()


def calibration_rows(y: np.ndarray, p: np.ndarray, bins: int = 10) -> pd.DataFrame:
    """The reliability curve: in each of `bins` equal-width bins of the predicted probability (empty bins left out),
    the mean prediction and the fraction that was positive, with the ideal (equal) beside it; positives as for ROC."""
    truth, score = _one_vs_rest(y, p)
    if not len(truth):
        return pd.DataFrame({"predicted": [], "observed": [], "ideal": []})
    observed, predicted = calibration_curve(truth, score, n_bins=bins, strategy="uniform")
    return pd.DataFrame({"predicted": predicted, "observed": observed, "ideal": predicted})


def confusion_rows(y: np.ndarray, p: np.ndarray, classes: list[str]) -> pd.DataFrame:
    """One (actual, predicted) row per image, by class name, predicted = most probable: DVC's confusion template."""
    predicted = predicted_class(as_matrix(p))
    return pd.DataFrame({"actual": [classes[int(t)] for t in y], "predicted": [classes[int(q)] for q in predicted]})


def per_class_figures(y: np.ndarray, p: np.ndarray, classes: list[str]) -> pd.DataFrame:
    """One row per class, in class order: its labelled images (n), precision and recall of the most probable class
    (0 where undefined: no image predicted or labelled as it), and the mean log loss of its images (NaN without
    any); the n-weighted mean of the log losses is the overall log loss."""
    y = np.asarray(y, dtype=np.int64)
    probs = as_matrix(p)
    labels = np.arange(len(classes))
    precision, recall, _, n = precision_recall_fscore_support(
        y, predicted_class(probs), labels=labels, average=None, zero_division=0
    )
    losses = image_log_losses(y, probs)
    mean_loss = [float(losses[y == k].mean()) if (y == k).any() else float("nan") for k in labels]
    return pd.DataFrame({"class": classes, "n": n, "precision": precision, "recall": recall, "log_loss": mean_loss})


def per_class_metrics(figures: pd.DataFrame) -> dict[str, dict[str, float | int | None]]:
    """per_class_figures as {class: {n, precision, recall, log_loss}} for metrics/evaluate.json, which
    `dvc metrics show` flattens to per_class.<class>.<figure>; a NaN log loss becomes None (JSON's null)."""
    return {
        str(row["class"]): {
            "n": int(row["n"]),
            "precision": float(row["precision"]),
            "recall": float(row["recall"]),
            "log_loss": None if np.isnan(row["log_loss"]) else float(row["log_loss"]),
        }
        for _, row in figures.iterrows()
    }


def thumbnail_html(path: str, alt: str) -> str:
    """One photo's thumbnail, a small JPEG as a data: URI in an <img> so the page stands alone; a photo that cannot
    be read (images.read_image: whatever the reason), its name and the reason."""
    image, problem = read_image(path)
    if image is None:
        return f'<span class="unreadable">{html.escape(alt)}: unreadable ({html.escape(problem)})</span>'
    image.thumbnail((THUMBNAIL, THUMBNAIL))
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=85)
    uri = "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode()
    return f'<img src="{uri}" alt="{html.escape(alt)}">'


def worst_mistakes(
    ids: pd.Series, files: np.ndarray, y: np.ndarray, p: np.ndarray, classes: list[str], count: int
) -> pd.DataFrame:
    """The misclassified images (id, file, truth = class name, p_truth, loss), at most `count`, the costliest first
    (ties by id); correctly classified images are never among them."""
    probs = as_matrix(p)
    rows = pd.DataFrame(
        {
            "id": ids.to_numpy(),
            "file": files,
            "truth": [classes[i] for i in y],
            "p_truth": probs[np.arange(len(y)), y],
            "loss": image_log_losses(y, probs),
        }
    )
    wrong = rows[predicted_class(probs) != np.asarray(y)]
    return wrong.sort_values(["loss", "id"], ascending=[False, True]).head(count)


def worst_mistakes_html(rows: pd.DataFrame, title: str, overlays: list[str] | None = None) -> str:
    """An HTML page of the rows (id, file, truth = class name, p_truth = its probability, loss), in the given order;
    beside each thumbnail its overlay when given (data: URIs, one per row:
    dogscats.product.explain.overlay_data_uris)."""
    cards = []
    for i, row in enumerate(rows.itertuples()):
        cam = (
            f'<img class="cam" src="{overlays[i]}" alt="{html.escape(str(row.id))}: CAM">'
            if overlays and overlays[i]
            else ""
        )
        caption = (
            f"{html.escape(str(row.id))}: a {html.escape(row.truth)}, p({html.escape(row.truth)}) = {row.p_truth:.4f},"
            f" loss {row.loss:.3f}"
        )
        cards.append(f"<figure>{thumbnail_html(row.file, str(row.id))}{cam}<figcaption>{caption}</figcaption></figure>")
    width = 360 if overlays else 180  # the photo and its class activation map side by side
    style = (
        f"body{{font-family:sans-serif;margin:1em}}figure{{display:inline-block;width:{width}px;margin:6px;"
        "vertical-align:top}img{max-width:170px;max-height:170px}figcaption{font-size:13px}"
    )
    return (
        f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
        f"<style>{style}</style></head><body><h1>{html.escape(title)}</h1>{CAM_NOTE if overlays else ''}"
        f"{''.join(cards)}</body></html>\n"
    )
