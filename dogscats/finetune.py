"""Fine-tuning the top of a backbone on augmented images, the second half of the reference recipe.

The model is augmentation -> backbone (frozen below its last blocks, BatchNorm in inference mode) -> the head
([Dense(hidden)], Dropout, Dense(1, sigmoid) or Dense(K, softmax)), and the head starts trained on the backbone's
stored features: a random head on a pretrained base would send large gradients into the pretrained weights and
wreck them. (With head_epochs 0 the head starts random: for a frozen base, or a network trained from scratch.)
"""

import re
from collections.abc import Callable

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


def build_finetune_model(
    base: keras.Model, augment: keras.Sequential, head: keras.Model, input_size: int
) -> keras.Model:
    """Preprocessed image -> augmentation -> backbone -> the head (its layers and weights, trained on)."""
    inputs = keras.Input((input_size, input_size, 3), name="image")
    x = augment(inputs)
    x = base(x, training=False)
    return keras.Model(inputs, head(x), name=f"{base.name}_finetuned")


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


def predict_with_mirror(model: keras.Model, batches: tf.data.Dataset) -> tuple[np.ndarray, np.ndarray]:
    """(N, K) class probabilities of each image, and of each image averaged with its mirror image (test-time
    augmentation)."""

    @tf.function(reduce_retracing=True)
    def step(x: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        plain = model(x, training=False)
        return plain, (plain + model(tf.reverse(x, axis=[2]), training=False)) / 2

    plain, mirrored = [], []
    for x in batches:
        p, pm = step(x)
        plain.append(p.numpy())
        mirrored.append(pm.numpy())
    if not plain:
        return np.zeros((0, 0)), np.zeros((0, 0))
    return probabilities(np.concatenate(plain)), probabilities(np.concatenate(mirrored))
