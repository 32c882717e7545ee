"""Stage predict: blend the ensemble head's and the fine-tuned model's class probabilities, optionally calibrate
them, and clip them (the metric is log loss), for every test image; the blend weight, temperature and clip bounds
are fixed in params or chosen on the validation images."""

import sys

import numpy as np

from dogscats.atomic import write_csv, write_json
from dogscats.blending import best_blend_weight, best_clip, best_temperature, final_p
from dogscats.dataset import classes_of, label_index, read_manifest
from dogscats.params import load_params
from dogscats.predictions import probability_table, read_prediction_table, read_probabilities
from dogscats.scoring import accuracy, clip, log_loss


def main(
    manifest_path: str,
    head_predictions_path: str,
    finetune_predictions_path: str,
    predictions_path: str,
    val_predictions_path: str,
    metrics_path: str,
) -> None:
    """Blend, calibrate and clip; an image that did not decode gets the training set's class shares."""
    cfg = load_params()["predict"]
    manifest = read_manifest(manifest_path).set_index("id")
    classes = classes_of(manifest.label)
    head = read_prediction_table(head_predictions_path)
    finetuned = read_prediction_table(finetune_predictions_path)
    rows = head[["id", "split", "usable"]].merge(finetuned[["id", "split"]], on=["id", "split"])
    for split in ("val", "test"):
        expected, found = int((manifest.split == split).sum()), int((rows.split == split).sum())
        if found != expected:
            raise ValueError(
                f"{head_predictions_path} and {finetune_predictions_path} share {found} {split} images of {expected}"
                f" in {manifest_path}; rerun train and finetune (dvc repro)"
            )
    p_head = read_probabilities(rows[["id", "split"]].merge(head, on=["id", "split"]), classes)
    p_tuned = read_probabilities(
        rows[["id", "split"]].merge(finetuned, on=["id", "split"]), classes, "_tta" if cfg["finetune_tta"] else ""
    )

    on_val = (rows.split == "val").to_numpy()
    y = label_index(manifest.loc[rows.id[on_val], "label"], classes)
    weight = cfg["blend"]
    if weight == "auto":
        weight = best_blend_weight(y, p_head[on_val], p_tuned[on_val])
    blended = final_p(p_head[on_val], p_tuned[on_val], weight, 1.0, 0.0, 1.0)
    temperature = best_temperature(y, blended) if cfg["calibrate"] else 1.0
    calibrated = final_p(p_head[on_val], p_tuned[on_val], weight, temperature, 0.0, 1.0)
    low, high = best_clip(y, calibrated) if cfg["clip"] == "auto" else cfg["clip"]
    p = final_p(p_head, p_tuned, weight, temperature, low, high)

    train_labels = label_index(manifest.loc[manifest.split == "train", "label"], classes)
    prior = np.bincount(train_labels, minlength=len(classes)) / len(train_labels)
    p[~rows.usable.to_numpy()] = clip(prior[None, :], low, high)  # test images that did not decode
    val = rows[on_val][["id"]].assign(label=y).reset_index(drop=True)
    val = val.join(probability_table(p[on_val], classes))
    val = val.join(probability_table(p_head[on_val], classes, "_head"))
    val = val.join(probability_table(p_tuned[on_val], classes, "_finetuned"))
    write_csv(val_predictions_path, val)
    on_test = (rows.split == "test").to_numpy()
    test = rows[on_test][["id"]].reset_index(drop=True)
    write_csv(predictions_path, test.join(probability_table(p[on_test], classes)))
    metrics = {
        "blend": weight,
        "temperature": temperature,
        "clip_low": low,
        "clip_high": high,
        "val_logloss": log_loss(y, p[on_val]),
        "val_accuracy": accuracy(y, p[on_val]),
        "val_logloss_head": log_loss(y, p_head[on_val]),
        "val_logloss_finetuned": log_loss(y, p_tuned[on_val]),
        "n_test": int(on_test.sum()),
        "n_prior": int((~rows.usable[on_test]).sum()),
    }
    metrics.update({f"mean_p_{label}": float(p[on_test, i].mean()) for i, label in enumerate(classes)})
    write_json(metrics_path, metrics)
    print(f"predict: {metrics}")


if __name__ == "__main__":
    main(*sys.argv[1:])
