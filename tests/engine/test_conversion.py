"""The inference engine: which engine runs, features parity with TensorFlow on real weights through the features
stage's path, the conversion cache."""

import os
import time
from pathlib import Path

import keras
import numpy as np
import pytest
import tensorflow as tf

from dogscats.engine.conversion import (
    EngineModel,
    check_conversion,
    choose_engine,
    engine_feature_batches,
    engine_model,
    probe_images,
    to_onnx,
)
from dogscats.engine.extract import split_features
from dogscats.networks.backbones import get_backbone, load_feature_extractor

from ..conftest import SHARED, write_image

PARITY = 2e-5  # the largest feature deviation from TensorFlow allowed


@pytest.mark.parametrize(
    ("engine", "gpu", "precision", "chosen"),
    [
        ("auto", False, "float32", "onnxruntime"),
        ("auto", True, "float32", "tensorflow"),
        ("auto", False, "bfloat16", "tensorflow"),
        ("tensorflow", False, "float32", "tensorflow"),
        ("onnxruntime", True, "float32", "onnxruntime"),
        ("auto", False, "int8", "onnxruntime"),
        ("auto", True, "int8", "onnxruntime"),  # int8 runs on the CPU, a GPU or not
    ],
)
def test_auto_runs_the_engine_on_cpu_in_float32_and_int8_and_tensorflow_on_a_gpu(engine, gpu, precision, chosen):
    assert choose_engine(engine, gpu, precision) == chosen


def test_the_engine_refuses_what_it_cannot_run():
    with pytest.raises(ValueError, match="runs float32 or int8, not float16"):
        choose_engine("onnxruntime", True, "float16")
    with pytest.raises(ValueError, match="int8 runs on the onnxruntime engine, not tensorflow"):
        choose_engine("tensorflow", False, "int8")
    with pytest.raises(ValueError, match="unknown engine 'openvino'"):
        choose_engine("openvino", False, "float32")


def _photos(tmp_path: Path, count: int = 6) -> list[str]:
    """Real photos where ../shared exists, else generated images of different sizes."""
    real = sorted((SHARED / "catsdogs" / "train").glob("*.jpg"))[:count]
    if real:
        return [str(p) for p in real]
    colours = [(200, 60, 40), (40, 60, 200), (120, 120, 30), (10, 200, 90), (250, 250, 250), (0, 0, 0)]
    return [str(write_image(tmp_path / f"{i}.jpg", c, size=(60 + 9 * i, 45 + 5 * i))) for i, c in enumerate(colours)]


@pytest.mark.parametrize(
    "name",
    [
        "efficientnet_lite0",
        "efficientnet_lite1",
        "efficientnet_lite2",
    ],
)
@pytest.mark.parametrize("crops", [1, 5])
@pytest.mark.slow  # real weights: 11 s for Lite0 at 1 crop, 18 s at 5; CI runs them all
def test_engine_features_match_tensorflow_with_the_real_weights(name, crops, tmp_path):
    backbone = get_backbone(name)
    model = load_feature_extractor(name, weights="imagenet")
    extractor = engine_model(model, backbone.preprocess(probe_images(backbone.input_size).astype(np.float32)), tmp_path)
    files = _photos(tmp_path)
    params = {"resize": "crop", "decode": "reduced", "batch_size": 4, "tta": True, "crops": crops}
    usable, strategy = [True] * len(files), tf.distribute.get_strategy()
    expected = np.concatenate(list(split_features(files, usable, backbone, model, None, strategy, params)))
    engine = list(split_features(files, usable, backbone, model, extractor, strategy, params))
    assert [len(b) for b in engine] == [4, 2]
    assert np.abs(np.concatenate(engine) - expected).max() < PARITY
    assert expected.std(axis=0).max() > 0.1  # real weights tell the images apart: the comparison means something


@pytest.mark.slow  # 15 s: three runs of the stage path, two in worker processes
def test_the_stage_path_in_worker_processes_is_byte_identical_run_to_run_and_equals_one_process(tmp_path):
    keras.utils.set_random_seed(0)
    backbone = get_backbone("efficientnet_lite0")
    model = load_feature_extractor(backbone.name, weights=None, input_size=64)  # random weights: features.weights null
    probe = backbone.preprocess(probe_images(64).astype(np.float32))
    colours = [(200, 60, 40), (40, 60, 200), (120, 120, 30), (10, 200, 90), (250, 250, 250)]
    files = [str(write_image(tmp_path / f"{i}.jpg", c, size=(50 + 9 * i, 40 + 5 * i))) for i, c in enumerate(colours)]
    usable = [True, True, False, True, True]
    params = {"resize": "pad", "decode": "full", "batch_size": 2, "tta": True, "crops": 5}
    strategy = tf.distribute.get_strategy()

    def features(workers: tuple[int, int]) -> np.ndarray:
        extractor = engine_model(model, probe, tmp_path / "cache", threads=workers[1])
        batches = list(split_features(files, usable, backbone, model, extractor, strategy, params, workers))
        assert [len(b) for b in batches] == [2, 2, 1]
        return np.concatenate(batches)

    two = features((2, 1))
    assert features((2, 1)).tobytes() == two.tobytes()  # fixed W and T: the same bytes
    np.testing.assert_allclose(two, features((1, 1)), rtol=0, atol=1e-6)  # in this process
    np.testing.assert_allclose(two, features((1, 0)), rtol=0, atol=1e-6)  # as before the workers
    assert two.std(axis=0).max() > 0  # the photos are told apart


def _tiny_model(seed: int = 0) -> keras.Model:
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((8, 8, 3))
    x = keras.layers.Conv2D(4, 3, activation="relu")(inputs)
    return keras.Model(inputs, keras.layers.GlobalAveragePooling2D()(x), name="tiny")


def test_a_conversion_is_checked_cached_and_reused_and_a_weights_change_converts_anew(tmp_path, monkeypatch):
    probe = np.random.default_rng(0).uniform(-1, 1, (2, 8, 8, 3)).astype(np.float32)
    first = engine_model(_tiny_model(0), probe, tmp_path)
    [cached] = tmp_path.glob("tiny-8x8x3-*.onnx")
    monkeypatch.setattr("dogscats.engine.conversion.to_onnx", lambda *args: pytest.fail("converted again"))
    again = engine_model(_tiny_model(0), probe, tmp_path)
    assert np.array_equal(again(probe), first(probe))
    monkeypatch.undo()
    other = _tiny_model(1)
    assert np.abs(engine_model(other, probe, tmp_path)(probe) - other(probe).numpy()).max() < 1e-5
    assert len(list(tmp_path.glob("tiny-*.onnx"))) == 2  # both in use: both kept
    month_ago = time.time() - 31 * 86400
    os.utime(cached, (month_ago, month_ago))
    engine_model(_tiny_model(2), probe, tmp_path)
    assert not cached.exists() and len(list(tmp_path.glob("tiny-*.onnx"))) == 2  # unused for a month: removed


def test_a_model_tf2onnx_cannot_convert_is_named_with_the_way_out(monkeypatch, tmp_path):
    def fail(*args, **kwargs):
        raise ValueError("unsupported op")

    monkeypatch.setattr("tf2onnx.convert.from_function", fail)
    with pytest.raises(RuntimeError, match="tiny: tf2onnx could not convert it .*unsupported op"):
        to_onnx(_tiny_model())
    probe = np.zeros((1, 8, 8, 3), np.float32)
    with pytest.raises(RuntimeError, match="tiny: tf2onnx could not convert it .*features.engine: tensorflow"):
        engine_model(_tiny_model(), probe, tmp_path)


def test_a_damaged_cache_file_is_converted_again_with_a_warning(tmp_path, capsys):
    probe = np.random.default_rng(0).uniform(-1, 1, (2, 8, 8, 3)).astype(np.float32)
    engine_model(_tiny_model(), probe, tmp_path)
    [cached] = tmp_path.glob("*.onnx")
    cached.write_bytes(cached.read_bytes()[:100])
    model = _tiny_model()
    assert np.abs(engine_model(model, probe, tmp_path)(probe) - model(probe).numpy()).max() < 1e-5
    assert "making it again" in capsys.readouterr().err and cached.stat().st_size > 100


def test_a_conversion_that_disagrees_with_keras_is_an_error():
    probe = np.random.default_rng(0).uniform(-1, 1, (2, 8, 8, 3)).astype(np.float32)
    converted = EngineModel(to_onnx(_tiny_model(0)), "tiny")
    assert check_conversion(_tiny_model(0), converted, probe) < 1e-5
    with pytest.raises(RuntimeError, match="tiny: the ONNX Runtime conversion deviates from Keras"):
        check_conversion(_tiny_model(1), converted, probe)


class _MeanColour:
    """A stand-in extractor: each image's mean colour, with its top-left pixel, so that views and mirrors differ."""

    input_size = 14

    def __call__(self, x: np.ndarray) -> np.ndarray:
        assert x.shape[1:3] == (14, 14)
        return np.concatenate([x.mean(axis=(1, 2)), x[:, 0, 0]], axis=1)


def test_five_crops_average_the_centre_and_corner_views_and_their_mirrors():
    images = np.random.default_rng(0).integers(0, 256, (3, 16, 16, 3)).astype(np.uint8)  # crop_side(14, 5) == 16
    (features,) = engine_feature_batches(_MeanColour(), lambda x: x / 255, [images], tta=True, crops=5)
    x = images / 255
    views = [x[:, 1:15, 1:15], x[:, :14, :14], x[:, :14, 2:], x[:, 2:, :14], x[:, 2:, 2:]]
    views += [v[:, :, ::-1] for v in views]
    expected = np.mean([_MeanColour()(v) for v in views], axis=0)
    assert np.allclose(features, expected) and not np.allclose(features, _MeanColour()(views[0]))
