"""Fine-tuning: which layers train, BatchNorm frozen, the head's weights carried over, augmentation only in training."""

import keras
import numpy as np
import pytest

from dogscats.backbones import load_feature_extractor
from dogscats.finetune import augmentation, block_names, build_finetune_model, freeze_below_top_blocks, make_optimizer
from dogscats.head import build_head

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


def test_starts_from_the_head_and_augments_only_in_training(base):
    freeze_below_top_blocks(base, 1)
    head = build_head(1280, 2, 0, 0.5, "adam", 1e-3)
    head.get_layer("p").set_weights([np.full((1280, 1), 0.01, np.float32), np.array([0.2], np.float32)])
    model = build_finetune_model(base, augmentation(True, 10, 0.1, 0.1, 0.2, seed=0), head, 224)
    x = np.random.default_rng(0).uniform(-1, 1, (2, 224, 224, 3)).astype(np.float32)
    expected = head(base(x, training=False), training=False).numpy()
    assert np.allclose(model(x, training=False).numpy(), expected, atol=1e-5)
    augmented = model.get_layer("augmentation")(x, training=True).numpy()
    assert np.abs(augmented - x).max() > 0.1


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
    model = build_finetune_model(base, augmentation(True, 40, 0.2, 0.2, 0.2, seed=0), head, 150)
    assert sum(int(np.prod(w.shape)) for w in model.trainable_weights) == sum(
        int(np.prod(w.shape)) for w in base.weights + head.weights
    )  # every layer trains
    x = np.random.default_rng(0).uniform(0, 1, (2, 150, 150, 3)).astype(np.float32)
    assert model(x, training=False).shape == (2, 1)
