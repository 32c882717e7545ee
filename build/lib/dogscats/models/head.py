"""The ensemble head: concatenated GAP features -> Dropout -> Dense(1, sigmoid), the reference recipe; with more
than two classes, Dense(K, softmax)."""

from pathlib import Path

import keras
import numpy as np

from dogscats.base.atomic import atomic_dir, save_keras_model
from dogscats.base.scoring import as_probabilities
from dogscats.data import feature_store


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


def output_layer(n_classes: int) -> keras.layers.Dense:
    """Dense(1, sigmoid) for two classes (p of the second), Dense(K, softmax) for more."""
    if n_classes == 2:
        return keras.layers.Dense(1, activation="sigmoid", name="p")
    return keras.layers.Dense(n_classes, activation="softmax", name="p")


def loss_for(n_classes: int) -> str:
    """Binary cross-entropy for two classes, categorical (integer labels) for more: both are the log loss."""
    return "binary_crossentropy" if n_classes == 2 else "sparse_categorical_crossentropy"


def build_head(
    input_dim: int, n_classes: int, hidden: int, dropout: float, optimizer: str, learning_rate: float
) -> keras.Model:
    """[Dense(hidden, ReLU)] + Dropout + the output layer on the features, compiled with the log loss."""
    inputs = keras.Input((input_dim,), name="features")
    x = keras.layers.Dense(hidden, activation="relu", name="hidden")(inputs) if hidden else inputs
    x = keras.layers.Dropout(dropout, name="dropout")(x)
    model = keras.Model(inputs, output_layer(n_classes)(x), name="head")
    opt = keras.optimizers.get({"class_name": optimizer, "config": {"learning_rate": learning_rate}})
    model.compile(optimizer=opt, loss=loss_for(n_classes), metrics=["accuracy"])
    return model


def fit_head(
    train: feature_store.SplitFeatures,
    held_out: feature_store.SplitFeatures | None,
    n_classes: int,
    hidden: int,
    dropout: float,
    optimizer: str,
    learning_rate: float,
    epochs: int,
    batch_size: int,
    callbacks: list[keras.callbacks.Callback] | None = None,
) -> tuple[keras.Model, dict[str, list[float]]]:
    """Build and train a head on some rows' features; the history has (Keras's) val_ columns, the held-out rows'
    figures, when held_out is given."""
    model = build_head(train.features.shape[1], n_classes, hidden, dropout, optimizer, learning_rate)
    history = model.fit(
        train.features,
        train.labels,
        validation_data=(held_out.features, held_out.labels) if held_out is not None else None,
        epochs=epochs,
        batch_size=batch_size,
        shuffle=True,
        verbose=0,
        callbacks=callbacks,
    )
    return model, history.history


def subset(rows: feature_store.SplitFeatures, index: np.ndarray) -> feature_store.SplitFeatures:
    """The rows at the given positions."""
    return feature_store.SplitFeatures(
        [rows.ids[i] for i in index], rows.features[index], rows.labels[index], rows.usable[index]
    )


def predict_proba(model: keras.Model, features: np.ndarray) -> np.ndarray:
    """(N, K) class probabilities, as float64."""
    return as_probabilities(model.predict(features, batch_size=1024, verbose=0))


def save_heads(models: list[keras.Model], out: Path, refit: keras.Model | None = None) -> None:
    """Save the fold heads as out/fold_1.keras, ..., and a head refit on all labelled images as out/all.keras,
    replacing the folder atomically."""
    with atomic_dir(out) as tmp:
        for i, model in enumerate(models, start=1):
            save_keras_model(model, tmp / f"fold_{i}.keras")
        if refit is not None:
            save_keras_model(refit, tmp / "all.keras")


def checkpoint_epochs(epochs: int, count: int = 10) -> list[int]:
    """About `count` evenly spaced epochs (counted from 1) at which a head's predictions are kept, the last included."""
    step = max(1, epochs // count)
    return sorted({*range(step, epochs + 1, step), epochs})


class EpochPredictions(keras.callbacks.Callback):
    """Keeps, after each of the given epochs (counted from 1), the model's weights and its class probabilities for
    each of the given feature arrays."""

    def __init__(self, arrays: list[np.ndarray], epochs: list[int]) -> None:
        super().__init__()
        self.arrays, self.epochs = arrays, set(epochs)
        self.predictions: dict[int, list[np.ndarray]] = {}
        self.weights: dict[int, list[np.ndarray]] = {}

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        """Record the predictions and weights at a checkpoint epoch."""
        if epoch + 1 in self.epochs:
            self.predictions[epoch + 1] = [predict_proba(self.model, a) for a in self.arrays]
            self.weights[epoch + 1] = self.model.get_weights()
