"""All the heads in one pass: the k fold heads and the refit head side by side in one Keras model on the same
features, trained together over the data, each head's loss masked to its own training rows (a fold head: the rows
outside its fold; the refit head: every row) and averaged over its own rows in the batch. The heads share no
weights, their dropout masks are drawn independently and Adam works per weight, so each head learns as if alone,
from its rows only: one pass over the data instead of k + 1. With class weights (train.class_weight: balanced) each
row's loss is multiplied by its class's weight before that average, as Keras's class_weight does in fit."""

from collections.abc import Callable
from dataclasses import dataclass

import keras
import numpy as np
import tensorflow as tf
from sklearn.utils.class_weight import compute_class_weight

from dogscats.base.scoring import as_probabilities, log_loss
from dogscats.models.head import build_head

REFIT = "refit"
KERAS_EPS = 1e-7  # Keras's clipping of probabilities in its log loss


def head_names(fold_ids: list[int], refit: bool) -> list[str]:
    """fold_<id> for each fold, then refit when there is one: the model's heads in order, and their curve names."""
    return [f"fold_{fold}" for fold in fold_ids] + ([REFIT] if refit else [])


def training_rows(folds: np.ndarray, fold_ids: list[int], refit: bool) -> np.ndarray:
    """(N, H) booleans: head i trains on the rows outside fold fold_ids[i]; the refit head, last, on every row."""
    rows = [folds != fold for fold in fold_ids] + ([np.ones(len(folds), bool)] if refit else [])
    return np.stack(rows, axis=1)


def class_weights(labels: np.ndarray, n_classes: int, mode: str) -> np.ndarray | None:
    """Each class's weight in the heads' loss: None for none (every row counts once); for balanced, n / (K * n_class)
    over the labelled rows, scikit-learn's compute_class_weight, so the classes weigh the same in total."""
    if mode == "none":
        return None
    return compute_class_weight(mode, classes=np.arange(n_classes), y=np.asarray(labels))


def pass_batch_size(batch_size: int, fold_rows: np.ndarray) -> int:
    """The batch of the shared pass over all N rows such that a fold head (fold_rows: (N, k), its training rows)
    meets about batch_size of its own rows a step, as when trained alone (and so takes as many steps an epoch); with
    no fold heads (the refit head alone), batch_size."""
    share = fold_rows.mean() if fold_rows.size else 1.0
    return max(1, round(batch_size / share)) if share > 0 else batch_size


class ByteDropout(keras.layers.Layer):
    """Dropout whose masks come from random bytes, four to a Philox draw: at training time each unit is kept when its
    byte is at least round(rate * 256) and scaled by 256 / (256 - that), so the rate is rounded to 1/256 (0.5 is
    exact). The masks were 85% of a one-pass step with Keras's Dropout (one float draw a unit): a quarter of the
    draws makes the pass 1.5x faster (docs/results.md). Inference: the identity, as Dropout's."""

    def __init__(self, rate: float, seed: int | None = None, **kwargs) -> None:
        super().__init__(**kwargs)
        if not 0 <= rate < 1:
            raise ValueError(f"dropout rate must be in [0, 1), got {rate}")
        self.rate, self.cut = rate, round(rate * 256)
        self.seed_generator = keras.random.SeedGenerator(seed)

    def call(self, x: tf.Tensor, training: bool = False) -> tf.Tensor:
        """x with a fresh mask at training time; x itself otherwise."""
        if not training or self.cut == 0:
            return x
        units = x.shape[-1]
        shape = tf.concat([tf.shape(x)[:-1], [-(-units // 4)]], axis=0)
        seed = tf.cast(self.seed_generator.next(), tf.int32)
        draws = tf.random.stateless_uniform(shape, seed, minval=None, maxval=None, dtype=tf.uint32)
        byte = tf.bitcast(draws, tf.uint8)  # (..., units / 4, 4)
        byte = tf.reshape(byte, tf.concat([tf.shape(x)[:-1], [-1]], axis=0))[..., :units]
        keep = tf.cast(byte >= self.cut, x.dtype)
        return x * keep * (256 / (256 - self.cut))


def build_heads(input_dim: int, names: list[str], n_classes: int, hidden: int, dropout: float) -> keras.Model:
    """One model, the heads side by side on the same features: each build_head's layers (its own weights and
    dropout) named <head>_hidden, <head>_dropout, <head>_p, the last without its sigmoid or softmax: output (batch,
    heads, units) logits, from which the loss is computed as Keras computes a head's own (from the logits its sigmoid
    or softmax keeps), so a confidently wrong row still has a gradient."""
    inputs = keras.Input((input_dim,), name="features")
    outputs = []
    for name in names:
        x = keras.layers.Dense(hidden, activation="relu", name=f"{name}_hidden")(inputs) if hidden else inputs
        x = ByteDropout(dropout, name=f"{name}_dropout")(x)
        outputs.append(keras.layers.Dense(1 if n_classes == 2 else n_classes, name=f"{name}_p")(x))
    return keras.Model(inputs, keras.ops.stack(outputs, axis=1), name="heads")


def head_weights(model: keras.Model, name: str) -> list[np.ndarray]:
    """One head's weights out of the model of all, in build_head's order (hidden kernel and bias, then the output's)."""
    layers = [f"{name}_hidden", f"{name}_p"]
    present = {layer.name for layer in model.layers}
    return [w for layer in layers if layer in present for w in model.get_layer(layer).get_weights()]


def single_head(
    weights: list[np.ndarray],
    input_dim: int,
    n_classes: int,
    hidden: int,
    dropout: float,
    optimizer: str,
    learning_rate: float,
) -> keras.Model:
    """One head on its own, build_head's model as a head trained alone is saved, holding the given weights (its
    optimizer built, with fresh state, so that loading it finds every variable it saves)."""
    model = build_head(input_dim, n_classes, hidden, dropout, optimizer, learning_rate)
    model.set_weights(weights)
    model.optimizer.build(model.trainable_variables)
    return model


def per_row_loss(n_classes: int, labels: tf.Tensor, logits: tf.Tensor) -> tf.Tensor:
    """(batch, heads) log loss of each row under each head, from the heads' logits."""
    if n_classes == 2:
        target = tf.broadcast_to(tf.cast(labels, logits.dtype)[:, None, None], tf.shape(logits))
        return keras.losses.binary_crossentropy(target, logits, from_logits=True)
    target = tf.broadcast_to(labels[:, None], tf.shape(logits)[:2])
    return keras.losses.sparse_categorical_crossentropy(target, logits, from_logits=True)


def activate(logits: tf.Tensor) -> tf.Tensor:
    """The heads' outputs as their own models give them: the sigmoid of one logit, or the softmax of K."""
    return keras.ops.sigmoid(logits) if logits.shape[-1] == 1 else keras.ops.softmax(logits, axis=-1)


@dataclass
class Checkpoint:
    """At one checkpoint epoch: each head's weights, and its class probabilities for the labelled and test rows."""

    weights: list[list[np.ndarray]]
    labelled: np.ndarray  # (heads, N, K)
    test: np.ndarray  # (heads, M, K)


def predict_heads(model: keras.Model, features: np.ndarray, chunk: int = 4096) -> np.ndarray:
    """(heads, N, K) class probabilities of every head for every row, as float64, in inference mode."""
    if not len(features):
        n_out = model.output.shape[-1]
        return np.zeros((model.output.shape[1], 0, 2 if n_out == 1 else n_out))
    parts = [
        keras.ops.convert_to_numpy(activate(model(features[i : i + chunk], training=False)))
        for i in range(0, len(features), chunk)
    ]
    out = np.concatenate(parts)  # (N, heads, units)
    return np.stack([as_probabilities(out[:, h]) for h in range(out.shape[1])])


def train_heads(
    model: keras.Model,
    features: np.ndarray,
    labels: np.ndarray,
    rows: np.ndarray,
    n_classes: int,
    optimizer: keras.optimizers.Optimizer,
    epochs: int,
    batch_size: int,
    seed: int,
    on_epoch: Callable[[int, np.ndarray], None] | None = None,
    row_weights: np.ndarray | None = None,
) -> None:
    """Train the heads in one pass a epoch over all rows, shuffled (seeded): head h's loss is the mean over its own
    rows (rows[:, h]) in the batch of their losses, each times its row_weights entry when given (class weights), so
    its gradient comes from them only. on_epoch(epoch, loss) after each epoch (counted from 1), loss being each
    head's mean (weighted) training loss over the epoch's rows."""
    x = tf.constant(features, tf.float32)
    y = tf.constant(labels)
    mask = tf.constant(rows, tf.float32)
    weight = None if row_weights is None else tf.constant(row_weights, tf.float32)
    weights = model.trainable_variables
    optimizer.build(weights)
    n, step = len(features), batch_size

    @tf.function
    def one_epoch(order: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        totals = tf.zeros(rows.shape[1])
        counts = tf.zeros(rows.shape[1])
        for start in tf.range(0, n, step):
            batch = order[start : start + step]
            m = tf.gather(mask, batch)
            with tf.GradientTape() as tape:
                losses = per_row_loss(n_classes, tf.gather(y, batch), model(tf.gather(x, batch), training=True))
                if weight is not None:  # traced once: without weights the graph is the one it always was
                    losses = losses * tf.gather(weight, batch)[:, None]
                seen = tf.reduce_sum(m, axis=0)
                head_loss = tf.reduce_sum(losses * m, axis=0) / tf.maximum(seen, 1.0)
                total = tf.reduce_sum(head_loss)
            optimizer.apply_gradients(zip(tape.gradient(total, weights), weights, strict=True))
            totals += head_loss * seen
            counts += seen
        return totals, counts

    rng = np.random.default_rng(seed)
    for epoch in range(1, epochs + 1):
        totals, counts = one_epoch(tf.constant(rng.permutation(n)))
        if on_epoch is not None:
            on_epoch(epoch, totals.numpy() / np.maximum(counts.numpy(), 1))


def fit_heads(
    features: np.ndarray,
    labels: np.ndarray,
    folds: np.ndarray,
    test_features: np.ndarray,
    refit: bool,
    n_classes: int,
    hidden: int,
    dropout: float,
    optimizer: str,
    learning_rate: float,
    epochs: int,
    batch_size: int,
    seed: int,
    checkpoints: list[int],
    log: Callable[[int, dict[str, float]], None] | None = None,
    weights_of_classes: np.ndarray | None = None,
) -> dict[int, Checkpoint]:
    """Train a head per fold (on the rows outside it) and, with refit, one on every row, in one pass, each row's loss
    weighted by its class's entry of weights_of_classes when given (class_weights); keep each head's weights and
    probabilities at the checkpoint epochs. log(epoch, figures) gets each head's (weighted) training loss
    (<head>/loss) and each fold head's held-out log loss (<head>/oof_logloss, unweighted), Keras's clipping, after
    each epoch."""
    fold_ids = sorted(set(folds.tolist()))
    names = head_names(fold_ids, refit)
    rows = training_rows(folds, fold_ids, refit)
    model = build_heads(features.shape[1], names, n_classes, hidden, dropout)
    opt = keras.optimizers.get({"class_name": optimizer, "config": {"learning_rate": learning_rate}})
    kept: dict[int, Checkpoint] = {}

    def after_epoch(epoch: int, train_loss: np.ndarray) -> None:
        if log is None and epoch not in checkpoints:
            return
        labelled = predict_heads(model, features)
        if log is not None:
            figures = {}
            for h, name in enumerate(names):
                figures[f"{name}/loss"] = float(train_loss[h])
                held_out = ~rows[:, h]
                if held_out.any():
                    figures[f"{name}/oof_logloss"] = log_loss(labels[held_out], labelled[h][held_out], KERAS_EPS)
            log(epoch, figures)
        if epoch in checkpoints:
            weights = [head_weights(model, name) for name in names]
            kept[epoch] = Checkpoint(weights, labelled, predict_heads(model, test_features))

    train_heads(
        model,
        features,
        labels,
        rows,
        n_classes,
        opt,
        epochs,
        pass_batch_size(batch_size, rows[:, : len(fold_ids)]),
        seed,
        after_epoch,
        None if weights_of_classes is None else weights_of_classes[labels],
    )
    return kept


def out_of_fold(labelled: np.ndarray, folds: np.ndarray, fold_ids: list[int]) -> np.ndarray:
    """(N, K) probabilities of each labelled row from the head of its fold, out of (heads, N, K), fold heads first."""
    p = np.zeros(labelled.shape[1:])
    for h, fold in enumerate(fold_ids):
        p[folds == fold] = labelled[h][folds == fold]
    return p
