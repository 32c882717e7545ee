"""Stage train: concatenate the backbones' features and train the ensemble head (dropout + sigmoid)."""

import sys

import pandas as pd

from dogscats.atomic import atomic_path, write_csv, write_json
from dogscats.head import build_head, feature_files, load_concatenated, predict_proba, set_seed
from dogscats.params import load_params
from dogscats.scoring import accuracy, clip, log_loss


def main(features_dir: str, model_path: str, history_path: str, metrics_path: str) -> None:
    """Train the head on train, score it on val."""
    params = load_params()
    cfg, bounds = params["train"], (params["predict"]["clip_low"], params["predict"]["clip_high"])
    files = feature_files(features_dir, params["backbones"])
    set_seed(cfg["seed"])
    train, val = load_concatenated(files, "train"), load_concatenated(files, "val")
    model = build_head(train.features.shape[1], cfg["dropout"], cfg["optimizer"], cfg["learning_rate"])
    history = model.fit(
        train.features,
        train.labels,
        validation_data=(val.features, val.labels),
        epochs=cfg["epochs"],
        batch_size=cfg["batch_size"],
        shuffle=True,
        verbose=2,
    )
    with atomic_path(model_path, suffix=".keras") as tmp:
        model.save(tmp)
    write_csv(history_path, pd.DataFrame(history.history).rename_axis("epoch").reset_index())
    p_val = predict_proba(model, val.features)
    metrics = {
        "val_logloss": log_loss(val.labels, p_val),
        "val_accuracy": accuracy(val.labels, p_val),
        "val_logloss_clipped": log_loss(val.labels, clip(p_val, *bounds)),
        "n_train": len(train.ids),
        "n_val": len(val.ids),
    }
    write_json(metrics_path, metrics)
    print(f"train: {metrics}")


if __name__ == "__main__":
    main(*sys.argv[1:])
