"""Stage evaluate: ROC curve and confusion matrix of the final validation p(dog) for `dvc plots`, and an HTML page
of the worst validation mistakes (thumbnail, true label, predicted probability)."""

import sys

import pandas as pd

from dogscats.atomic import atomic_path, write_csv, write_json
from dogscats.dataset import read_manifest
from dogscats.evaluation import auc, confusion_rows, roc_points, worst_mistakes_html
from dogscats.params import load_params
from dogscats.scoring import image_log_losses


def main(
    manifest_path: str, val_predictions_path: str, roc_path: str, confusion_path: str, html_path: str, metrics_path: str
) -> None:
    """Write the plots' data, the mistakes page and the AUC."""
    cfg = load_params()["evaluate"]
    val = pd.read_csv(val_predictions_path, dtype={"id": str})
    write_csv(roc_path, roc_points(val.label, val.p))
    write_csv(confusion_path, confusion_rows(val.label, val.p))

    files = read_manifest(manifest_path).set_index("id").source
    val["file"], val["loss"] = files.loc[val.id].to_numpy(), image_log_losses(val.label, val.p)
    worst = val.sort_values(["loss", "id"], ascending=[False, True]).head(cfg["worst_mistakes"])
    with atomic_path(html_path, suffix=".html") as tmp:
        tmp.write_text(worst_mistakes_html(worst, f"The {len(worst)} worst of {len(val)} validation images"))
    metrics = {"val_auc": auc(val.label, val.p), "val_errors": int(((val.p >= 0.5) != (val.label == 1)).sum())}
    write_json(metrics_path, metrics)
    print(f"evaluate: {metrics}; worst mistakes in {html_path}")


if __name__ == "__main__":
    main(*sys.argv[1:])
