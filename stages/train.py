"""Stage train: concatenate the backbones' features and train the ensemble head (dropout + sigmoid, or softmax for
more than two classes).

With train.folds > 1 the train and val splits are pooled and cut into stratified folds: each image's validation
probabilities come from the head that did not see it (out-of-fold), and the test ones are the folds' average.
"""

import sys
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.model_selection import StratifiedKFold

from dogscats.atomic import write_csv, write_json
from dogscats.determinism import set_seed
from dogscats.feature_store import shared_classes
from dogscats.head import (
    feature_files,
    fit_head,
    load_concatenated,
    pooled,
    predict_proba,
    save_heads,
    subset,
)
from dogscats.params import load_params
from dogscats.predictions import probability_table
from dogscats.scoring import accuracy, log_loss


def main(features_dir: str, models_dir: str, predictions_path: str, history_path: str, metrics_path: str) -> None:
    """Train the head (or one per fold), save it, and write its val and test class probabilities."""
    params = load_params()
    cfg = params["train"]
    files = feature_files(features_dir, params["backbones"])
    classes = shared_classes(files)
    set_seed(cfg["seed"])
    train, val, test = (load_concatenated(files, split) for split in ("train", "val", "test"))
    fit_args = (
        len(classes), cfg["hidden"], cfg["dropout"], cfg["optimizer"], cfg["learning_rate"], cfg["epochs"],
        cfg["batch_size"],
    )  # fmt: skip

    if cfg["folds"] <= 1:
        scored, splits = val, ["val"] * len(val.ids)
        model, history = fit_head(train, val, *fit_args)
        models, p_scored = [model], predict_proba(model, val.features)
    else:
        scored = pooled(train, val)
        splits = ["train"] * len(train.ids) + ["val"] * len(val.ids)
        folds = StratifiedKFold(cfg["folds"], shuffle=True, random_state=cfg["seed"]).split(scored.ids, scored.labels)
        models, histories, p_scored = [], [], np.zeros((len(scored.ids), len(classes)))
        for fit_rows, held_out in folds:
            model, fold_history = fit_head(subset(scored, fit_rows), subset(scored, held_out), *fit_args)
            p_scored[held_out] = predict_proba(model, scored.features[held_out])
            models.append(model)
            histories.append(pd.DataFrame(fold_history))
        history = pd.concat(histories).groupby(level=0).mean()  # per epoch, averaged over the folds
    p_test = np.mean([predict_proba(m, test.features) for m in models], axis=0)

    save_heads(models, Path(models_dir))
    write_csv(history_path, pd.DataFrame(history).rename_axis("epoch").reset_index())
    rows = pd.DataFrame(
        {
            "id": scored.ids + test.ids,
            "split": splits + ["test"] * len(test.ids),
            "usable": np.concatenate([scored.usable, test.usable]),
        }
    )
    write_csv(predictions_path, rows.join(probability_table(np.concatenate([p_scored, p_test]), classes)))
    on_val = np.array(splits) == "val"
    metrics = {
        "val_logloss": log_loss(scored.labels[on_val], p_scored[on_val]),
        "val_accuracy": accuracy(scored.labels[on_val], p_scored[on_val]),
        "n_val": int(on_val.sum()),
        "n_train": len(train.ids),
    }
    if cfg["folds"] > 1:  # out-of-fold figures over every train and val image
        metrics.update(oof_logloss=log_loss(scored.labels, p_scored), oof_accuracy=accuracy(scored.labels, p_scored))
    write_json(metrics_path, metrics)
    print(f"train: {metrics}")


if __name__ == "__main__":
    main(*sys.argv[1:])
