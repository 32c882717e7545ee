"""Stage train: concatenate the backbones' features and train the ensemble head (dropout + sigmoid, or softmax for
more than two classes), once per fold of the manifest: each labelled image's probabilities come from the head that
did not see it (out of fold), and each test image's are the average of the k heads."""

import sys
from pathlib import Path

import numpy as np
import pandas as pd

from dogscats.atomic import write_csv, write_json
from dogscats.dataset import folds_of, read_manifest
from dogscats.determinism import set_seed
from dogscats.feature_store import shared_classes
from dogscats.head import feature_files, fit_head, load_concatenated, predict_proba, save_heads, subset
from dogscats.params import load_params
from dogscats.predictions import probability_table
from dogscats.scoring import accuracy, log_loss


def main(
    manifest_path: str,
    features_dir: str,
    models_dir: str,
    predictions_path: str,
    history_path: str,
    metrics_path: str,
) -> None:
    """Train one head per fold, save them, and write the out-of-fold and test class probabilities."""
    params = load_params()
    cfg = params["train"]
    files = feature_files(features_dir, params["backbones"])
    classes = shared_classes(files)
    set_seed(cfg["seed"])
    labelled, test = load_concatenated(files, "train"), load_concatenated(files, "test")
    folds = folds_of(read_manifest(manifest_path), labelled.ids, manifest_path)
    fit_args = (
        len(classes), cfg["hidden"], cfg["dropout"], cfg["optimizer"], cfg["learning_rate"], cfg["epochs"],
        cfg["batch_size"],
    )  # fmt: skip

    models, histories, p_oof = [], [], np.zeros((len(labelled.ids), len(classes)))
    for fold in sorted(set(folds)):
        held_out, fit_rows = np.flatnonzero(folds == fold), np.flatnonzero(folds != fold)
        model, history = fit_head(subset(labelled, fit_rows), subset(labelled, held_out), *fit_args)
        p_oof[held_out] = predict_proba(model, labelled.features[held_out])
        models.append(model)
        histories.append(pd.DataFrame(history))
        print(f"train: fold {fold}: log loss {log_loss(labelled.labels[held_out], p_oof[held_out]):.4f} out of fold")
    p_test = np.mean([predict_proba(m, test.features) for m in models], axis=0)

    save_heads(models, Path(models_dir))
    history = pd.concat(histories).groupby(level=0).mean()  # per epoch, averaged over the folds
    write_csv(history_path, history.rename_axis("epoch").reset_index())
    rows = pd.DataFrame(
        {
            "id": labelled.ids + test.ids,
            "split": ["train"] * len(labelled.ids) + ["test"] * len(test.ids),
            "fold": np.concatenate([folds, np.zeros(len(test.ids), int)]),
            "usable": np.concatenate([labelled.usable, test.usable]),
        }
    )
    write_csv(predictions_path, rows.join(probability_table(np.concatenate([p_oof, p_test]), classes)))
    metrics = {
        "oof_logloss": log_loss(labelled.labels, p_oof),
        "oof_accuracy": accuracy(labelled.labels, p_oof),
        "n_labelled": len(labelled.ids),
        "folds": len(models),
    }
    write_json(metrics_path, metrics)
    print(f"train: {metrics}")


if __name__ == "__main__":
    main(*sys.argv[1:])
