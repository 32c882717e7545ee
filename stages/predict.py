"""Stage predict: blend the ensemble head's and the fine-tuned model's class probabilities, calibrate them and clip
them (the metric is log loss), for every test image. Each model's epoch, the blend weight, the temperature and the
clip bounds are fixed in params or chosen on the out-of-fold probabilities of every labelled image; the headline
figure, cv_logloss, scores each fold under choices made on the other folds (nested), so it is honest."""

import sys

import numpy as np
import pandas as pd

from dogscats.base.atomic import write_csv, write_json
from dogscats.base.params import ParamsError, clip_problem, load_params
from dogscats.base.scoring import accuracy, clip, log_loss
from dogscats.data.dataset import classes_of, folds_of, label_index, read_manifest
from dogscats.data.predictions import probability_table, read_prediction_table, read_probabilities
from dogscats.models.blending import apply, choose, cross_fitted

# Each ingredient's honest (nested) figure, for the README's table: predict's settings with some choices fixed.
INGREDIENTS = {
    "head": {"blend": 0.0, "calibrate": False, "clip": [0.0, 1.0]},
    "finetuned": {"blend": 1.0, "calibrate": False, "clip": [0.0, 1.0]},
    "blend": {"blend": "auto", "calibrate": False, "clip": [0.0, 1.0]},
    "blend_calibrated": {"blend": "auto", "calibrate": True, "clip": [0.0, 1.0]},
    "blend_calibrated_clip_auto": {"blend": "auto", "calibrate": True, "clip": "auto"},
}


def main(
    manifest_path: str,
    head_predictions_path: str,
    finetune_predictions_path: str,
    predictions_path: str,
    oof_predictions_path: str,
    metrics_path: str,
) -> None:
    """Choose out of fold, apply to the test images; an image that did not decode gets the class shares."""
    cfg = load_params()["predict"]
    manifest = read_manifest(manifest_path)
    classes = classes_of(manifest.label)
    problem = clip_problem(cfg["clip"], len(classes))  # the params check knows no K: 1/2 is its bound
    if problem:
        raise ParamsError(f"params.yaml: {problem}")
    head = read_prediction_table(head_predictions_path)
    tuned = read_prediction_table(finetune_predictions_path)
    suffix = "_tta" if cfg["finetune_tta"] else ""
    epochs, head_epochs = sorted(set(tuned.epoch)), sorted(set(head.epoch))

    def probabilities_of(table: pd.DataFrame, split: str, ids: list[str], suffix: str = "") -> np.ndarray:
        rows = table[table.split == split].set_index("id")
        if sorted(rows.index) != sorted(ids):
            raise ValueError(f"{manifest_path}: its {split} images differ from the predictions'; rerun (dvc repro)")
        return read_probabilities(rows.loc[ids], classes, suffix)

    labelled, test = manifest[manifest.split == "train"], manifest[manifest.split == "test"]
    ids, test_ids = labelled.id.tolist(), test.id.tolist()
    y = label_index(labelled.label, classes)
    folds = folds_of(manifest, ids, manifest_path)
    head_by_epoch = [probabilities_of(head[head.epoch == e], "train", ids) for e in head_epochs]
    test_head_by_epoch = [probabilities_of(head[head.epoch == e], "test", test_ids) for e in head_epochs]
    by_epoch = [probabilities_of(tuned[tuned.epoch == e], "train", ids, suffix) for e in epochs] or None
    test_by_epoch = [probabilities_of(tuned[tuned.epoch == e], "test", test_ids, suffix) for e in epochs] or None
    if by_epoch is None and cfg["blend"] != 0:  # finetune skipped (0 epochs, blend 0): rerun it for this blend
        raise ParamsError(f"predict.blend {cfg['blend']}: {finetune_predictions_path} is empty; rerun dvc repro")

    # The choices for the test images, made on every labelled image; the same choices made without each fold.
    choices = choose(y, head_by_epoch, by_epoch, cfg)
    p_test = apply(choices, test_head_by_epoch, test_by_epoch)
    usable = (test.problem == "").to_numpy()
    prior = np.bincount(y, minlength=len(classes)) / len(y)
    p_test[~usable] = clip(prior[None, :], choices.low, choices.high)  # test images that did not decode
    p_oof = apply(choices, head_by_epoch, by_epoch)  # scored on the photos the choices were made on: optimistic
    p_cv = cross_fitted(y, folds, head_by_epoch, by_epoch, cfg)

    oof = pd.DataFrame({"id": ids, "label": y, "fold": folds}).join(probability_table(p_cv, classes))
    oof = oof.join(probability_table(head_by_epoch[choices.head_epoch], classes, "_head"))
    if by_epoch is not None:
        oof = oof.join(probability_table(by_epoch[choices.epoch], classes, "_finetuned"))
    write_csv(oof_predictions_path, oof)
    write_csv(predictions_path, pd.DataFrame({"id": test_ids}).join(probability_table(p_test, classes)))
    metrics = {
        "cv_logloss": log_loss(y, p_cv),
        "cv_accuracy": accuracy(y, p_cv),
        "oof_logloss_optimistic": log_loss(y, p_oof),
        **{
            f"cv_logloss_{name}": log_loss(y, cross_fitted(y, folds, head_by_epoch, by_epoch, {**cfg, **settings}))
            for name, settings in INGREDIENTS.items()
            if by_epoch is not None or settings["blend"] == 0  # without a fine-tuned model: the head's alone
        },  # fmt: skip
        "head_epoch": head_epochs[choices.head_epoch],
        "epoch": epochs[choices.epoch] if by_epoch is not None else 0,
        "blend": choices.blend,
        "temperature": choices.temperature,
        "clip_low": choices.low,
        "clip_high": choices.high,
        "n_labelled": len(ids),
        "n_test": len(test_ids),
        "n_prior": int((~usable).sum()),
    }
    if len(test_ids):  # without photos to predict, there is no mean to report
        metrics.update({f"mean_p_{label}": float(p_test[:, i].mean()) for i, label in enumerate(classes)})
    write_json(metrics_path, metrics)
    print(f"predict: {metrics}")


if __name__ == "__main__":
    main(*sys.argv[1:])
