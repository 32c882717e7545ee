"""EfficientNet-Lite: architecture against the weights, the port's strictness, and golden parity."""

import numpy as np
import pytest

from dogscats.efficientnet_lite import (
    LITE_VARIANTS,
    block_specs,
    build_efficientnet_lite,
    load_imagenet_classifier,
    port_state_dict,
    round_filters,
    wheel_weights_path,
)
from dogscats.torch_weights import load_legacy_state_dict

from .conftest import SHARED

GOLDEN = SHARED / "golden"


def test_round_filters_follows_the_tf_reference():
    assert round_filters(32, 1.0) == 32
    assert round_filters(112, 1.1) == 120
    assert round_filters(320, 1.1) == 352


@pytest.mark.parametrize("name", sorted(LITE_VARIANTS))
def test_block_layout_matches_the_weights(name):
    state = load_legacy_state_dict(wheel_weights_path(name))
    width, depth, _, _ = LITE_VARIANTS[name]
    specs = block_specs(width, depth)
    assert len(specs) == len({k.split(".")[1] for k in state if k.startswith("_blocks.")})
    for b, (kernel, _, expand, f_in, f_out) in enumerate(specs):
        assert state[f"_blocks.{b}._depthwise_conv.weight"].shape == (f_in * expand, 1, kernel, kernel)
        assert state[f"_blocks.{b}._project_conv.weight"].shape[0] == f_out


@pytest.fixture(scope="module")
def lite0_state():
    return load_legacy_state_dict(wheel_weights_path("efficientnet_lite0"))


def test_port_fails_on_an_unused_tensor(lite0_state):
    state = dict(lite0_state, **{"_extra.weight": np.zeros(3, np.float32)})
    with pytest.raises(ValueError, match="left unused"):
        port_state_dict(build_efficientnet_lite("efficientnet_lite0"), state)


def test_port_fails_on_a_shape_mismatch(lite0_state):
    with pytest.raises(ValueError, match="expects"):  # lite0's weights do not fit lite2's wider blocks
        port_state_dict(build_efficientnet_lite("efficientnet_lite2"), lite0_state)


def test_converted_weights_are_cached(tmp_path):
    first = load_imagenet_classifier("efficientnet_lite0", tmp_path)
    cached = tmp_path / "efficientnet_lite0.weights.h5"
    assert cached.exists() and not list(tmp_path.glob("*partial*"))
    second = load_imagenet_classifier("efficientnet_lite0", tmp_path)
    x = np.random.default_rng(0).uniform(-1, 1, (1, 224, 224, 3)).astype(np.float32)
    np.testing.assert_array_equal(first.predict(x, verbose=0), second.predict(x, verbose=0))


@pytest.mark.skipif(not GOLDEN.is_dir(), reason="golden reference features need ../shared/data/golden")
@pytest.mark.parametrize("name", sorted(LITE_VARIANTS))
def test_golden_parity(name, tmp_path_factory):
    import keras

    golden = np.load(GOLDEN / f"{name}.npz")
    classifier = load_imagenet_classifier(name, tmp_path_factory.getbasetemp() / "weights")
    features = keras.Model(classifier.input, classifier.get_layer("avg_pool").output)
    x = (golden["inputs"].astype(np.float32) - 127) / 128
    assert np.abs(features.predict(x, verbose=0) - golden["features"]).max() < 1e-4
    assert np.abs(classifier.predict(x, verbose=0) - golden["logits"]).max() < 1e-4
