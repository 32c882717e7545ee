"""Stage train: concatenate the backbones' features and train the ensemble head (dropout + sigmoid, or softmax for
more than two classes), once per fold of the manifest: each labelled image's probabilities come from the head that
did not see it (out of fold), and each test image's from one head refit on all labelled images (train.refit) or the
mean of the k heads; both at about ten epochs, for predict to choose the epoch count out of fold."""

import sys
from pathlib import Path

import numpy as np
import pandas as pd

from dogscats.atomic import write_csv, write_json
from dogscats.dataset import folds_of, read_manifest
from dogscats.determinism import set_seed
from dogscats.feature_store import shared_classes
from dogscats.head import (
    EpochPredictions,
    checkpoint_epochs,
    feature_files,
    fit_head,
    load_concatenated,
    save_heads,
    subset,
)
from dogscats.live import LiveCurves, open_live
from dogscats.params import load_params
from dogscats.predictions import probability_table
from dogscats.scoring import accuracy, log_loss


def main(
    manifest_path: str,
    features_dir: str,
    models_dir: str,
    predictions_path: str,
    live_dir: str,
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

    # Each fold's head predicts its fold and the test images at about ten epochs: predict chooses the epoch count,
    # out of fold. The saved heads are those at the epoch with the lowest out-of-fold log loss.
    checkpoints = checkpoint_epochs(cfg["epochs"])
    fold_ids = sorted(set(folds))
    p_oof = {e: np.zeros((len(labelled.ids), len(classes))) for e in checkpoints}
    p_test = {e: np.zeros((len(test.ids), len(classes))) for e in checkpoints}
    # Each head's curves go to DVCLive after every epoch: its training loss and its held-out fold's log loss.
    live = open_live(live_dir)
    curves = {"loss": "loss", "val_loss": "oof_logloss"}
    models, weights = [], []
    for fold in fold_ids:
        held_out, fit_rows = np.flatnonzero(folds == fold), np.flatnonzero(folds != fold)
        recorder = EpochPredictions([labelled.features[held_out], test.features], checkpoints)
        callbacks = [recorder, LiveCurves(live, curves, f"fold_{fold}")]
        model, _ = fit_head(subset(labelled, fit_rows), subset(labelled, held_out), *fit_args, callbacks)
        for epoch, (oof, on_test) in recorder.predictions.items():
            p_oof[epoch][held_out] = oof
            p_test[epoch] += on_test / len(fold_ids)
        models.append(model)
        weights.append(recorder.weights)
    losses = {e: log_loss(labelled.labels, p) for e, p in p_oof.items()}
    best = min(checkpoints, key=lambda e: (losses[e], e))
    print("train: out-of-fold log loss by epoch: " + ", ".join(f"{e}: {loss:.4f}" for e, loss in losses.items()))

    # With train.refit, the test images are predicted by one head trained on all labelled images, at each checkpoint
    # (predict applies the epoch count the folds chose), rather than by the mean of the fold heads: out of fold one
    # level down, the refit scores better (bench/refit.py, docs/honest.md).
    refit = None
    if cfg["refit"]:
        recorder = EpochPredictions([test.features], checkpoints)
        refit, _ = fit_head(labelled, None, *fit_args, [recorder, LiveCurves(live, {"loss": "loss"}, "refit")])
        p_test = {epoch: on_test for epoch, (on_test,) in recorder.predictions.items()}
        refit.set_weights(recorder.weights[best])
    for model, fold_weights in zip(models, weights, strict=True):
        model.set_weights(fold_weights[best])
    save_heads(models, Path(models_dir), refit)
    live.end()
    ids = pd.DataFrame(
        {
            "id": labelled.ids + test.ids,
            "split": ["train"] * len(labelled.ids) + ["test"] * len(test.ids),
            "fold": np.concatenate([folds, np.zeros(len(test.ids), int)]),
            "usable": np.concatenate([labelled.usable, test.usable]),
        }
    )
    tables = [
        ids.assign(epoch=e).join(probability_table(np.concatenate([p_oof[e], p_test[e]]), classes)) for e in checkpoints
    ]
    write_csv(predictions_path, pd.concat(tables, ignore_index=True))
    metrics = {  # optimistic: best_epoch was chosen on these same out-of-fold predictions (predict's cv_ are not)
        "oof_logloss_optimistic": losses[best],
        "oof_accuracy_optimistic": accuracy(labelled.labels, p_oof[best]),
        "best_epoch": best,
        "n_labelled": len(labelled.ids),
        "folds": len(models),
    }
    write_json(metrics_path, metrics)
    print(f"train: {metrics}")


if __name__ == "__main__":
    main(*sys.argv[1:])
