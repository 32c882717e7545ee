"""The worker processes: the per-batch extraction contract, order, determinism, errors and early stops, the W x T
setting. A tiny ONNX model with random weights (built without TensorFlow) stands in for a backbone."""

import sys
import time
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from dogscats.data.images import crop_side
from dogscats.engine.workers import (
    EngineModel,
    Extraction,
    auto_layout,
    batch_features,
    extract_photos,
    load_or_blank,
    open_session,
    ordered_map,
    parse_layout,
    worker_layout,
)
from dogscats.networks.preprocessing import BACKBONE_PREPROCESSING, preprocess

from ..conftest import write_image

SIZE = 16


def tiny_model(path: Path, size: int = SIZE, dim: int = 8, seed: int = 0) -> Path:
    """An ONNX model (N, size, size, 3) -> (N, dim): a random 1x1 convolution, ReLU, the spatial mean."""
    rng = np.random.default_rng(seed)
    weight = numpy_helper.from_array(rng.normal(0, 1, (dim, 3, 1, 1)).astype(np.float32), "w")
    nodes = [
        helper.make_node("Transpose", ["x"], ["nchw"], perm=[0, 3, 1, 2]),
        helper.make_node("Conv", ["nchw", "w"], ["conv"]),
        helper.make_node("Relu", ["conv"], ["relu"]),
        helper.make_node("ReduceMean", ["relu"], ["y"], axes=[2, 3], keepdims=0),
    ]
    graph = helper.make_graph(
        nodes,
        "tiny",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", size, size, 3])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", dim])],
        [weight],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    path.write_bytes(model.SerializeToString())
    return path


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> list[str]:
    """Ten small photos of different colours and shapes."""
    folder = tmp_path_factory.mktemp("photos")
    return [
        str(write_image(folder / f"{i}.jpg", (25 * i, 200 - 15 * i, 90), (30 + 3 * i, 24 + 5 * i))) for i in range(10)
    ]


@pytest.fixture(scope="module")
def extraction(tmp_path_factory) -> Extraction:
    """Five crops and their mirror images, Lite scaling, one thread."""
    model = tiny_model(tmp_path_factory.mktemp("model") / "tiny.onnx")
    return Extraction(str(model), crop_side(SIZE, 5), "crop", "full", True, 5, 1, "lite")


def in_process(extraction: Extraction, photos: list[str], usable: list[bool]) -> np.ndarray:
    """The features as the in-process path computes them: decoded one by one, then batch_features."""
    images = np.stack([load_or_blank(p, ok, extraction.side, extraction.resize, extraction.decode)
                       for p, ok in zip(photos, usable, strict=True)])  # fmt: skip
    session = EngineModel(Path(extraction.model).read_bytes(), "tiny")
    return batch_features(session, lambda x: preprocess(extraction.preprocessing, x), images, True, 5)


def pooled(extraction: Extraction, photos: list[str], usable: list[bool], batch: int, workers: int) -> list:
    """Feature batches from the worker pool."""
    chunks = [(photos[i : i + batch], usable[i : i + batch]) for i in range(0, len(photos), batch)]
    return list(ordered_map(open_session, extract_photos, extraction, chunks, workers))


def test_extract_photos_is_the_in_process_computation(extraction, photos):
    usable = [i != 3 for i in range(len(photos))]
    features = extract_photos(extraction, open_session(extraction), photos, usable)
    assert features.dtype == np.float32 and features.shape == (len(photos), 8)
    np.testing.assert_array_equal(features, in_process(extraction, photos, usable))
    blank = in_process(extraction, [photos[0]], [False])  # an unusable photo is a black square
    np.testing.assert_array_equal(features[3], blank[0])


def test_two_workers_keep_the_order_and_equal_one_and_reruns_are_byte_identical(extraction, photos):
    usable = [True] * len(photos)
    expected = in_process(extraction, photos, usable)
    first = pooled(extraction, photos, usable, batch=3, workers=2)
    assert [len(b) for b in first] == [3, 3, 3, 1]  # the batches, in manifest order
    np.testing.assert_allclose(np.concatenate(first), expected, rtol=0, atol=1e-6)
    again = pooled(extraction, photos, usable, batch=3, workers=2)
    assert np.concatenate(again).tobytes() == np.concatenate(first).tobytes()
    alone = pooled(extraction, photos, usable, batch=3, workers=1)
    assert np.concatenate(alone).tobytes() == np.concatenate(first).tobytes()


def test_a_bad_photo_in_a_worker_is_named_in_the_parent(extraction, photos, tmp_path):
    bad = tmp_path / "broken.jpg"
    bad.write_bytes(b"not a jpeg")
    files = [*photos[:4], str(bad), *photos[4:]]
    with pytest.raises(Exception) as caught:
        pooled(extraction, files, [True] * len(files), batch=2, workers=2)
    assert f"while decoding {bad}" in "\n".join(getattr(caught.value, "__notes__", [])) + str(caught.value)


def _sleep_then(config, state, item: int) -> int:
    """A worker task: wait a little, then return the item (to test order and early stops)."""
    time.sleep(0.05 * (item % 3))
    return item


def _imported(config, state, item: int) -> tuple[int, bool, bool]:
    """A worker task: the item, whether TensorFlow and Keras are imported in the worker."""
    return item, "tensorflow" in sys.modules, "keras" in sys.modules


def _setup(config):
    """A worker's state: nothing."""
    return None


def test_results_come_in_order_however_long_each_takes_and_an_early_stop_closes_the_pool():
    results = ordered_map(_setup, _sleep_then, "config", ((i,) for i in range(12)), workers=3)
    assert list(results) == list(range(12))
    seen, pulled = [], []

    def items():
        for i in range(10_000):
            pulled.append(i)
            yield (i,)

    results = ordered_map(_setup, _sleep_then, "config", items(), workers=2, ahead=4)
    start = time.perf_counter()
    for item in results:
        seen.append(item)
        if item == 2:
            assert len(pulled) <= 3 + 4  # bounded look-ahead: memory does not grow with the items
            break
    results.close()  # the pool shuts down: queued items are dropped, not computed
    assert seen == [0, 1, 2] and len(pulled) <= 3 + 4 and time.perf_counter() - start < 30


def test_a_worker_imports_neither_tensorflow_nor_keras():
    results = list(ordered_map(_setup, _imported, "config", [(0,), (1,)], workers=2))
    assert results == [(0, False, False), (1, False, False)]


def test_the_layout_setting():
    assert parse_layout("2x1") == (2, 1) and parse_layout("16x1") == (16, 1) and parse_layout("auto") is None
    for bad in ("0x1", "2x0", "2", "2*1", "x1", "auto2", ""):
        with pytest.raises(ValueError, match="WxT"):
            parse_layout(bad)
    assert worker_layout("3x2", cores=2) == (3, 2)
    # few cores: one session, ONNX Runtime's default threads (0)
    assert worker_layout("auto", cores=4, memory=2**40) == auto_layout(4) == (1, 0)
    assert auto_layout(2, memory=8 * 2**30) == (1, 0) and auto_layout(7) == (1, 0)
    assert auto_layout(16) == (16, 1) and auto_layout(8, memory=2**40) == (8, 1)  # many: a worker per core
    assert auto_layout(16, memory=6 * 2**30) == (4, 4)  # as many workers as the memory holds, the cores shared
    assert auto_layout(16, memory=2**20) == (1, 16)
    for cores in (1, 2, 3, 4, 16, 64):
        for memory in (None, 2**30, 4 * 2**30, 2**40):
            workers, threads = auto_layout(cores, memory)
            assert (workers, threads) == (1, 0) if cores < 8 else workers >= 1 and 1 <= threads <= cores // workers


@pytest.mark.parametrize("backbone", sorted(BACKBONE_PREPROCESSING))
def test_the_numpy_preprocessing_is_the_registrys_to_the_bit(backbone):
    from dogscats.networks.backbones import get_backbone

    x = np.random.default_rng(0).uniform(0, 255, (2, 5, 5, 3)).astype(np.float32)
    expected = np.asarray(get_backbone(backbone).preprocess(x.copy()), dtype=np.float32)
    assert preprocess(BACKBONE_PREPROCESSING[backbone], x).tobytes() == expected.tobytes()


def test_every_registered_backbone_has_a_preprocessing():
    from dogscats.base.backbone_sizes import NATIVE_SIZES

    assert set(BACKBONE_PREPROCESSING) == set(NATIVE_SIZES)


def test_an_unusable_model_file_is_an_error_naming_nothing_hidden(tmp_path, photos):
    broken = Extraction(str(tmp_path / "missing.onnx"), SIZE, "crop", "full", False, 1, 1, "lite")
    with pytest.raises(FileNotFoundError, match="missing.onnx"):
        list(ordered_map(open_session, extract_photos, broken, [(photos[:2], [True, True])], workers=2))


def test_the_tiny_model_is_valid(tmp_path):
    onnx.checker.check_model(onnx.load(tiny_model(tmp_path / "m.onnx")))


def test_workers_do_not_run_the_parents_main_module(tmp_path):
    """A stage script imports TensorFlow at its top: spawned workers must not run it again."""
    import subprocess

    from ..conftest import REPO

    script = tmp_path / "main.py"
    script.write_text(
        "import os, pathlib, sys\n"
        f"pathlib.Path({str(tmp_path)!r}, f'ran-{{os.getpid()}}').touch()\n"
        "if __name__ == '__main__':\n"
        "    from dogscats.engine.workers import ordered_map\n"
        "    from tests.engine.test_workers import _imported, _setup\n"
        "    print(list(ordered_map(_setup, _imported, 'c', [(0,), (1,), (2,)], workers=2)))\n"
    )
    out = subprocess.run([sys.executable, str(script)], cwd=REPO, capture_output=True, text=True, check=True,
                         env={**__import__("os").environ, "PYTHONPATH": str(REPO)})  # fmt: skip
    assert out.stdout.strip() == "[(0, False, False), (1, False, False), (2, False, False)]"
    assert len(list(tmp_path.glob("ran-*"))) == 1  # the parent alone


@pytest.mark.parametrize("mirror", [False, True])
def test_a_centre_view_extraction_is_the_finetune_stages_trunk_pass(extraction, photos, mirror):
    from dataclasses import replace

    from dogscats.data.images import centre_view

    usable = [True] * len(photos)
    centre = replace(extraction, tta=False, view="mirrored centre" if mirror else "centre")
    got = np.concatenate(pooled(centre, photos, usable, batch=4, workers=2))
    images = np.stack([load_or_blank(p, True, centre.side, centre.resize, centre.decode) for p in photos])
    x = preprocess("lite", centre_view(images, SIZE).astype(np.float32))[:, :, :: -1 if mirror else 1]
    session = EngineModel(Path(extraction.model).read_bytes(), "tiny")
    assert got.tobytes() == session(x).tobytes()  # as stages/finetune.py's maps_of computed it in one process
    with pytest.raises(ValueError, match="unknown view"):
        batch_features(session, lambda v: v, images, view="left")
