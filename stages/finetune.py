"""Stage finetune: fine-tune the top blocks of one backbone on augmented images, from a head trained on its features."""

import sys
import time

import numpy as np
import pandas as pd
import tensorflow as tf

from dogscats.atomic import save_keras_model, write_csv, write_json
from dogscats.backbones import get_backbone, load_feature_extractor
from dogscats.dataset import label_index, read_manifest
from dogscats.determinism import set_seed
from dogscats.engine import choose_engine, engine_model, gpu_visible, probe_images
from dogscats.extract import image_batches
from dogscats.feature_store import classes_of_file
from dogscats.finetune import (
    augmentation,
    build_top_classifier,
    finetuned_model,
    fit_top,
    freeze_below_top_blocks,
    labelled_batches,
    make_optimizer,
    predict_with_mirror,
    split_at_top_blocks,
    stacked,
    starting_head,
    training_augmentation,
    trunk_batches,
    trunk_function,
)
from dogscats.head import loss_for
from dogscats.params import load_params
from dogscats.predictions import probability_table
from dogscats.scoring import accuracy, log_loss


def main(
    manifest_path: str, features_path: str, model_path: str, predictions_path: str, history_path: str, metrics_path: str
) -> None:
    """Train the starting head on stored features, fine-tune, and predict val and test with and without mirroring."""
    params = load_params()
    cfg, images_cfg = params["finetune"], params["features"]
    backbone = get_backbone(cfg["backbone"])
    set_seed(cfg["seed"])
    start = time.perf_counter()

    # 1. The starting head: Dropout + Dense on this backbone's stored GAP features alone.
    classes = classes_of_file(features_path)
    head, head_val_logloss = starting_head(
        features_path,
        backbone.name,
        len(classes),
        cfg["hidden"],
        cfg["dropout"],
        cfg["head_learning_rate"],
        cfg["head_epochs"],
        cfg["batch_size"],
    )

    # 2. The backbone, split below its top blocks: the frozen trunk runs in the engine (or TensorFlow), the top blocks
    # and the head train in Keras on the trunk's outputs for augmented photos.
    size = images_cfg["input_size"] or backbone.input_size
    base = load_feature_extractor(backbone.name, images_cfg["weights"], images_cfg["pooling"], size)
    blocks = freeze_below_top_blocks(base, cfg["trainable_blocks"] if cfg["epochs"] else 0)
    trunk, top = split_at_top_blocks(base, blocks)
    engine = choose_engine(images_cfg["engine"], gpu_visible(), "float32")
    probe = backbone.preprocess(probe_images(size).astype(np.float32))
    in_engine = trunk is not None and engine == "onnxruntime"
    run_trunk = trunk_function(trunk, engine_model(trunk, probe) if in_engine else None)
    maps_shape = tuple(trunk.output.shape[1:]) if trunk is not None else (size, size, 3)
    classifier = build_top_classifier(top, head, maps_shape)
    classifier.compile(
        optimizer=make_optimizer(cfg["optimizer"], cfg["learning_rate"], cfg["momentum"]),
        loss=loss_for(len(classes)),
        metrics=["accuracy"],
    )
    trainable = sum(int(np.prod(w.shape)) for w in classifier.trainable_weights)
    print(f"finetune: {backbone.name}, trainable blocks {blocks}, {trainable:,} trainable weights, trunk in {engine}")

    # 3. Fine-tune with early stopping on validation log loss, keeping the best epoch. The validation photos' trunk
    # outputs never change: computed once. epochs 0 skips this: the starting head on the frozen backbone predicts.
    manifest = read_manifest(manifest_path)
    usable = manifest[manifest.problem == ""]

    def batches(split: str, shuffle_seed: int | None = None) -> tf.data.Dataset:
        rows = usable[usable.split == split]
        resize, decode = images_cfg["resize"], images_cfg["decode"]
        return labelled_batches(
            rows.source.tolist(), label_index(rows.label, classes), size, resize, decode, backbone.preprocess,
            cfg["batch_size"], shuffle_seed,
        )  # fmt: skip

    history = {"loss": [], "accuracy": [], "val_loss": [], "val_accuracy": []}
    n_val = int((usable.split == "val").sum())
    if cfg["epochs"] and not n_val:
        message = "no usable validation photos to stop fine-tuning on; raise prepare.val_fraction, or set epochs: 0"
        raise ValueError(f"{manifest_path}: {message}")
    if cfg["epochs"]:
        aug = cfg["augment"]
        augment = augmentation(aug["flip"], aug["rotation"], aug["zoom"], aug["shift"], aug["shear"], cfg["seed"])
        augmented = training_augmentation(augment)
        train = batches("train", cfg["seed"])
        val = stacked(trunk_batches(run_trunk, batches("val")), n_val)
        print(f"finetune: the validation photos' trunk outputs, {val[0].nbytes / 2**20:.0f} MiB, computed once")
        history = fit_top(
            classifier,
            lambda: trunk_batches(run_trunk, train, augmented),
            val,
            cfg["epochs"],
            cfg["patience"],
            cfg["batch_size"],
        )
    save_keras_model(finetuned_model(base, head), model_path)
    write_csv(history_path, pd.DataFrame(history).rename_axis("epoch").reset_index())

    # 4. Class probabilities for val and test, single image and mirrored-average (suffix _tta); an undecodable test
    # image is left to predict.
    rows = manifest[manifest.split.isin(["val", "test"])].reset_index(drop=True)
    ok = (rows.problem == "").tolist()
    resize, decode = images_cfg["resize"], images_cfg["decode"]
    images = image_batches(rows.source.tolist(), ok, size, resize, decode, cfg["batch_size"])
    preprocessed = (backbone.preprocess(x.astype(np.float32)) for x in images)
    p, p_mirror = predict_with_mirror(run_trunk, classifier, preprocessed)
    out = pd.DataFrame({"id": rows.id, "split": rows.split, "usable": ok})
    out = out.join(probability_table(p, classes)).join(probability_table(p_mirror, classes, "_tta"))
    write_csv(predictions_path, out)

    on_val = (rows.split == "val").to_numpy()
    y_val = label_index(rows.label[on_val], classes)
    metrics = {
        "head_val_logloss": head_val_logloss,
        "val_logloss": log_loss(y_val, p[on_val]),
        "val_logloss_tta": log_loss(y_val, p_mirror[on_val]),
        "val_accuracy": accuracy(y_val, p_mirror[on_val]),
        "best_epoch": int(np.argmin(history["val_loss"])) + 1 if history["val_loss"] else 0,  # from 1, as Keras
        "epochs_run": len(history["val_loss"]),
        "trainable_weights": trainable,
    }
    write_json(metrics_path, metrics)
    print(f"finetune: {metrics}; {(time.perf_counter() - start) / 60:.1f} minutes")


if __name__ == "__main__":
    main(*sys.argv[1:])
