"""Stage predict: blend the ensemble head's and the fine-tuned model's p(dog), optionally calibrate it, and clip it
(the metric is log loss), for every test image; the blend weight, temperature and clip bounds are fixed in params or
chosen on the validation images."""

import sys

import numpy as np
import pandas as pd

from dogscats.atomic import write_csv, write_json
from dogscats.blending import best_blend_weight, best_clip, best_temperature, final_p
from dogscats.dataset import label_index, read_manifest
from dogscats.params import load_params
from dogscats.scoring import accuracy, clip, log_loss


def main(
    manifest_path: str,
    head_predictions_path: str,
    finetune_predictions_path: str,
    predictions_path: str,
    val_predictions_path: str,
    metrics_path: str,
) -> None:
    """Blend and clip; an image that did not decode gets the training set's share of dogs."""
    cfg = load_params()["predict"]
    manifest = read_manifest(manifest_path).set_index("id")
    head = pd.read_csv(head_predictions_path, dtype={"id": str})
    finetuned = pd.read_csv(finetune_predictions_path, dtype={"id": str})
    finetuned["p_finetuned"] = finetuned.p_dog_tta if cfg["finetune_tta"] else finetuned.p_dog
    rows = head.rename(columns={"p_dog": "p_head"}).merge(finetuned[["id", "split", "p_finetuned"]], on=["id", "split"])

    for split in ("val", "test"):
        expected, found = int((manifest.split == split).sum()), int((rows.split == split).sum())
        if found != expected:
            raise ValueError(
                f"{head_predictions_path} and {finetune_predictions_path} share {found} {split} images of {expected}"
                f" in {manifest_path}; rerun train and finetune (dvc repro)"
            )
    val = rows[rows.split == "val"].copy()
    val["label"] = label_index(manifest.loc[val.id, "label"])
    weight = cfg["blend"]
    if weight == "auto":
        weight = best_blend_weight(val.label, val.p_head, val.p_finetuned)
    blended = final_p(val.p_head, val.p_finetuned, weight, 1.0, 0.0, 1.0)
    temperature = best_temperature(val.label, blended) if cfg["calibrate"] else 1.0
    calibrated = final_p(val.p_head, val.p_finetuned, weight, temperature, 0.0, 1.0)
    low, high = best_clip(val.label, calibrated) if cfg["clip"] == "auto" else cfg["clip"]
    val["p"] = final_p(val.p_head, val.p_finetuned, weight, temperature, low, high)
    write_csv(val_predictions_path, val[["id", "label", "p_head", "p_finetuned", "p"]])

    test = rows[rows.split == "test"]
    prior = float(np.mean(label_index(manifest.loc[manifest.split == "train", "label"])))
    p = np.where(test.usable, final_p(test.p_head, test.p_finetuned, weight, temperature, low, high), prior)
    p = clip(p, low, high)
    write_csv(predictions_path, pd.DataFrame({"id": test.id, "label": p}))
    metrics = {
        "blend": weight,
        "temperature": temperature,
        "clip_low": low,
        "clip_high": high,
        "val_logloss": log_loss(val.label, val.p),
        "val_accuracy": accuracy(val.label, val.p),
        "val_logloss_head": log_loss(val.label, val.p_head),
        "val_logloss_finetuned": log_loss(val.label, val.p_finetuned),
        "n_test": len(p),
        "n_prior": int((~test.usable).sum()),
        "mean_p_dog": float(p.mean()),
    }
    write_json(metrics_path, metrics)
    print(f"predict: {metrics}")


if __name__ == "__main__":
    main(*sys.argv[1:])
