"""The extraction paths: parity with plain per-image loading, order, TTA, precision and multi-device; the engine's
low-priority decoders give the same batches as tf.data."""

import os
import subprocess
import sys
import textwrap
import threading

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from dogscats.data.images import load_resized
from dogscats.engine.extract import (
    check_precision,
    cpu_has_bf16,
    feature_batches,
    image_batches,
    image_dataset,
)
from dogscats.engine.workers import lowest_priority
from dogscats.networks.backbones import get_backbone, load_feature_extractor

from ..conftest import REPO, write_image

NAME = "efficientnet_lite0"


@pytest.fixture(scope="module")
def lite0():
    return get_backbone(NAME), load_feature_extractor(NAME, weights="imagenet")  # offline, real weights


@pytest.fixture
def photos(tmp_path):
    """Seven small images of different sizes and colours."""
    return [
        str(write_image(tmp_path / f"{i}.jpg", (30 * i, 200 - 20 * i, 90), size=(40 + 7 * i, 30 + 3 * i)))
        for i in range(7)
    ]


def _extract(model, backbone, files, batch_size=3, tta=False, resize="squash", decode="full"):
    dataset = image_dataset(files, [True] * len(files), backbone.input_size, resize, decode, batch_size)
    return list(feature_batches(model, backbone, dataset, tf.distribute.get_strategy(), tta))


def test_matches_plain_loading_in_order_batch_by_batch(lite0, photos):
    backbone, model = lite0
    batches = _extract(model, backbone, photos)
    assert [len(b) for b in batches] == [3, 3, 1]
    x = np.stack([load_resized(f, backbone.input_size) for f in photos]).astype(np.float32)
    reference = model.predict(backbone.preprocess(x), verbose=0)
    assert np.abs(np.concatenate(batches) - reference).max() < 1e-5


def test_unusable_images_become_blank(lite0, photos):
    backbone, model = lite0
    dataset = image_dataset(photos[:2], [True, False], backbone.input_size, "squash", "full", 2)
    images = next(iter(dataset)).numpy()
    assert images[0].any() and not images[1].any()


@pytest.mark.parametrize(("resize", "decode"), [("squash", "full"), ("crop", "reduced")])
def test_image_batches_equal_the_tf_data_batches(photos, resize, decode):
    usable = [True, True, False, True, True, True, True]
    expected = [b.numpy() for b in image_dataset(photos, usable, 64, resize, decode, 3)]
    batches = list(image_batches(photos, usable, 64, resize, decode, 3))
    assert [b.shape for b in batches] == [(3, 64, 64, 3), (3, 64, 64, 3), (1, 64, 64, 3)]
    assert all(b.dtype == np.uint8 for b in batches)
    assert all(np.array_equal(b, e) for b, e in zip(batches, expected, strict=True))
    assert not batches[0][2].any() and batches[0][1].any()  # the unusable image is black


def test_image_batches_name_a_file_that_no_longer_decodes(photos, tmp_path):
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"not a jpeg")
    with pytest.raises(Exception) as raised:
        list(image_batches([photos[0], str(broken)], [True, True], 32, "squash", "full", 2))
    assert f"while decoding {broken}" in raised.value.__notes__


def test_image_batches_stop_early_without_decoding_everything(photos):
    batches = image_batches(photos * 20, [True] * 140, 32, "squash", "full", 2)
    assert next(batches).shape == (2, 32, 32, 3)
    batches.close()  # a consumer that stops: the pending decodes are cancelled, nothing hangs


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="per-thread priority is Linux's")
def test_decoder_threads_run_at_the_lowest_priority():
    seen = []

    def probe():
        lowest_priority()
        seen.append(os.getpriority(os.PRIO_PROCESS, threading.get_native_id()))

    thread = threading.Thread(target=probe)
    thread.start()
    thread.join()
    assert seen == [19]
    assert os.getpriority(os.PRIO_PROCESS, threading.get_native_id()) != 19  # the caller's own priority is unchanged


@pytest.mark.slow  # 6-13 s with real weights; test_conversion checks the engine's mirror averaging
def test_tta_features_are_mirror_invariant(lite0, tmp_path):
    backbone, model = lite0
    pixels = np.random.default_rng(0).integers(0, 256, (224, 224, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(tmp_path / "a.png")
    Image.fromarray(pixels[:, ::-1]).save(tmp_path / "b.png")
    files = [str(tmp_path / "a.png"), str(tmp_path / "b.png")]
    plain, tta = _extract(model, backbone, files)[0], _extract(model, backbone, files, tta=True)[0]
    assert np.abs(plain[0] - plain[1]).max() > 1e-3  # the network itself is not mirror-symmetric
    assert np.abs(tta[0] - tta[1]).max() < 1e-5


def test_precision_is_checked():
    with pytest.raises(ValueError, match="unknown precision"):
        check_precision("float8")
    if not tf.config.list_physical_devices("GPU"):
        with pytest.raises(ValueError, match="needs a GPU"):
            check_precision("float16")
        if not cpu_has_bf16():
            with pytest.raises(ValueError, match="no AMX"):
                check_precision("bfloat16")


def test_int8_runs_everywhere_and_warns_where_the_cpu_has_no_int8_dot_products(monkeypatch, capsys):
    monkeypatch.setattr("dogscats.engine.extract.cpu_flags", lambda names: ["avx512_vnni"])
    check_precision("int8")
    assert capsys.readouterr().err == ""
    monkeypatch.setattr("dogscats.engine.extract.cpu_flags", lambda names: [])
    check_precision("int8")
    assert "int8 may be slower than float32 here" in capsys.readouterr().err


MIRRORED = textwrap.dedent(
    """
    import sys
    import numpy as np
    import tensorflow as tf
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
    from dogscats.networks.backbones import get_backbone
    from dogscats.engine.extract import build_extractor, feature_batches, image_dataset
    files = sys.argv[1:]
    backbone = get_backbone("efficientnet_lite0")
    mirrored = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    assert mirrored.num_replicas_in_sync == 2
    model = build_extractor(backbone.name, "imagenet", "float32", mirrored)
    dataset = image_dataset(files, [True] * len(files), backbone.input_size, "squash", "full", 4)
    out = np.concatenate(list(feature_batches(model, backbone, dataset, mirrored)))
    single = tf.distribute.get_strategy()
    ref = np.concatenate(list(feature_batches(model, backbone, dataset, single)))
    print("shape", out.shape, "maxdiff", float(np.abs(out - ref).max()))
    """
)


@pytest.mark.slow  # a fresh TensorFlow process with two logical CPUs: about 15 s
def test_mirrored_strategy_on_two_logical_cpus(photos):
    result = subprocess.run([sys.executable, "-c", MIRRORED, *photos], capture_output=True, text=True, cwd=REPO)
    assert result.returncode == 0, result.stderr[-3000:]
    words = result.stdout.split()
    assert words[words.index("shape") + 1 : words.index("maxdiff")] == ["(7,", "1280)"]
    assert float(words[-1]) < 1e-5
