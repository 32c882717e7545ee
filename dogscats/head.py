"""The ensemble head: concatenated GAP features -> Dropout -> Dense(1, sigmoid), the reference recipe."""

from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

from dogscats import feature_store


def feature_files(features_dir: Path | str, backbones: list[str]) -> list[Path]:
    """The HDF5 feature file of each backbone, in list order."""
    return [Path(features_dir) / f"{name}.h5" for name in backbones]


def load_concatenated(feature_files: list[Path], split: str) -> feature_store.SplitFeatures:
    """Concatenate one split's features across backbones, checking that every file lists the same images."""
    parts = [feature_store.read_split(path, split) for path in feature_files]
    for path, part in zip(feature_files[1:], parts[1:], strict=True):
        if part.ids != parts[0].ids:
            raise ValueError(f"{path}: its {split} images differ from {feature_files[0]}; rerun its features stage")
    features = np.concatenate([part.features for part in parts], axis=1)
    return feature_store.SplitFeatures(parts[0].ids, features, parts[0].labels, parts[0].usable)


def set_seed(seed: int) -> None:
    """Seed Python, NumPy and TensorFlow and make TF ops deterministic, so reruns give the same model."""
    keras.utils.set_random_seed(seed)
    tf.config.experimental.enable_op_determinism()


def build_head(input_dim: int, dropout: float, optimizer: str, learning_rate: float) -> keras.Model:
    """Dropout + Dense(1, sigmoid) on the features, compiled with binary cross-entropy."""
    inputs = keras.Input((input_dim,), name="features")
    x = keras.layers.Dropout(dropout, name="dropout")(inputs)
    outputs = keras.layers.Dense(1, activation="sigmoid", name="p_dog")(x)
    model = keras.Model(inputs, outputs, name="head")
    opt = keras.optimizers.get({"class_name": optimizer, "config": {"learning_rate": learning_rate}})
    model.compile(optimizer=opt, loss="binary_crossentropy", metrics=["accuracy"])
    return model


def predict_proba(model: keras.Model, features: np.ndarray) -> np.ndarray:
    """p(dog) per row, as float64."""
    return model.predict(features, batch_size=1024, verbose=0)[:, 0].astype(np.float64)
