"""Stage finetune: fine-tune the top blocks of one backbone on augmented images, from a head trained on its features,
once per fold: each labelled image is predicted after every epoch by the copy that never saw it (out of fold), and
predict chooses the epoch. The images are loaded as the features were (the feature file records how), and the folds'
models are saved at the epoch predict will choose (its rule, on the columns predict.finetune_tta reads)."""

import shutil
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
from tqdm import tqdm

from dogscats.base.atomic import write_csv, write_json
from dogscats.base.params import load_params
from dogscats.base.scoring import accuracy, log_loss
from dogscats.data.dataset import folds_of, image_paths, label_index, read_manifest
from dogscats.data.feature_store import classes_of_file, preprocessing_of, read_split
from dogscats.data.images import centre_view, crop_side
from dogscats.data.predictions import prob_columns, probability_table
from dogscats.engine.conversion import choose_engine, engine_model, gpu_visible, probe_images
from dogscats.engine.extract import engine_batches, image_batches
from dogscats.engine.workers import Extraction, worker_layout
from dogscats.models.blending import best_epoch as predicts_epoch
from dogscats.models.finetune import (
    augmentation,
    augmented_trunk_batches,
    build_top_classifier,
    clone_top,
    fold_probabilities,
    freeze_below_top_blocks,
    make_optimizer,
    save_finetuned,
    split_at_top_blocks,
    stored_features,
    train_folds_one_epoch,
    training_augmentation,
    trunk_function,
    trunk_outputs,
)
from dogscats.models.head import fit_head, loss_for, predict_proba, subset
from dogscats.models.live import log_epoch, open_live
from dogscats.networks.backbones import get_backbone, load_feature_extractor
from dogscats.networks.determinism import set_seed
from dogscats.networks.preprocessing import BACKBONE_PREPROCESSING

CURVES = ("loss", "accuracy", "oof_logloss", "oof_logloss_tta", "oof_accuracy")  # DVCLive's files, one per figure
PREDICT_BATCH = 256  # trunk outputs per prediction step: fewer, larger steps than the training batch


def main(
    manifest_path: str, features_path: str, models_dir: str, predictions_path: str, live_dir: str, metrics_path: str
) -> None:
    """Per fold: a starting head on stored features, then fine-tuning; out-of-fold and test probabilities per epoch."""
    params = load_params()
    cfg, engine_name, tta = params["finetune"], params["features"]["engine"], params["predict"]["finetune_tta"]
    if not cfg["epochs"] and params["predict"]["blend"] == 0:
        write_unused(manifest_path, features_path, models_dir, predictions_path, live_dir, metrics_path, cfg)
        return
    backbone = get_backbone(cfg["backbone"])
    set_seed(cfg["seed"])
    start = time.perf_counter()
    manifest = read_manifest(manifest_path)
    classes = classes_of_file(features_path)

    # 1. The starting heads: Dropout + Dense on this backbone's stored GAP features, one per fold, without its fold.
    stored = stored_features(features_path, backbone.name)
    images_cfg = preprocessing_of(features_path)  # the photos are loaded and the backbone built as for the features
    folds = folds_of(manifest, stored.ids, manifest_path)
    fold_ids = sorted(set(folds))
    heads, head_fits, p_head = [], [], np.zeros((len(folds), len(classes)))
    for fold in fold_ids:
        head, fitted = fit_head(
            subset(stored, np.flatnonzero(folds != fold)), None, len(classes), cfg["hidden"], cfg["dropout"], "adam",
            cfg["head_learning_rate"], cfg["head_epochs"], cfg["batch_size"],
        )  # fmt: skip
        p_head[folds == fold] = predict_proba(head, stored.features[folds == fold])
        heads.append(head)
        head_fits.append(fitted)
    # The curves' epoch 0: the starting heads' last training loss and accuracy (mean over the folds) and their
    # out-of-fold figures.
    starting = {k: np.mean([fit[k][-1] for fit in head_fits]) for k in ("loss", "accuracy") if cfg["head_epochs"]}

    # 2. The backbone, split below its top blocks: the frozen trunk runs in the engine (or TensorFlow); a copy of the
    # top blocks and a head per fold train in Keras on the trunk's outputs for augmented photos.
    size = images_cfg["input_size"]
    base = load_feature_extractor(backbone.name, images_cfg["weights"], images_cfg["pooling"], size)
    blocks = freeze_below_top_blocks(base, cfg["trainable_blocks"] if cfg["epochs"] else 0)
    trunk, top = split_at_top_blocks(base, blocks)
    maps_shape = tuple(trunk.output.shape[1:]) if trunk is not None else (size, size, 3)
    tops = [clone_top(top) for _ in fold_ids]
    classifiers = [build_top_classifier(t, head, maps_shape) for t, head in zip(tops, heads, strict=True)]
    labelled = manifest[manifest.split == "train"].set_index("id").loc[stored.ids].reset_index()
    test = manifest[manifest.split == "test"].reset_index(drop=True)
    y = label_index(labelled.label, classes)
    live = open_live(live_dir)  # the curves, one row per epoch from epoch 0 (the starting heads), as they come
    column = 1 if tta else 0  # predict reads the mirror-averaged columns (_tta) with predict.finetune_tta
    best_epoch, best_weights = 0, [c.get_weights() for c in classifiers]
    trainable = sum(int(np.prod(w.shape)) for w in classifiers[0].trainable_weights)
    if not cfg["epochs"]:
        # Nothing to fine-tune: the starting heads predict from the stored features (mirror-averaged with
        # features.tta), so the network never runs. The test photos get the mean over the heads.
        stored_test = read_split(features_path, "test")
        if stored_test.ids != test.id.tolist():
            raise ValueError(f"{features_path}: its test images differ from {manifest_path}; rerun its features stage")
        p_test = sum(predict_proba(head, stored_test.features) for head in heads) / len(heads)
        per_epoch = [(p_head, p_head, p_test, p_test)]
        log_epoch(live, 0, starting | oof_figures(y, per_epoch[0]))
        print(f"finetune: 0 epochs, the {len(heads)} starting heads predict from the stored features")
    else:
        engine = choose_engine(engine_name, gpu_visible(), "float32")
        probe = backbone.preprocess(probe_images(size).astype(np.float32))
        in_engine = trunk is not None and engine == "onnxruntime"
        workers, threads = worker_layout(params["features"]["workers"])
        engine_trunk = engine_model(trunk, probe, threads=workers * threads) if in_engine else None  # every core
        run_trunk = trunk_function(trunk, engine_trunk)
        for classifier in classifiers:
            classifier.compile(
                optimizer=make_optimizer(cfg["optimizer"], cfg["learning_rate"], cfg["momentum"]),
                loss=loss_for(len(classes)),
                metrics=["accuracy"],
            )
        print(f"finetune: {backbone.name}, {len(fold_ids)} folds, trainable blocks {blocks}, {trainable:,} trainable "
              f"weights per fold, trunk in {engine}")  # fmt: skip

        # 3. The trunk outputs of every photo and its mirror image, computed once: they predict after every epoch.
        # Photos are loaded as the features stage loads them (larger with features.crops 5), and the network sees
        # each one's centre view, as in the exported classifier.
        resize, decode, batch_size = images_cfg["resize"], images_cfg["decode"], cfg["batch_size"]
        side = crop_side(size, images_cfg["crops"])

        def maps_of(rows: pd.DataFrame, mirror: bool) -> np.ndarray:
            usable, files = (rows.problem == "").tolist(), image_paths(rows, params["data"]["raw"])
            name = f"finetune: trunk outputs, {'mirrored ' if mirror else ''}{rows.split.iloc[0] if len(rows) else ''}"
            if engine_trunk is not None and workers > 1:  # the trunk's passes in worker processes (features.workers)
                view = "mirrored centre" if mirror else "centre"
                preprocessing = BACKBONE_PREPROCESSING[backbone.name]
                extraction = Extraction(str(engine_trunk.path), side, resize, decode, False, images_cfg["crops"],
                                        threads, preprocessing, view)  # fmt: skip
                maps = engine_batches(extraction, files, usable, batch_size, workers)
                maps = tqdm(maps, desc=name, total=-(-len(rows) // batch_size), unit="batch")
                return trunk_outputs(np.asarray, maps, len(rows))
            images = image_batches(files, usable, side, resize, decode, batch_size)
            images = (centre_view(x, size) for x in images)
            images = tqdm(images, desc=name, total=-(-len(rows) // batch_size), unit="batch")
            batches = (backbone.preprocess(x.astype(np.float32))[:, :, :: -1 if mirror else 1] for x in images)
            return trunk_outputs(run_trunk, batches, len(rows))

        maps = (maps_of(labelled, False), maps_of(labelled, True))
        if len(test):
            test_maps = (maps_of(test, False), maps_of(test, True))
        else:  # no photos to predict: empty outputs of the trunk's shape
            test_maps = tuple(np.empty((0, *m.shape[1:]), m.dtype) for m in maps)
        megabytes = sum(m.nbytes for m in maps + test_maps) / 2**20
        count = len(labelled) + len(test)
        print(f"finetune: trunk outputs of {count} photos and their mirror images, {megabytes:.0f} MiB")

        # 4. Fine-tune: each epoch passes every labelled photo, augmented, through the trunk once, in a seeded order,
        # and each fold's copy trains on the rows outside its fold. After each epoch (and before the first) every
        # copy predicts its fold and the test photos.
        augment = augmentation(**cfg["augment"], seed=cfg["seed"])
        augmented = training_augmentation(augment)
        rng = np.random.default_rng(cfg["seed"])
        per_epoch = [fold_probabilities(classifiers, fold_ids, folds, maps, test_maps, PREDICT_BATCH)]
        start_loss = log_loss(y, per_epoch[0][1])
        log_epoch(live, 0, starting | oof_figures(y, per_epoch[0]))
        print(f"epoch 0 (starting heads): out-of-fold log loss {start_loss:.4f} (mirrored)", flush=True)
        for epoch in range(1, cfg["epochs"] + 1):
            epoch_start = time.perf_counter()
            order = rng.permutation(len(labelled))
            sources = image_paths(labelled.iloc[order], params["data"]["raw"])
            photos = image_batches(sources, [True] * len(order), side, resize, decode, batch_size)
            photos = (centre_view(x, size) for x in photos)
            train = augmented_trunk_batches(run_trunk, augmented, backbone.preprocess, photos, y[order], folds[order])
            scores = train_folds_one_epoch(classifiers, fold_ids, train)
            per_epoch.append(fold_probabilities(classifiers, fold_ids, folds, maps, test_maps, PREDICT_BATCH))
            figures = {"loss": scores["loss"], "accuracy": scores["accuracy"]} | oof_figures(y, per_epoch[-1])
            log_epoch(live, epoch, figures)
            mirrored = figures["oof_logloss_tta"]
            if predicts_epoch(y, [p[column] for p in per_epoch]) == epoch:  # predict's rule: the earliest lowest
                best_epoch, best_weights = epoch, [c.get_weights() for c in classifiers]
            print(
                f"epoch {epoch}/{cfg['epochs']}: loss {scores['loss']:.4f}, out-of-fold log loss "
                f"{figures['oof_logloss']:.4f} ({mirrored:.4f} mirrored) ({time.perf_counter() - epoch_start:.0f} s)",
                flush=True,
            )

    # 5. Save what the exported classifier needs, at the epoch predict will choose: with 0 epochs the starting heads
    # (they take the stored features); else the frozen trunk once and each fold's top blocks and head (they take its
    # outputs; or the preprocessed images, when every block trains). Write every epoch's probabilities.
    for classifier, weights in zip(classifiers, best_weights, strict=True):
        classifier.set_weights(weights)
    fold_input = "features" if not cfg["epochs"] else "trunk" if trunk is not None else "image"
    description = {
        "backbone": backbone.name,
        "input_size": size,
        "preprocessing": images_cfg,
        "trainable_blocks": blocks,
        "epoch": best_epoch,
        "epochs_run": cfg["epochs"],
        "tta": tta,
        "folds": [int(f) for f in fold_ids],
        "fold_input": fold_input,
    }
    fold_models = heads if fold_input == "features" else classifiers
    save_finetuned(Path(models_dir), description, trunk if fold_input == "trunk" else None, fold_models)
    live.end()
    ids = pd.DataFrame(
        {
            "id": labelled.id.tolist() + test.id.tolist(),
            "split": ["train"] * len(labelled) + ["test"] * len(test),
            "fold": np.concatenate([folds, np.zeros(len(test), int)]),
        }
    )
    tables = []
    for epoch, (oof, oof_mirror, p_test, p_test_mirror) in enumerate(per_epoch):
        plain = probability_table(np.concatenate([oof, p_test]), classes)
        mirrored = probability_table(np.concatenate([oof_mirror, p_test_mirror]), classes, "_tta")
        tables.append(ids.assign(epoch=epoch).join(plain).join(mirrored))
    write_csv(predictions_path, pd.concat(tables, ignore_index=True))

    best = per_epoch[best_epoch]
    metrics = {  # _optimistic: at the epoch chosen on these same out-of-fold probabilities
        "head_oof_logloss": log_loss(y, p_head),
        "oof_logloss_optimistic": log_loss(y, best[0]),
        "oof_logloss_tta_optimistic": log_loss(y, best[1]),
        "oof_accuracy_optimistic": accuracy(y, best[1]),
        "best_epoch": best_epoch,
        "epochs_run": cfg["epochs"],
        "folds": len(fold_ids),
        "trainable_weights": trainable,
    }
    write_json(metrics_path, metrics)
    print(f"finetune: {metrics}; {(time.perf_counter() - start) / 60:.1f} minutes")


def write_unused(
    manifest_path: str,
    features_path: str,
    models_dir: str,
    predictions_path: str,
    live_dir: str,
    metrics_path: str,
    cfg: dict,
) -> None:
    """With no epochs to fine-tune and predict.blend 0 nothing reads a fine-tuned model: write the stage's outputs
    empty (a description without models, the prediction table's header alone) instead of training starting heads."""
    classes = classes_of_file(features_path)
    manifest = read_manifest(manifest_path)
    folds = manifest[manifest.split == "train"].fold.nunique()
    description = {"backbone": cfg["backbone"], "epoch": 0, "epochs_run": 0, "folds": [], "fold_input": "none"}
    save_finetuned(Path(models_dir), description, None, [])
    columns = ["id", "split", "fold", "epoch", *prob_columns(classes), *prob_columns(classes, "_tta")]
    write_csv(predictions_path, pd.DataFrame(columns=columns))
    shutil.rmtree(live_dir, ignore_errors=True)
    curves = Path(live_dir) / "plots" / "metrics"  # no epoch was run: the curves dvc.yaml draws, without a point
    curves.mkdir(parents=True)
    for name in CURVES:
        write_csv(curves / f"{name}.tsv", pd.DataFrame(columns=["step", name]), sep="\t")
    write_json(metrics_path, {"fine_tuned": 0, "best_epoch": 0, "epochs_run": 0, "folds": int(folds)})
    print("finetune: skipped (finetune.epochs 0 and predict.blend 0: predict and export use the head alone)")


def oof_figures(y: np.ndarray, probabilities: tuple[np.ndarray, ...]) -> dict[str, float]:
    """One epoch's out-of-fold figures over all labelled images, plain and mirror-averaged."""
    oof, oof_mirrored = probabilities[:2]
    return {
        "oof_logloss": log_loss(y, oof),
        "oof_logloss_tta": log_loss(y, oof_mirrored),
        "oof_accuracy": accuracy(y, oof_mirrored),
    }


if __name__ == "__main__":
    main(*sys.argv[1:])
