"""Fine-tuning the top of a backbone on augmented images, the second half of the reference recipe.

The backbone is split at its last blocks: the frozen trunk below (run in the inference engine, or TensorFlow), and the
top blocks (BatchNorm in inference mode) with the head ([Dense(hidden)], Dropout, Dense(1, sigmoid) or
Dense(K, softmax)) above, trained in Keras on the trunk's outputs for augmented photos. The head starts trained on
the backbone's stored features: a random head on a pretrained base would send large gradients into the pretrained
weights and wreck them. (With head_epochs 0 the head starts random: for a frozen base, or a network trained from
scratch.)

Cross-fitting: one copy of the top and head per fold, each trained without its fold. The frozen trunk is shared, so
each augmented photo goes through it once per epoch and its outputs train every copy that may see it; the trunk
outputs of the unaugmented photos (and their mirror images), which predict each epoch, are computed once.
"""

import json
import re
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

from dogscats.base.atomic import atomic_dir, save_keras_model, write_json
from dogscats.base.scoring import as_probabilities
from dogscats.data.feature_store import SplitFeatures, backbone_of, read_split

# Layer-name prefix of one block: blockN_ (EfficientNet-Lite, VGG16, Xception), blockNx_ (EfficientNetV2),
# convS_blockN_ (ResNet50).
BLOCK_PREFIX = re.compile(r"^(block\w+?|conv\d+_block\d+)_")
# models/finetuned: DESCRIPTION says what the folder holds; TRUNK_MODEL, the frozen trunk shared by the folds (saved
# once, when the folds take its outputs); fold_<id>.keras, each fold's model at the chosen epoch.
DESCRIPTION = "finetuned.json"
TRUNK_MODEL = "trunk.keras"
# What each fold's model takes: "features", the backbone's stored (view-averaged) features (0 epochs: the starting
# heads); "trunk", the trunk's outputs for the preprocessed centre view; "image", the preprocessed centre view itself
# (every block trains, so there is no frozen trunk).
FOLD_INPUTS = ("features", "trunk", "image", "none")  # none: not fine-tuned, as nothing would read it


def stored_features(features_path: str, backbone: str) -> SplitFeatures:
    """The labelled images' stored features of the fine-tuned backbone (a file of another backbone stops the run)."""
    stored = backbone_of(features_path)
    if stored != backbone:
        raise ValueError(f"{features_path} holds {stored} features, but finetune.backbone is {backbone}")
    return read_split(features_path, "train")


def block_names(base: keras.Model) -> list[str]:
    """The backbone's blocks, bottom to top, by layer-name prefix."""
    names = []
    for layer in base.layers:
        match = BLOCK_PREFIX.match(layer.name)
        if match and match[1] not in names:
            names.append(match[1])
    return names


def freeze_below_top_blocks(base: keras.Model, trainable_blocks: int) -> list[str]:
    """Freeze the layers below the last `trainable_blocks` blocks, and all BatchNorm; return the trainable blocks."""
    blocks = block_names(base)
    if not blocks:
        raise ValueError(f"{base.name}: no layers named blockN_..., so its top blocks cannot be chosen for fine-tuning")
    if not 0 <= trainable_blocks <= len(blocks):
        raise ValueError(f"finetune.trainable_blocks: {base.name} has 0 to {len(blocks)}, got {trainable_blocks}")
    top = blocks[len(blocks) - trainable_blocks :]
    first = next((i for i, layer in enumerate(base.layers) if top and layer.name.startswith(top[0] + "_")), None)
    base.trainable = True
    for i, layer in enumerate(base.layers):
        # Frozen BatchNorm layers run in inference mode in Keras 3: their statistics stay the pretrained ones.
        trainable = first is not None and i >= first
        layer.trainable = trainable and not isinstance(layer, keras.layers.BatchNormalization)
    return top


def augmentation(flip: bool, rotation: float, zoom: float, shift: float, shear: float, seed: int) -> keras.Sequential:
    """Random flips, rotations (degrees), zooms, shifts and shears (fractions of the side), active only in training."""
    steps: list[keras.layers.Layer] = []
    if flip:
        steps.append(keras.layers.RandomFlip("horizontal", seed=seed))
    if rotation:
        steps.append(keras.layers.RandomRotation(rotation / 360, fill_mode="reflect", seed=seed + 1))
    if zoom:
        steps.append(keras.layers.RandomZoom(zoom, fill_mode="reflect", seed=seed + 2))
    if shift:
        steps.append(keras.layers.RandomTranslation(shift, shift, fill_mode="reflect", seed=seed + 3))
    if shear:
        steps.append(keras.layers.RandomShear(shear, shear, fill_mode="reflect", seed=seed + 4))
    return keras.Sequential(steps, name="augmentation")


def split_at_top_blocks(base: keras.Model, top_blocks: list[str]) -> tuple[keras.Model | None, keras.Model | None]:
    """The frozen trunk (images -> the first top block's input) and the top (that tensor -> pooled features).

    The trunk is None when nothing is frozen, the top None when nothing trains; the top shares the base's layers."""
    first = next((layer for layer in base.layers if top_blocks and layer.name.startswith(top_blocks[0] + "_")), None)
    cut = first.input if first is not None else base.output
    trunk = None if cut is base.input else keras.Model(base.input, cut, name=f"{base.name}_trunk")
    top = None if cut is base.output else keras.Model(cut, base.output, name=f"{base.name}_top")
    return trunk, top


def build_top_classifier(top: keras.Model | None, head: keras.Model, input_shape: tuple[int, ...]) -> keras.Model:
    """Trunk outputs -> the top blocks -> the head (its layers and weights, trained on)."""
    inputs = keras.Input(input_shape, name="trunk_output")
    return keras.Model(inputs, head(top(inputs) if top is not None else inputs), name="top_classifier")


def make_optimizer(name: str, learning_rate: float, momentum: float) -> keras.optimizers.Optimizer:
    """An optimizer by Keras name; momentum applies to SGD and RMSprop."""
    config = {"learning_rate": learning_rate}
    if name.lower() in ("sgd", "rmsprop"):
        config["momentum"] = momentum
    return keras.optimizers.get({"class_name": name, "config": config})


def clone_top(top: keras.Model | None) -> keras.Model | None:
    """An independent copy of the top blocks, same weights and trainable flags: one per fold."""
    if top is None:
        return None
    copy = keras.models.clone_model(top)
    copy.set_weights(top.get_weights())
    return copy


def trunk_function(trunk: keras.Model | None, engine_trunk: Callable | None) -> Callable[[np.ndarray], np.ndarray]:
    """The frozen trunk as a function of numpy batches: in the engine when there is one, else in TensorFlow."""
    if trunk is None:
        return np.asarray
    if engine_trunk is not None:
        return engine_trunk
    run = tf.function(lambda x: trunk(x, training=False), reduce_retracing=True)
    return lambda x: run(x).numpy()


def training_augmentation(augment: keras.Model) -> Callable[[tf.Tensor], tf.Tensor]:
    """The augmentation layers in training mode, traced once: each call draws new random transforms."""
    return tf.function(lambda x: augment(x, training=True), reduce_retracing=True)


def trunk_outputs(
    run_trunk: Callable[[np.ndarray], np.ndarray], batches: Iterable[np.ndarray], count: int
) -> np.ndarray:
    """The trunk's outputs for `count` preprocessed images in batches, copied into one array allocated once."""
    maps, at = None, 0
    for x in batches:
        out = run_trunk(x)
        if maps is None:
            maps = np.empty((count, *out.shape[1:]), out.dtype)
        maps[at : at + len(out)] = out
        at += len(out)
    if maps is None or at != count:
        raise ValueError(f"expected {count} rows of trunk outputs, got {at}")
    return maps


def augmented_trunk_batches(
    run_trunk: Callable[[np.ndarray], np.ndarray],
    augment: Callable | None,
    preprocess: Callable[[np.ndarray], np.ndarray],
    images: Iterable[np.ndarray],
    labels: np.ndarray,
    folds: np.ndarray,
) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """(trunk outputs, labels, folds) per batch of uint8 images, which are in the order of labels and folds;
    augmented before the trunk when augment is given."""
    at = 0
    for x in images:
        rows = slice(at, at + len(x))
        x = preprocess(x.astype(np.float32))
        yield run_trunk(np.asarray(augment(x)) if augment is not None else x), labels[rows], folds[rows]
        at += len(x)


def train_folds_one_epoch(
    classifiers: list[keras.Model], fold_ids: list[int], batches: Iterable[tuple[np.ndarray, np.ndarray, np.ndarray]]
) -> dict[str, float]:
    """One pass over (trunk outputs, labels, folds) batches: classifiers[i] trains on each batch's rows outside fold
    fold_ids[i], so every trunk output serves all the folds. Returns the epoch's mean loss and accuracy over folds."""
    totals, seen = {"loss": 0.0, "accuracy": 0.0}, 0
    for maps, y, folds in batches:
        for fold, classifier in zip(fold_ids, classifiers, strict=True):
            rows = folds != fold
            if rows.any():
                logs = classifier.train_on_batch(maps[rows], y[rows], return_dict=True)  # this batch's figures
                totals = {key: total + logs[key] * int(rows.sum()) for key, total in totals.items()}
                seen += int(rows.sum())
    return {key: total / max(seen, 1) for key, total in totals.items()}


def fold_probabilities(
    classifiers: list[keras.Model],
    fold_ids: list[int],
    folds: np.ndarray,
    maps: tuple[np.ndarray, np.ndarray],
    test_maps: tuple[np.ndarray, np.ndarray],
    batch_size: int,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Out-of-fold class probabilities of the labelled images (classifiers[i] on fold fold_ids[i]), plain and averaged
    with the mirror image's; and the test images' averaged over the classifiers, plain and mirrored."""

    n_classes = as_probabilities(keras.ops.convert_to_numpy(classifiers[0](maps[0][:1], training=False))).shape[1]

    def proba(classifier: keras.Model, x: np.ndarray) -> np.ndarray:
        if not len(x):
            return np.zeros((0, n_classes))
        # called directly, batch by batch: predict() traces a new function for each fold's model, 4 times an epoch
        out = [classifier(x[at : at + batch_size], training=False) for at in range(0, len(x), batch_size)]
        return as_probabilities(np.concatenate([keras.ops.convert_to_numpy(batch) for batch in out]))

    oof, oof_mirror = np.zeros((len(folds), n_classes)), np.zeros((len(folds), n_classes))
    test, test_mirror = np.zeros((len(test_maps[0]), n_classes)), np.zeros((len(test_maps[0]), n_classes))
    for fold, classifier in zip(fold_ids, classifiers, strict=True):
        rows = folds == fold
        plain, mirrored = proba(classifier, maps[0][rows]), proba(classifier, maps[1][rows])
        oof[rows], oof_mirror[rows] = plain, (plain + mirrored) / 2
        plain, mirrored = proba(classifier, test_maps[0]), proba(classifier, test_maps[1])
        test += plain / len(classifiers)
        test_mirror += (plain + mirrored) / 2 / len(classifiers)
    return oof, oof_mirror, test, test_mirror


def fold_model_file(fold: int) -> str:
    """The file name of a fold's model in models/finetuned."""
    return f"fold_{fold}.keras"


@dataclass(frozen=True)
class Finetuned:
    """models/finetuned loaded: its description, the shared trunk (None unless the folds take trunk outputs) and each
    fold's model, in the description's fold order."""

    description: dict
    trunk: keras.Model | None
    folds: list[keras.Model]


def save_finetuned(out: Path, description: dict, trunk: keras.Model | None, fold_models: list[keras.Model]) -> None:
    """Replace the folder atomically with the description, the trunk (once; only with fold input "trunk") and each
    fold's model, fold_models in the order of description["folds"]."""
    if description["fold_input"] not in FOLD_INPUTS:
        raise ValueError(f"fold_input must be one of {', '.join(FOLD_INPUTS)}, got {description['fold_input']!r}")
    if (trunk is not None) != (description["fold_input"] == "trunk"):
        raise ValueError(f"a trunk is saved exactly when the folds take its outputs, not with {description}")
    if (description["fold_input"] == "none") != (not description["folds"]):
        raise ValueError(f"fold models are saved exactly when there is a fine-tuned model, not with {description}")
    with atomic_dir(out) as tmp:
        if trunk is not None:
            save_keras_model(trunk, tmp / TRUNK_MODEL)
        for fold, model in zip(description["folds"], fold_models, strict=True):
            save_keras_model(model, tmp / fold_model_file(fold))
        write_json(tmp / DESCRIPTION, description)


def read_description(folder: Path | str) -> dict:
    """models/finetuned's description; a folder without one (an older layout) stops the run, naming it."""
    path = Path(folder) / DESCRIPTION
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: models/finetuned is from an older run; rerun dvc repro finetune")
    return json.loads(path.read_text())


def load_finetuned(folder: Path | str) -> Finetuned:
    """The trunk and fold models the description lists."""
    description = read_description(folder)
    trunk = keras.saving.load_model(Path(folder) / TRUNK_MODEL) if description["fold_input"] == "trunk" else None
    folds = [keras.saving.load_model(Path(folder) / fold_model_file(fold)) for fold in description["folds"]]
    return Finetuned(description, trunk, folds)
