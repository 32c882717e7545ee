"""Stage train: concatenate the backbones' features and train the ensemble head (dropout + sigmoid, or softmax for
more than two classes), once per fold of the manifest: each labelled image's probabilities come from the head that
did not see it (out of fold), and each test image's from one head refit on all labelled images (train.refit) or the
mean of the k heads; both at about ten epochs, for predict to choose the epoch count out of fold. All the heads train
side by side in one pass over the data (dogscats/models/fold_heads.py) and are saved one by one, as heads trained
alone."""

import sys
from pathlib import Path

import numpy as np
import pandas as pd

from dogscats.base.atomic import write_csv, write_json
from dogscats.base.params import load_params
from dogscats.base.scoring import accuracy, log_loss
from dogscats.data.dataset import folds_of, read_manifest
from dogscats.data.feature_store import shared_classes
from dogscats.data.predictions import probability_table
from dogscats.models.fold_heads import class_weights, fit_heads, out_of_fold, single_head
from dogscats.models.head import checkpoint_epochs, feature_files, load_concatenated, save_heads
from dogscats.models.live import log_epoch, open_live
from dogscats.networks.determinism import set_seed

HEAD_KEYS = ("hidden", "dropout", "optimizer", "learning_rate")  # train's params that make a head


def main(
    manifest_path: str,
    features_dir: str,
    models_dir: str,
    predictions_path: str,
    live_dir: str,
    metrics_path: str,
) -> None:
    """Train the fold heads (and the refit head) in one pass, save them, and write the out-of-fold and test class
    probabilities."""
    params = load_params()
    cfg = params["train"]
    files = feature_files(features_dir, params["backbones"])
    classes = shared_classes(files)
    set_seed(cfg["seed"])
    labelled, test = load_concatenated(files, "train"), load_concatenated(files, "test")
    folds = folds_of(read_manifest(manifest_path), labelled.ids, manifest_path)

    # All the heads train in one pass (dogscats/models/fold_heads.py): each fold's head on the rows outside its fold,
    # and with train.refit one head on every labelled image, to predict the test images rather than the fold heads' mean
    # (out of fold one level down the refit scores better: bench/refit.py, docs/honest.md). Each head's predictions are
    # kept at about ten epochs, for predict to choose the epoch count out of fold; the saved heads are those at the
    # epoch with the lowest out-of-fold log loss. DVCLive gets each head's curves after every epoch: its training
    # loss and its held-out fold's log loss. With train.class_weight balanced each row's training loss is weighted by
    # n / (K * n_class); the epoch is still chosen by the plain (unweighted) out-of-fold log loss, predict's figure.
    checkpoints = checkpoint_epochs(cfg["epochs"])
    fold_ids = sorted(set(folds.tolist()))
    live = open_live(live_dir)
    kept = fit_heads(
        labelled.features, labelled.labels, folds, test.features, cfg["refit"], len(classes), cfg["hidden"],
        cfg["dropout"], cfg["optimizer"], cfg["learning_rate"], cfg["epochs"], cfg["batch_size"], cfg["seed"],
        checkpoints, lambda epoch, figures: log_epoch(live, epoch, figures),
        class_weights(labelled.labels, len(classes), cfg["class_weight"]),
    )  # fmt: skip
    p_oof = {e: out_of_fold(kept[e].labelled, folds, fold_ids) for e in checkpoints}
    p_test = {e: kept[e].test[-1] if cfg["refit"] else kept[e].test[: len(fold_ids)].mean(axis=0) for e in checkpoints}
    losses = {e: log_loss(labelled.labels, p) for e, p in p_oof.items()}
    best = min(checkpoints, key=lambda e: (losses[e], e))
    print("train: out-of-fold log loss by epoch: " + ", ".join(f"{e}: {loss:.4f}" for e, loss in losses.items()))
    heads = [
        single_head(w, labelled.features.shape[1], len(classes), *(cfg[k] for k in HEAD_KEYS))
        for w in kept[best].weights
    ]
    save_heads(heads[: len(fold_ids)], Path(models_dir), heads[-1] if cfg["refit"] else None)
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
        "folds": len(fold_ids),
    }
    write_json(metrics_path, metrics)
    print(f"train: {metrics}")


if __name__ == "__main__":
    main(*sys.argv[1:])
