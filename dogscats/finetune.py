"""Fine-tuning the top of a backbone on augmented images, the second half of the reference recipe.

The backbone is split at its last blocks: the frozen trunk below (run in the inference engine, or TensorFlow), and the
top blocks (BatchNorm in inference mode) with the head ([Dense(hidden)], Dropout, Dense(1, sigmoid) or
Dense(K, softmax)) above, trained in Keras on the trunk's outputs for augmented photos. The head starts trained on
the backbone's stored features: a random head on a pretrained base would send large gradients into the pretrained
weights and wreck them. (With head_epochs 0 the head starts random: for a frozen base, or a network trained from
scratch.)
"""

import re
import time
from collections.abc import Callable, Iterable, Iterator

import keras
import numpy as np
import tensorflow as tf

from dogscats.extract import decoded
from dogscats.feature_store import backbone_of, read_split
from dogscats.head import fit_head, predict_proba, probabilities
from dogscats.scoring import log_loss

# Layer-name prefix of one block: blockN_ (EfficientNet-Lite, VGG16, Xception), blockNx_ (EfficientNetV2),
# convS_blockN_ (ResNet50).
BLOCK_PREFIX = re.compile(r"^(block\w+?|conv\d+_block\d+)_")


def starting_head(
    features_path: str,
    backbone: str,
    n_classes: int,
    hidden: int,
    dropout: float,
    learning_rate: float,
    epochs: int,
    batch_size: int,
) -> tuple[keras.Model, float]:
    """A head trained (adam) on one backbone's stored train features, random with 0 epochs; its val log loss."""
    stored = backbone_of(features_path)
    if stored != backbone:
        raise ValueError(f"{features_path} holds {stored} features, but finetune.backbone is {backbone}")
    train, val = read_split(features_path, "train"), read_split(features_path, "val")
    head, _ = fit_head(train, None, n_classes, hidden, dropout, "adam", learning_rate, epochs, batch_size)
    return head, log_loss(val.labels, predict_proba(head, val.features))


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


def finetuned_model(base: keras.Model, head: keras.Model) -> keras.Model:
    """The whole fine-tuned classifier, preprocessed image -> probabilities, sharing the trained layers."""
    return keras.Model(base.input, head(base.output), name=f"{base.name}_finetuned")


def make_optimizer(name: str, learning_rate: float, momentum: float) -> keras.optimizers.Optimizer:
    """An optimizer by Keras name; momentum applies to SGD and RMSprop."""
    config = {"learning_rate": learning_rate}
    if name.lower() in ("sgd", "rmsprop"):
        config["momentum"] = momentum
    return keras.optimizers.get({"class_name": name, "config": config})


def labelled_batches(
    files: list[str],
    labels: np.ndarray,
    size: int,
    resize: str,
    decode: str,
    preprocess: Callable,
    batch_size: int,
    shuffle_seed: int | None = None,
) -> tf.data.Dataset:
    """(preprocessed images, labels) batches, decoded on the fly; shuffled every epoch from the seed if given."""
    dataset = tf.data.Dataset.from_tensor_slices(
        (tf.constant(files, tf.string), tf.ones(len(files), tf.bool), tf.constant(labels, tf.float32))
    )
    if shuffle_seed is not None:
        dataset = dataset.shuffle(len(files), seed=shuffle_seed, reshuffle_each_iteration=True)
    dataset = decoded(dataset, size, resize, decode).batch(batch_size)
    return dataset.map(lambda images, y: (preprocess(tf.cast(images, tf.float32)), y)).prefetch(2)


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


def trunk_batches(
    run_trunk: Callable[[np.ndarray], np.ndarray], batches: tf.data.Dataset, augment: Callable | None = None
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """(trunk outputs, labels) per batch of (preprocessed images, labels), augmented first when augment is given."""
    for x, y in batches:
        yield run_trunk(np.asarray(augment(x) if augment is not None else x)), y.numpy()


def stacked(batches: Iterable[tuple[np.ndarray, np.ndarray]], count: int) -> tuple[np.ndarray, np.ndarray]:
    """(trunk outputs, labels) batches of `count` rows in all, copied into two arrays allocated once."""
    maps = labels = None
    at = 0
    for batch_maps, batch_labels in batches:
        if maps is None:
            maps = np.empty((count, *batch_maps.shape[1:]), batch_maps.dtype)
            labels = np.empty((count, *batch_labels.shape[1:]), batch_labels.dtype)
        maps[at : at + len(batch_maps)], labels[at : at + len(batch_labels)] = batch_maps, batch_labels
        at += len(batch_maps)
    if maps is None or at != count:
        raise ValueError(f"expected {count} rows of trunk outputs, got {at}")
    return maps, labels


def fit_top(
    model: keras.Model,
    train_epoch: Callable[[], Iterable[tuple[np.ndarray, np.ndarray]]],
    val: tuple[np.ndarray, np.ndarray],
    epochs: int,
    patience: int,
    batch_size: int,
) -> dict[str, list[float]]:
    """Train on a fresh pass of train_epoch() per epoch, with Keras EarlyStopping's rule on val loss; the history."""
    history: dict[str, list[float]] = {"loss": [], "accuracy": [], "val_loss": [], "val_accuracy": []}
    best, best_weights, waited = np.inf, None, 0
    for epoch in range(1, epochs + 1):
        start = time.perf_counter()
        totals, seen = {"loss": 0.0, "accuracy": 0.0}, 0
        for maps, y in train_epoch():
            logs = model.train_on_batch(maps, y, return_dict=True)  # this batch's figures: it resets the metrics
            totals = {key: total + logs[key] * len(y) for key, total in totals.items()}
            seen += len(y)
        scores = model.evaluate(*val, batch_size=batch_size, verbose=0, return_dict=True)
        for key, total in totals.items():  # the epoch's means, weighted by batch size, as fit reports them
            history[key].append(total / max(seen, 1))
            history[f"val_{key}"].append(float(scores[key]))
        print(
            f"epoch {epoch}/{epochs}: loss {history['loss'][-1]:.4f}, val_loss {history['val_loss'][-1]:.4f}, "
            f"val_accuracy {history['val_accuracy'][-1]:.4f} ({time.perf_counter() - start:.0f} s)",
            flush=True,
        )
        if history["val_loss"][-1] < best:
            best, best_weights, waited = history["val_loss"][-1], model.get_weights(), 0
        else:
            waited += 1
            if waited >= patience:
                print(f"early stop: best epoch {int(np.argmin(history['val_loss'])) + 1}")
                break
    if best_weights is not None:
        model.set_weights(best_weights)
    return history


def predict_with_mirror(
    run_trunk: Callable[[np.ndarray], np.ndarray], classifier: keras.Model, batches: Iterable
) -> tuple[np.ndarray, np.ndarray]:
    """(N, K) class probabilities of each image, and of each image averaged with its mirror image (test-time
    augmentation); batches hold preprocessed images."""
    predict = tf.function(lambda maps: classifier(maps, training=False), reduce_retracing=True)
    plain, mirrored = [], []
    for x in batches:
        x = np.asarray(x)
        p = predict(run_trunk(x)).numpy()
        plain.append(p)
        mirrored.append((p + predict(run_trunk(x[:, :, ::-1])).numpy()) / 2)
    if not plain:
        return np.zeros((0, 0)), np.zeros((0, 0))
    return probabilities(np.concatenate(plain)), probabilities(np.concatenate(mirrored))
