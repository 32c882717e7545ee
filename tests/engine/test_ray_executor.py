"""features.executor: ray: the same decode-and-extract as the local executor, run by Ray Data actors on a small Ray
started for the tests, its features equal to the local ones and in manifest order. No TensorFlow: the model is a tiny
ONNX network with random weights, built here."""

import dataclasses
import os
import re
import sys
import tempfile
from pathlib import Path

import h5py
import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from dogscats.engine import ray_executor
from dogscats.engine.ray_executor import (
    RAY_MISSING,
    RAY_REQUIREMENT,
    actor_count,
    batches_per_block,
    cut_rows,
    gpus_per_actor_for,
    import_ray,
    ray_feature_batches,
    ray_split_features,
)
from dogscats.engine.workers import Extraction, extract_photos, open_session

from ..conftest import PREPARE_ARGS, REPO, write_image

SIDE, DIM = 16, 8


pytestmark = pytest.mark.xdist_group("ray")  # one Ray at a time: these tests share a worker (pytest -n)


def tiny_onnx(path, seed: int = 0) -> str:
    """An ONNX network with random weights: NHWC float images (N, SIDE, SIDE, 3) -> Conv, ReLU, GAP -> (N, DIM)."""
    rng = np.random.default_rng(seed)
    weights = numpy_helper.from_array(rng.normal(0, 0.1, (DIM, 3, 3, 3)).astype(np.float32), "w")
    bias = numpy_helper.from_array(rng.normal(0, 0.1, DIM).astype(np.float32), "b")
    nodes = [
        helper.make_node("Transpose", ["x"], ["nchw"], perm=[0, 3, 1, 2]),
        helper.make_node("Conv", ["nchw", "w", "b"], ["conv"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["conv"], ["relu"]),
        helper.make_node("GlobalAveragePool", ["relu"], ["gap"]),
        helper.make_node("Flatten", ["gap"], ["features"]),
    ]
    graph = helper.make_graph(
        nodes,
        "tiny",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", SIDE, SIDE, 3])],
        [helper.make_tensor_value_info("features", TensorProto.FLOAT, ["n", DIM])],
        [weights, bias],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.save(model, path)
    return str(path)


@pytest.fixture
def photos(tmp_path) -> tuple[Extraction, list[str], list[bool]]:
    """An extraction through the tiny network, 11 distinct photos of varied sizes and one unusable (a blank)."""
    rng = np.random.default_rng(1)
    paths = [
        str(write_image(tmp_path / f"{n}.jpg", tuple(int(c) for c in rng.integers(0, 256, 3)), (20 + 3 * n, 30)))
        for n in range(11)
    ]
    usable = [n != 4 for n in range(11)]
    model = tiny_onnx(tmp_path / "tiny.onnx")
    extraction = Extraction(
        model=model, side=SIDE, resize="crop", decode="full", tta=True, crops=1, threads=1, preprocessing="lite"
    )
    return extraction, paths, usable


SMALL = {"num_cpus": 2, "include_dashboard": False, "logging_level": "ERROR"}  # the tests' Ray


@pytest.fixture(scope="module")
def small_ray():
    """A Ray on this machine with 2 CPUs and no dashboard, shut down after the module's tests."""
    ray = pytest.importorskip("ray")
    address = os.environ.pop("RAY_ADDRESS", None)  # never the developer's cluster
    ray.init(address="local", **SMALL)  # "local": a new Ray, never one an earlier test left in /tmp/ray
    yield ray
    ray.shutdown()
    if address is not None:
        os.environ["RAY_ADDRESS"] = address


def local_features(extraction: Extraction, paths: list[str], usable: list[bool], batch_size: int) -> np.ndarray:
    """The local executor's features: the same function, batch by batch, in this process."""
    session = open_session(extraction)
    batches = [
        extract_photos(extraction, session, paths[i : i + batch_size], usable[i : i + batch_size])
        for i in range(0, len(paths), batch_size)
    ]
    return np.concatenate(batches)


@pytest.mark.slow  # starts Ray
def test_ray_features_equal_the_local_ones_in_manifest_order(small_ray, photos):
    extraction, paths, usable = photos
    batches = list(ray_feature_batches(extraction, paths, usable, batch_size=3, actors=2))
    assert [len(b) for b in batches] == [3, 3, 3, 2]  # one block per batch, the last one short
    features = np.concatenate(batches)
    expected = local_features(extraction, paths, usable, 3)
    assert features.dtype == np.float32 and features.shape == (11, DIM)
    np.testing.assert_allclose(features, expected, rtol=0, atol=1e-6)
    assert len({row.tobytes() for row in expected}) == 11  # distinct rows: a swapped pair would show
    assert small_ray.is_initialized()  # a Ray it did not start is left running


@pytest.mark.slow  # starts Ray
def test_a_block_of_several_batches_gives_the_local_features(small_ray, photos):
    extraction, paths, usable = photos
    batches = list(ray_feature_batches(extraction, paths, usable, batch_size=1, actors=1))
    assert [len(b) for b in batches] == [2, 2, 2, 2, 2, 1]  # 11 batches, 2 a block: an actor gets 4 blocks or more
    np.testing.assert_allclose(np.concatenate(batches), local_features(extraction, paths, usable, 1), rtol=0, atol=1e-6)


@pytest.mark.parametrize(
    ("batches", "actors", "per_block"),
    [(782, 1, 8), (782, 16, 8), (782, 64, 3), (782, 400, 1), (3, 1, 1), (1, 1, 1)],
)
def test_blocks_hold_several_batches_while_every_actor_gets_several_blocks(batches, actors, per_block):
    assert batches_per_block(batches, actors) == per_block


@pytest.mark.slow  # starts Ray
def test_one_pipeline_gives_each_split_its_rows_batched_from_the_splits_start(small_ray, photos):
    extraction, paths, usable = photos
    splits = [(paths[:7], usable[:7]), (paths[7:], usable[7:]), ([], [])]
    per_split = [list(batches) for batches in ray_split_features(extraction, splits, batch_size=2)]
    assert [[len(b) for b in batches] for batches in per_split] == [[2, 2, 2, 1], [2, 2], []]
    expected = local_features(extraction, paths, usable, 2)
    np.testing.assert_allclose(np.concatenate([*per_split[0], *per_split[1]]), expected, rtol=0, atol=1e-6)


def test_rows_are_cut_into_parts_across_batches():
    batches = [np.arange(0, 4), np.arange(4, 6), np.arange(6, 11)]
    parts = [[b.tolist() for b in part] for part in cut_rows(batches, [3, 0, 5, 3])]
    assert parts == [[[0, 1, 2]], [], [[3], [4, 5], [6, 7]], [[8, 9, 10]]]


def test_a_stream_short_of_its_parts_says_so():
    part = next(cut_rows([np.arange(3)], [5]))
    with pytest.raises(RuntimeError, match="2 rows short"):
        list(part)


def test_an_empty_split_needs_no_ray(photos):
    extraction, _, _ = photos
    assert list(ray_feature_batches(extraction, [], [], batch_size=3)) == []


@pytest.mark.slow  # starts Ray
def test_a_photo_that_does_not_decode_is_named(small_ray, photos, tmp_path):
    extraction, paths, usable = photos
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"not a photo")
    with pytest.raises(Exception, match="broken.jpg"):
        list(ray_feature_batches(extraction, [*paths[:2], str(broken)], [True, True, True], batch_size=2, actors=1))
    # The failed pipeline's actor may outlive it in this driver (Ray Data lets go of it, leaving it to garbage
    # collection) and hold its CPU: a later test's actors would wait for it forever. A new Ray ends it.
    small_ray.shutdown()
    small_ray.init(address="local", **SMALL)


@pytest.mark.slow  # starts Ray
def test_an_actor_runs_the_model_it_is_shipped_and_writes_no_copy_of_it(small_ray, photos, tmp_path, monkeypatch):
    """Finding 11: an actor on a node without the model file wrote a copy to a temporary folder, never removed."""
    extraction, paths, usable = photos
    elsewhere = dataclasses.replace(extraction, model=str(tmp_path / "not-here" / "tiny.onnx"))
    temp = tmp_path / "temp"
    temp.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(temp))  # where mkdtemp and the like write in this process
    actor = ray_executor._ExtractorActor(elsewhere, Path(extraction.model).read_bytes(), False, 3)
    out = actor({"index": np.arange(len(paths)), "path": np.array(paths), "usable": np.array(usable)})
    np.testing.assert_allclose(out["features"], local_features(extraction, paths, usable, 3), rtol=0, atol=1e-6)
    assert list(temp.iterdir()) == [] and not Path(elsewhere.model).parent.exists()


@pytest.mark.parametrize(
    ("resources", "cpus", "gpus", "actors"),
    [
        ({"CPU": 2.0}, 1, 0, 2),
        ({"CPU": 2.0}, 2, 0, 1),
        ({"CPU": 48.0, "GPU": 4.0}, 4, 0, 12),
        ({"CPU": 48.0, "GPU": 4.0}, 4, 1, 4),
        ({"CPU": 1.0}, 4, 0, 1),
    ],
)
def test_the_actors_fill_the_cluster(resources, cpus, gpus, actors):
    assert actor_count(resources, cpus, gpus) == actors


@pytest.mark.parametrize(
    ("resources", "providers", "gpus"),
    [
        ({"CPU": 16.0, "GPU": 2.0}, ["CUDAExecutionProvider", "CPUExecutionProvider"], 1.0),
        ({"CPU": 16.0, "GPU": 2.0}, ["CPUExecutionProvider"], 0.0),  # onnxruntime, not onnxruntime-gpu
        ({"CPU": 16.0}, ["CUDAExecutionProvider", "CPUExecutionProvider"], 0.0),
    ],
)
def test_gpu_actors_where_the_cluster_and_onnxruntime_have_gpus(resources, providers, gpus):
    assert gpus_per_actor_for(resources, providers) == gpus


def test_without_ray_the_message_names_the_pip_command(monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray raises ImportError
    with pytest.raises(ImportError, match=re.escape(RAY_MISSING)):
        import_ray()
    assert f'pip install "{RAY_REQUIREMENT}"' in RAY_MISSING


def test_the_pip_command_installs_the_pinned_ray():
    assert RAY_REQUIREMENT in (REPO / "requirements.txt").read_text().splitlines()


@pytest.mark.slow
def test_the_features_stage_on_ray_writes_the_local_executors_file(kaggle_raw, in_project, small_ray):
    from stages import features, prepare  # TensorFlow: only here

    lite0 = {"backbones": ["efficientnet_lite0"], "finetune": {"backbone": "efficientnet_lite0"}}
    in_project(data={"raw": str(kaggle_raw)}, **lite0)
    prepare.main(*PREPARE_ARGS)
    features.main("efficientnet_lite0", "data/split.csv", "local.h5", "local.json")
    in_project(data={"raw": str(kaggle_raw)}, features={"executor": "ray"}, **lite0)
    features.main("efficientnet_lite0", "data/split.csv", "ray.h5", "ray.json")
    with h5py.File("local.h5") as local, h5py.File("ray.h5") as on_ray:
        assert {k: str(v) for k, v in local.attrs.items()} == {k: str(v) for k, v in on_ray.attrs.items()}
        for split in ("train", "test"):
            for key in ("ids", "labels", "usable"):
                assert local[split][key][:].tolist() == on_ray[split][key][:].tolist()
            np.testing.assert_allclose(on_ray[split]["features"][:], local[split]["features"][:], rtol=0, atol=1e-6)
    assert Path("local.json").read_text() == Path("ray.json").read_text()


def test_the_whole_package_travels_with_a_ray_job():
    (package,) = ray_executor.runtime_env()["py_modules"]
    assert Path(package) == REPO / "dogscats" and (Path(package) / "engine" / "workers.py").is_file()
