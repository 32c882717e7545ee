"""Fine-tuning: which layers train, BatchNorm frozen, the trunk/top split, the head's weights carried over, augmentation
only in training, one copy per fold trained on the rows outside its fold and predicting its fold."""

import keras
import numpy as np
import pytest

from dogscats.models.finetune import (
    augmentation,
    block_names,
    build_top_classifier,
    clone_top,
    fold_probabilities,
    freeze_below_top_blocks,
    load_finetuned,
    make_optimizer,
    save_finetuned,
    split_at_top_blocks,
    train_folds_one_epoch,
    training_augmentation,
    trunk_outputs,
)
from dogscats.models.head import build_head
from dogscats.networks.backbones import load_feature_extractor

NAME = "efficientnet_lite0"


@pytest.fixture(scope="module")
def base():
    return load_feature_extractor(NAME, weights=None)


def _trainable_layers(model: keras.Model) -> list[str]:
    return [layer.name for layer in model.layers if layer.trainable and layer.weights]


def test_blocks_are_found_bottom_to_top(base):
    assert block_names(base) == [f"block{b}" for b in range(16)]


def test_only_the_top_blocks_train_and_batchnorm_stays_frozen(base):
    assert freeze_below_top_blocks(base, 2) == ["block14", "block15"]
    trainable = _trainable_layers(base)
    assert trainable[0] == "block14_expand_conv" and trainable[-1] == "head_conv"
    assert not [name for name in trainable if "_bn" in name]
    assert all(name.startswith(("block14", "block15", "head")) for name in trainable)


def test_zero_blocks_freezes_the_whole_backbone(base):
    assert freeze_below_top_blocks(base, 0) == []
    assert _trainable_layers(base) == []


def test_too_many_blocks_is_a_clear_error(base):
    with pytest.raises(ValueError, match="trainable_blocks: efficientnet_lite0 has 0 to 16, got 17"):
        freeze_below_top_blocks(base, 17)


def test_a_backbone_without_named_blocks_is_refused():
    inputs = keras.Input((8, 8, 3))
    model = keras.Model(inputs, keras.layers.Conv2D(2, 3, name="conv")(inputs))
    with pytest.raises(ValueError, match="no layers named blockN_"):
        freeze_below_top_blocks(model, 1)


def test_the_trunk_and_top_compose_to_the_backbone_and_the_top_shares_its_layers(base):
    blocks = freeze_below_top_blocks(base, 2)
    trunk, top = split_at_top_blocks(base, blocks)
    assert tuple(trunk.output.shape[1:]) == (7, 7, 192) and top.layers[1] is base.get_layer("block14_expand_conv")
    assert not trunk.trainable_weights  # frozen
    x = np.random.default_rng(0).uniform(-1, 1, (2, 224, 224, 3)).astype(np.float32)
    assert np.allclose(top(trunk(x)), base(x, training=False), atol=1e-6)
    assert split_at_top_blocks(base, [])[1] is None  # nothing trains: the whole backbone is the trunk


@pytest.mark.slow  # three more architectures, about 10 s
@pytest.mark.parametrize(
    ("name", "size", "blocks"), [("resnet50", 64, 2), ("xception", 96, 2), ("efficientnetv2_b0", 64, 3)]
)
def test_the_split_composes_to_the_backbone_for_other_architectures(name, size, blocks):
    other = load_feature_extractor(name, weights=None, input_size=size)
    trunk, top = split_at_top_blocks(other, freeze_below_top_blocks(other, blocks))
    x = np.random.default_rng(0).uniform(-1, 1, (2, size, size, 3)).astype(np.float32)
    assert np.allclose(top(trunk(x), training=False), other(x, training=False), atol=1e-5)
    head = build_head(int(other.output.shape[-1]), 2, 0, 0.0, "adam", 1e-3)
    classifier = build_top_classifier(top, head, tuple(trunk.output.shape[1:]))
    assert np.allclose(classifier(trunk(x)), head(other(x, training=False)), atol=1e-5)


def test_trunk_outputs_fill_one_array_allocated_once():
    batches = [np.full((3, 2), i, np.float32) for i in range(3)]
    maps = trunk_outputs(lambda x: x * 2, batches, 9)
    assert maps.shape == (9, 2) and maps[:, 0].tolist() == [0, 0, 0, 2, 2, 2, 4, 4, 4]
    with pytest.raises(ValueError, match="expected 10 rows of trunk outputs, got 9"):
        trunk_outputs(lambda x: x, batches, 10)


def test_a_clone_of_the_top_is_independent(base):
    trunk, top = split_at_top_blocks(base, freeze_below_top_blocks(base, 1))
    copy = clone_top(top)
    maps = np.random.default_rng(0).normal(size=(2, *trunk.output.shape[1:])).astype(np.float32)
    assert np.allclose(copy(maps), top(maps), atol=1e-6)
    assert [w.trainable for w in copy.weights] == [w.trainable for w in top.weights]  # BatchNorm stays frozen
    copy.trainable_weights[0].assign(copy.trainable_weights[0] + 1.0)
    assert not np.allclose(copy(maps), top(maps), atol=1e-3)  # training one fold's copy leaves the others alone


def _classifier(seed: int) -> keras.Model:
    keras.utils.set_random_seed(seed)
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(1, activation="sigmoid")])
    model.compile(optimizer=keras.optimizers.SGD(0.5), loss="binary_crossentropy", metrics=["accuracy"])
    return model


def test_each_folds_copy_trains_only_on_the_rows_outside_its_fold():
    x = np.random.default_rng(0).normal(size=(40, 4)).astype(np.float32)
    folds = np.repeat([2, 5], 20)  # fold ids as the manifest gives them, not 1..k
    y = (folds == 2).astype(np.float32)  # fold 2 all ones, fold 5 all zeros
    classifiers = [_classifier(0), _classifier(0)]
    batches = [(x[:16], y[:16], folds[:16]), (x[16:], y[16:], folds[16:])]
    for _ in range(20):
        scores = train_folds_one_epoch(classifiers, [2, 5], batches)
    assert set(scores) == {"loss", "accuracy"} and scores["accuracy"] == 1.0
    assert classifiers[0].predict(x, verbose=0).mean() < 0.2  # fold 2's copy saw fold 5 only: zeros
    assert classifiers[1].predict(x, verbose=0).mean() > 0.8  # fold 5's copy saw fold 2 only: ones


def test_fold_probabilities_come_from_the_copy_that_left_the_fold_out():
    classifiers = []
    for bias in (-2.0, 2.0):  # constant outputs: sigmoid(-2) and sigmoid(2)
        model = _classifier(0)
        model.layers[0].set_weights([np.zeros((4, 1), np.float32), np.array([bias], np.float32)])
        classifiers.append(model)
    folds = np.array([5, 2, 5, 2, 2])  # fold ids out of order and not 1..k: classifiers[0] is fold 5's
    maps = np.zeros((5, 4), np.float32)
    oof, oof_mirror, test, test_mirror = fold_probabilities(
        classifiers, [5, 2], folds, (maps, maps), (maps[:3], maps[:3]), 8
    )
    low, high = 1 / (1 + np.exp(2)), 1 / (1 + np.exp(-2))
    assert np.allclose(oof[:, 1], np.where(folds == 5, low, high)) and np.allclose(oof_mirror, oof)
    assert np.allclose(test[:, 1], 0.5) and np.allclose(test_mirror, test) and np.allclose(oof.sum(1), 1)


def test_the_top_classifier_starts_from_the_head_and_augments_only_in_training(base):
    trunk, top = split_at_top_blocks(base, freeze_below_top_blocks(base, 1))
    head = build_head(1280, 2, 0, 0.5, "adam", 1e-3)
    head.get_layer("p").set_weights([np.full((1280, 1), 0.01, np.float32), np.array([0.2], np.float32)])
    classifier = build_top_classifier(top, head, tuple(trunk.output.shape[1:]))
    x = np.random.default_rng(0).uniform(-1, 1, (2, 224, 224, 3)).astype(np.float32)
    expected = head(base(x, training=False), training=False).numpy()
    assert np.allclose(classifier(trunk(x), training=False).numpy(), expected, atol=1e-5)
    augment = augmentation(True, 10, 0.1, 0.1, 0.2, seed=0)
    assert np.array_equal(augment(x, training=False), x)
    augmented = training_augmentation(augment)
    first = augmented(x).numpy()
    assert np.abs(first - x).max() > 0.1 and np.abs(augmented(x).numpy() - first).max() > 0.1  # new draws each call


def test_sgd_gets_momentum():
    optimizer = make_optimizer("sgd", 1e-4, 0.9)
    assert isinstance(optimizer, keras.optimizers.SGD) and optimizer.momentum == 0.9
    assert float(optimizer.learning_rate) == pytest.approx(1e-4)


def test_the_small_cnn_trains_from_scratch_with_a_hidden_layer_head():
    base = load_feature_extractor("small_cnn", weights="imagenet", pooling="flatten")  # no weights exist: random
    assert base.output.shape[-1] == 7 * 7 * 128 and block_names(base) == ["block1", "block2", "block3", "block4"]
    assert freeze_below_top_blocks(base, 4) == ["block1", "block2", "block3", "block4"]
    head = build_head(7 * 7 * 128, 2, 512, 0.5, "rmsprop", 1e-4)
    assert [layer.name for layer in head.layers[1:]] == ["hidden", "dropout", "p"]
    trunk, top = split_at_top_blocks(base, block_names(base))
    assert trunk is None  # nothing is frozen
    model = build_top_classifier(top, head, (150, 150, 3))
    assert sum(int(np.prod(w.shape)) for w in model.trainable_weights) == sum(
        int(np.prod(w.shape)) for w in base.weights + head.weights
    )  # every layer trains
    x = np.random.default_rng(0).uniform(0, 1, (2, 150, 150, 3)).astype(np.float32)
    assert model(x, training=False).shape == (2, 1)


def test_models_finetuned_holds_the_trunk_once_each_folds_model_and_its_description(tmp_path):
    trunk = keras.Sequential([keras.Input((4,)), keras.layers.Dense(4, name="frozen")], name="trunk")
    folds = [_classifier(seed) for seed in (0, 1)]
    description = {"backbone": "small_cnn", "epoch": 1, "tta": True, "folds": [2, 5], "fold_input": "trunk"}
    save_finetuned(tmp_path / "finetuned", description, trunk, folds)
    assert sorted(p.name for p in (tmp_path / "finetuned").iterdir()) == [
        "finetuned.json",
        "fold_2.keras",
        "fold_5.keras",
        "trunk.keras",
    ]
    loaded = load_finetuned(tmp_path / "finetuned")
    x = np.random.default_rng(0).normal(size=(3, 4)).astype(np.float32)
    assert loaded.description == description and np.allclose(loaded.trunk(x), trunk(x))
    assert [np.allclose(m(x), f(x)) for m, f in zip(loaded.folds, folds, strict=True)] == [True, True]
    with pytest.raises(ValueError, match="a trunk is saved exactly when the folds take its outputs"):
        save_finetuned(tmp_path / "heads", {**description, "fold_input": "features"}, trunk, folds)
    with pytest.raises(FileNotFoundError, match="older run; rerun dvc repro finetune"):
        load_finetuned(tmp_path)
