"""All the heads in one pass: each head learns from its own rows only, as if alone, and the run is reproducible."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from dogscats.models.fold_heads import (
    ByteDropout,
    build_heads,
    class_weights,
    fit_heads,
    head_weights,
    out_of_fold,
    pass_batch_size,
    predict_heads,
    single_head,
    train_heads,
    training_rows,
)
from dogscats.models.head import build_head, predict_proba
from dogscats.networks.determinism import set_seed

FOLDS = np.array([1, 2, 3] * 10)


def _data(n: int = 30, dim: int = 6, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, dim)).astype("float32")
    return x, (x[:, 0] + 0.5 * rng.normal(size=n) > 0).astype(int)


def _fit(x: np.ndarray, y: np.ndarray, **changes) -> dict:
    set_seed(0)
    args = {"refit": True, "n_classes": 2, "hidden": 4, "dropout": 0.5, "optimizer": "adam", "learning_rate": 0.05}
    args |= {"epochs": 3, "batch_size": 8, "seed": 0, "checkpoints": [1, 3]} | changes
    return fit_heads(x, y, FOLDS, x[:4], **args)


def test_the_rows_of_each_head_and_the_batch_that_gives_a_fold_head_its_usual_batch():
    rows = training_rows(np.array([1, 1, 2, 2, 3]), [1, 2, 3], refit=True)
    assert rows.tolist() == [[0, 1, 1, 1], [0, 1, 1, 1], [1, 0, 1, 1], [1, 0, 1, 1], [1, 1, 0, 1]]
    five = training_rows(np.arange(100) % 5, list(range(5)), refit=True)
    assert pass_batch_size(64, five[:, :-1]) == 80  # 4/5 of 80 rows are a fold head's: 64, as when trained alone
    assert pass_batch_size(64, five[:, :0]) == 64  # the refit head alone


def test_a_fold_head_never_learns_from_its_fold_and_the_others_do():
    x, y = _data()
    flipped = np.where(FOLDS == 1, 1 - y, y)  # only fold 1's labels change
    before, after = _fit(x, y), _fit(x, flipped)
    for a, b in zip(before[3].weights[0], after[3].weights[0], strict=True):
        np.testing.assert_array_equal(a, b)  # fold 1's head: bit for bit the same
    np.testing.assert_array_equal(before[3].labelled[0], after[3].labelled[0])
    for head in (1, 2, 3):  # folds 2 and 3's heads and the refit head train on fold 1's rows
        assert not np.allclose(before[3].weights[head][0], after[3].weights[head][0])


def test_each_heads_loss_is_the_mean_over_its_own_rows_as_when_trained_alone():
    x, y = _data()
    rows = training_rows(FOLDS, [1], refit=True)  # head 0: 20 rows of 30; head 1: all
    set_seed(0)
    model = build_heads(x.shape[1], ["fold_1", "refit"], 2, 0, 0.0)
    start = head_weights(model, "fold_1")
    sgd = keras.optimizers.SGD(0.5)  # a gradient's scale shows in SGD's step (Adam would hide it)
    train_heads(model, x, y, rows, 2, sgd, epochs=3, batch_size=len(x), seed=0)
    alone = build_head(x.shape[1], 2, 0, 0.0, "sgd", 0.5)
    alone.set_weights(start)
    alone.fit(x[FOLDS != 1], y[FOLDS != 1], epochs=3, batch_size=len(x), shuffle=False, verbose=0)
    for a, b in zip(head_weights(model, "fold_1"), alone.get_weights(), strict=True):
        np.testing.assert_allclose(a, b, atol=1e-6)


def test_balanced_class_weights_are_n_over_k_times_the_class_count_and_none_is_none():
    assert class_weights(np.array([0, 0, 0, 1, 2, 2]), 3, "none") is None
    assert class_weights(np.array([0, 0, 0, 1, 2, 2]), 3, "balanced").tolist() == pytest.approx([2 / 3, 2, 1])


@pytest.mark.parametrize("n_classes", [2, 3])
def test_class_weights_weigh_each_rows_loss_as_keras_class_weight_does(n_classes):
    x, y = _data()
    y = y if n_classes == 2 else np.arange(len(x)) % 3
    y[:8] = 0  # imbalanced: the weights differ from 1
    weights = class_weights(y, n_classes, "balanced")
    rows = training_rows(FOLDS, [1], refit=False)
    set_seed(0)
    model = build_heads(x.shape[1], ["fold_1"], n_classes, 0, 0.0)
    start = head_weights(model, "fold_1")
    sgd = keras.optimizers.SGD(0.5)  # a loss's scale shows in SGD's step
    train_heads(model, x, y, rows, n_classes, sgd, epochs=3, batch_size=len(x), seed=0, row_weights=weights[y])
    alone = build_head(x.shape[1], n_classes, 0, 0.0, "sgd", 0.5)
    alone.set_weights(start)
    train = FOLDS != 1
    fit = {"epochs": 3, "batch_size": len(x), "shuffle": False, "verbose": 0}
    alone.fit(x[train], y[train], class_weight=dict(enumerate(weights)), **fit)
    for a, b in zip(head_weights(model, "fold_1"), alone.get_weights(), strict=True):
        np.testing.assert_allclose(a, b, atol=1e-6)
    unweighted = build_head(x.shape[1], n_classes, 0, 0.0, "sgd", 0.5)
    unweighted.set_weights(start)
    unweighted.fit(x[train], y[train], **fit)
    assert not np.allclose(head_weights(model, "fold_1")[0], unweighted.get_weights()[0], atol=1e-4)  # weights count


def test_equal_class_weights_train_the_heads_bit_for_bit_as_none():
    x, y = _data()
    none, ones = _fit(x, y), _fit(x, y, weights_of_classes=np.ones(2))
    for epoch in (1, 3):
        np.testing.assert_array_equal(none[epoch].labelled, ones[epoch].labelled)
        np.testing.assert_array_equal(none[epoch].test, ones[epoch].test)


def test_the_one_pass_is_reproducible_and_depends_on_the_seed():
    x, y = _data()
    first, second, other = _fit(x, y), _fit(x, y), _fit(x, y, seed=1)
    assert sorted(first) == [1, 3]
    for epoch in (1, 3):
        np.testing.assert_array_equal(first[epoch].labelled, second[epoch].labelled)
        np.testing.assert_array_equal(first[epoch].test, second[epoch].test)
        for a, b in zip(first[epoch].weights, second[epoch].weights, strict=True):
            for wa, wb in zip(a, b, strict=True):
                np.testing.assert_array_equal(wa, wb)
    assert not np.array_equal(first[3].labelled, other[3].labelled)


@pytest.mark.parametrize("n_classes", [2, 3])
def test_a_head_sliced_out_predicts_as_it_did_among_all(n_classes):
    x, y = _data()
    y = y if n_classes == 2 else np.arange(len(x)) % 3
    kept = _fit(x, y, n_classes=n_classes)
    assert kept[3].labelled.shape == (4, 30, n_classes) and kept[3].test.shape == (4, 4, n_classes)
    for h in range(4):
        head = single_head(kept[3].weights[h], x.shape[1], n_classes, 4, 0.5, "adam", 0.05)
        assert [layer.name for layer in head.layers] == [
            layer.name for layer in build_head(6, n_classes, 4, 0.5, "adam", 1.0).layers
        ]
        np.testing.assert_allclose(predict_proba(head, x), kept[3].labelled[h], atol=1e-6)


def test_out_of_fold_takes_each_row_from_its_folds_head():
    labelled = np.stack([np.full((6, 2), h) for h in range(4)])  # head h says h everywhere; head 3 is the refit
    p = out_of_fold(labelled, np.array([2, 5, 7, 2, 5, 7]), [2, 5, 7])
    assert p[:, 0].tolist() == [0, 1, 2, 0, 1, 2]


def test_the_model_of_all_heads_outputs_each_head_side_by_side():
    set_seed(0)
    model = build_heads(6, ["fold_1", "fold_2"], 3, 0, 0.5)
    assert model.output.shape == (None, 2, 3)
    assert predict_heads(model, np.zeros((0, 6), "float32")).shape == (2, 0, 3)


def test_a_confidently_wrong_row_still_teaches_its_head_as_keras_does_from_the_logits():
    x, y = np.ones((4, 2), "float32"), np.ones(4, int)
    set_seed(0)
    model = build_heads(2, ["refit"], 2, 0, 0.0)
    kernel, _ = model.get_layer("refit_p").get_weights()
    model.get_layer("refit_p").set_weights([np.zeros_like(kernel), np.array([-40.0], "float32")])  # p(dog) ~ 4e-18
    train_heads(model, x, y, np.ones((4, 1), bool), 2, keras.optimizers.SGD(1.0), epochs=1, batch_size=4, seed=0)
    assert model.get_layer("refit_p").get_weights()[1][0] == pytest.approx(-39.0)  # the gradient: p - 1 = -1


@pytest.mark.parametrize("rate", [0.5, 0.2])
def test_byte_dropout_keeps_the_rates_share_scaled_and_is_the_identity_at_inference(rate):
    keras.utils.set_random_seed(0)
    layer = ByteDropout(rate)
    x = tf.ones((400, 1283))  # units not a multiple of 4
    out = layer(x, training=True).numpy()
    kept = out > 0
    cut = round(rate * 256)
    assert set(np.unique(out)) == {0.0, np.float32(256 / (256 - cut))}
    assert abs(kept.mean() - (1 - cut / 256)) < 0.01  # 513,200 draws: the share within 1%
    assert abs(out.mean() - 1) < 0.02  # the expectation kept
    assert not np.array_equal(kept, layer(x, training=True).numpy() > 0)  # a fresh mask each call
    assert np.array_equal(layer(x, training=False).numpy(), x.numpy())


def test_byte_dropout_masks_repeat_with_the_seed():
    masks = []
    for seed in (0, 0, 1):
        keras.utils.set_random_seed(seed)
        masks.append(ByteDropout(0.5)(tf.ones((8, 40)), training=True).numpy())
    assert np.array_equal(masks[0], masks[1]) and not np.array_equal(masks[0], masks[2])
