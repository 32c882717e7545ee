"""The backbone registry: names, wiring and preprocessing with random weights, and the offline failure."""

import time
import urllib.error

import numpy as np
import pytest

from dogscats.networks.backbones import get_backbone, load_feature_extractor, offline_backbones, registry

KERAS_APPS = {  # name: GAP feature width
    "resnet50": 2048,
    "inception_v3": 2048,
    "xception": 2048,
    "vgg16": 512,
    "efficientnetv2_b0": 1280,
    "efficientnetv2_b1": 1280,
    "efficientnetv2_b2": 1408,
    "efficientnetv2_b3": 1536,
    "efficientnetv2_s": 1280,
    "convnext_tiny": 768,
}


def test_registry_knows_the_offline_lite_trio_and_the_keras_applications():
    assert offline_backbones() == ["efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2"]
    assert set(KERAS_APPS) <= set(registry())
    assert [get_backbone(f"efficientnet_lite{i}").input_size for i in range(3)] == [224, 240, 260]


def test_unknown_backbone_lists_the_known_names():
    with pytest.raises(ValueError, match="unknown backbone 'resnet5'.*efficientnet_lite0.*resnet50"):
        get_backbone("resnet5")


QUICK_TO_BUILD = {"vgg16"}  # a second; the others take 5 to 10 s each: slow, run in CI


@pytest.mark.parametrize(
    "name", [pytest.param(n, marks=pytest.mark.slow) if n not in QUICK_TO_BUILD else n for n in sorted(KERAS_APPS)]
)
def test_keras_application_wiring_with_random_weights(name):
    backbone = get_backbone(name)
    model = load_feature_extractor(name, weights=None)
    assert tuple(model.input.shape[1:]) == (backbone.input_size, backbone.input_size, 3)
    x = np.random.default_rng(0).uniform(0, 255, (1, backbone.input_size, backbone.input_size, 3)).astype("float32")
    features = model.predict(backbone.preprocess(x.copy()), verbose=0)
    assert features.shape == (1, KERAS_APPS[name])
    assert np.isfinite(features).all()


@pytest.mark.parametrize(
    ("name", "pixel", "expected"),
    [
        ("inception_v3", 255.0, 1.0),  # scaled to [-1, 1]
        ("xception", 0.0, -1.0),
        ("resnet50", 103.939, 0.0),  # caffe: RGB -> BGR, ImageNet mean subtracted (blue channel first)
        ("efficientnet_lite0", 127.0, 0.0),  # (x - 127) / 128
        ("efficientnetv2_b0", 200.0, 200.0),  # the model rescales inside
        ("convnext_tiny", 200.0, 200.0),
    ],
)
def test_preprocessing(name, pixel, expected):
    x = np.full((1, 2, 2, 3), pixel, dtype=np.float32)
    out = get_backbone(name).preprocess(x.copy())
    assert out[0, 0, 0, 0] == pytest.approx(expected, abs=1e-4)


def test_failed_imagenet_download_is_a_clear_message(monkeypatch, tmp_path):
    from keras.src.utils import file_utils

    def offline(*args, **kwargs):
        raise urllib.error.URLError("Name or service not known")

    monkeypatch.setenv("KERAS_HOME", str(tmp_path))
    monkeypatch.setattr(file_utils, "urlretrieve", offline)
    start = time.monotonic()
    with pytest.raises(RuntimeError) as err:
        load_feature_extractor("resnet50", weights="imagenet")
    assert time.monotonic() - start < 30
    message = str(err.value)
    assert "resnet50" in message and str(tmp_path / "models") in message
    assert "efficientnet_lite0, efficientnet_lite1, efficientnet_lite2" in message


@pytest.mark.parametrize(
    ("pooling", "size", "dim"), [("flatten", 150, 4 * 4 * 512), ("max", 150, 512), ("avg", 224, 512)]
)
def test_pooling_and_input_size_vgg16_bottleneck_features(pooling, size, dim):
    model = load_feature_extractor("vgg16", weights=None, pooling=pooling, input_size=size)
    assert tuple(model.input.shape[1:]) == (size, size, 3) and model.output.shape[-1] == dim


def test_lite_imagenet_weights_at_another_input_size_give_the_same_features_where_they_agree():
    default = load_feature_extractor("efficientnet_lite0", weights="imagenet")
    smaller = load_feature_extractor("efficientnet_lite0", weights="imagenet", input_size=160, pooling="max")
    assert tuple(smaller.input.shape[1:]) == (160, 160, 3) and smaller.output.shape[-1] == 1280
    assert all(np.array_equal(a, b) for a, b in zip(default.get_weights(), smaller.get_weights(), strict=True))


def test_unknown_pooling_is_refused():
    with pytest.raises(ValueError, match="unknown pooling 'sum'"):
        load_feature_extractor("small_cnn", weights=None, pooling="sum")
