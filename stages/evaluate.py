"""Stage evaluate: ROC curve and confusion matrix of the final validation probabilities for `dvc plots`, and an HTML
page of the worst validation mistakes (thumbnail, true class, its predicted probability)."""

import sys

import numpy as np
import pandas as pd

from dogscats.atomic import atomic_path, write_csv, write_json
from dogscats.dataset import classes_of, read_manifest
from dogscats.evaluation import auc, confusion_rows, roc_points, worst_mistakes_html
from dogscats.params import load_params
from dogscats.predictions import read_probabilities
from dogscats.scoring import image_log_losses, predicted_class


def main(
    manifest_path: str, val_predictions_path: str, roc_path: str, confusion_path: str, html_path: str, metrics_path: str
) -> None:
    """Write the plots' data, the mistakes page and the AUC."""
    cfg = load_params()["evaluate"]
    manifest = read_manifest(manifest_path).set_index("id")
    classes = classes_of(manifest.label)
    val = pd.read_csv(val_predictions_path, dtype={"id": str})
    p, y = read_probabilities(val, classes), val.label.to_numpy()
    write_csv(roc_path, roc_points(y, p))
    write_csv(confusion_path, confusion_rows(y, p, classes))

    mistakes = pd.DataFrame(
        {
            "id": val.id,
            "file": manifest.loc[val.id, "source"].to_numpy(),
            "truth": [classes[i] for i in y],
            "p_truth": p[np.arange(len(y)), y],
            "loss": image_log_losses(y, p),
        }
    )
    worst = mistakes.sort_values(["loss", "id"], ascending=[False, True]).head(cfg["worst_mistakes"])
    with atomic_path(html_path, suffix=".html") as tmp:
        tmp.write_text(worst_mistakes_html(worst, f"The {len(worst)} worst of {len(val)} validation images"))
    metrics = {"val_auc": auc(y, p), "val_errors": int((predicted_class(p) != y).sum())}
    write_json(metrics_path, metrics)
    print(f"evaluate: {metrics}; worst mistakes in {html_path}")


if __name__ == "__main__":
    main(*sys.argv[1:])
