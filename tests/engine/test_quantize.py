"""int8 networks (dogscats.engine.quantize): the calibration sample, what stays float, the splice into the classifier,
and the pipeline in int8 end to end with the real Lite0 weights (the features stage's int8 network, its determinism, and
the exported classifier giving the pipeline's own int8 test predictions)."""

import json
from pathlib import Path

import h5py
import numpy as np
import onnx
import pandas as pd
import pytest
from onnx import TensorProto, helper

from dogscats.data.feature_store import int8_model_of
from dogscats.engine.quantize import (
    INT8_FLAGS,
    METHOD,
    backbone_match,
    calibration_sample,
    cpu_flags,
    int8_model,
    pooling_and_after,
    resolved_precision,
)
from dogscats.engine.workers import EngineModel, Extraction
from dogscats.product.classifier import Classifier

from ..conftest import write_image
from ..product.test_classifier import BACKBONE, export_project

pytestmark = pytest.mark.xdist_group("quantize")  # its module fixtures are built once: one worker (pytest -n)


def _manifest(cats: int, dogs: int, birds: int = 0) -> pd.DataFrame:
    """A manifest of labelled photos of each class, one unusable cat and two test photos."""
    rows = [(f"{label}.{n}", label, "train") for label, count in (("cat", cats), ("dog", dogs), ("bird", birds))
            for n in range(count)] + [("1", "", "test"), ("2", "", "test")]  # fmt: skip
    manifest = pd.DataFrame(rows, columns=["id", "label", "split"]).assign(problem="", md5="")
    manifest.loc[manifest.id == "cat.0", "problem"] = "truncated"
    return manifest


def test_the_calibration_sample_is_seeded_stratified_usable_and_in_id_order():
    manifest = _manifest(cats=200, dogs=20, birds=5)
    sample = calibration_sample(manifest, count=30, seed=0)
    assert len(sample) == 30 and sample.id.is_monotonic_increasing and (sample.split == "train").all()
    assert "cat.0" not in set(sample.id)  # unusable
    assert sample.label.value_counts().to_dict() == {"cat": 13, "dog": 12, "bird": 5}  # in turn until a class runs out
    assert sample.id.tolist() == calibration_sample(manifest, count=30, seed=0).id.tolist()  # seeded
    assert sample.id.tolist() != calibration_sample(manifest, count=30, seed=1).id.tolist()
    assert len(calibration_sample(_manifest(cats=3, dogs=2), count=64)) == 4  # all the usable ones when fewer


def test_auto_precision_is_int8_only_where_the_cpu_runs_the_networks_with_int8_dot_products():
    assert resolved_precision("auto", "auto", False, ["avx512_vnni"]) == "int8"
    assert resolved_precision("auto", "onnxruntime", False, ["amx_int8"]) == "int8"
    assert resolved_precision("auto", "auto", False, []) == "float32"  # no VNNI or AMX: int8 not measured faster
    assert resolved_precision("auto", "auto", True, ["avx512_vnni"]) == "float32"  # a GPU runs them
    assert resolved_precision("auto", "tensorflow", False, ["avx512_vnni"]) == "float32"
    assert resolved_precision("int8", "auto", False, []) == "int8"  # as set
    assert resolved_precision("bfloat16", "tensorflow", False, ["avx512_vnni"]) == "bfloat16"


def _graph(nodes: list, weights: list, name: str = "g") -> onnx.ModelProto:
    """A float graph x (1, 3, 4, 4) -> y."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 4, 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, None)
    return helper.make_model(helper.make_graph(nodes, name, [x], [y], weights))


def _weight(name: str, seed: int) -> onnx.TensorProto:
    """A 3x3 1x1 convolution's random weights."""
    return onnx.numpy_helper.from_array(np.random.default_rng(seed).normal(size=(3, 3, 1, 1)).astype(np.float32), name)


def test_the_pooling_and_everything_after_it_stay_float():
    nodes = [
        helper.make_node("Conv", ["x", "w"], ["c"], "conv"),
        helper.make_node("Relu", ["c"], ["r"], "relu"),
        helper.make_node("GlobalAveragePool", ["r"], ["g"], "pool"),
        helper.make_node("Flatten", ["g"], ["y"], "flatten"),
    ]
    assert pooling_and_after(_graph(nodes, [_weight("w", 0)])) == ["flatten", "pool"]
    no_pooling = nodes[:2] + [helper.make_node("Relu", ["r"], ["y"], "r2")]
    assert pooling_and_after(_graph(no_pooling, [_weight("w", 0)])) == []
    excitation = [  # a squeeze-and-excitation block inside the network: its pooling is not the features'
        helper.make_node("Conv", ["x", "w"], ["c"], "conv"),
        helper.make_node("GlobalAveragePool", ["c"], ["s"], "se_squeeze"),
        helper.make_node("Sigmoid", ["s"], ["e"], "se_gate"),
        helper.make_node("Mul", ["c", "e"], ["m"], "se_excite"),
        helper.make_node("Conv", ["m", "w"], ["c2"], "conv2"),
        helper.make_node("GlobalAveragePool", ["c2"], ["g"], "pool"),
        helper.make_node("Flatten", ["g"], ["y"], "flatten"),
    ]
    assert pooling_and_after(_graph(excitation, [_weight("w", 0)])) == ["flatten", "pool"]


def _tiny_network(path: Path) -> EngineModel:
    """A float network as the engine's: photos (N, 8, 8, 3) -> a 1x1 convolution, ReLU, average pooling -> (N, 4)."""
    nodes = [
        helper.make_node("Transpose", ["x"], ["t"], "nchw", perm=[0, 3, 1, 2]),
        helper.make_node("Conv", ["t", "w"], ["c"], "conv"),
        helper.make_node("Relu", ["c"], ["r"], "relu"),
        helper.make_node("GlobalAveragePool", ["r"], ["g"], "pool"),
        helper.make_node("Flatten", ["g"], ["y"], "flatten"),
    ]
    w = onnx.numpy_helper.from_array(np.random.default_rng(0).normal(size=(4, 3, 1, 1)).astype(np.float32), "w")
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 8, 8, 3])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4])
    graph = helper.make_graph(nodes, "tiny", [x], [y], [w])
    path.write_bytes(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]).SerializeToString())
    return EngineModel(path.read_bytes(), "tiny", 1, path)


def test_the_int8_network_is_cached_by_content_and_a_damaged_file_is_made_again(tmp_path, capsys):
    float_model = _tiny_network(tmp_path / "tiny.onnx")
    colours = [(200, 60, 40), (40, 60, 200), (90, 200, 90), (30, 30, 30)]
    paths = [str(write_image(tmp_path / "photos" / f"{n}.jpg", c, (16, 12))) for n, c in enumerate(colours)]
    extraction = Extraction(str(float_model.path), 8, "squash", "full", True, 1, 1, "lite")
    first, gap = int8_model(float_model, extraction, 8, ["a", "b", "c", "d"], paths)
    made = first.path.read_bytes()
    assert first.path.parent == tmp_path and first.path.name.startswith("tiny-int8-")
    assert {node.op_type for node in onnx.load(first.path).graph.node} >= {"QuantizeLinear", "DequantizeLinear"}
    assert 0 <= gap["median"] <= gap["max"] < 0.5  # the int8 features follow the float ones

    again, _ = int8_model(float_model, extraction, 8, ["a", "b", "c", "d"], paths)
    assert again.path == first.path and capsys.readouterr().err == ""  # from the cache
    other, _ = int8_model(float_model, extraction, 8, ["a", "b", "c", "e"], paths)
    assert other.path != first.path  # other calibration photos: another int8 network

    first.path.write_bytes(made[: len(made) // 2])  # damaged
    remade, _ = int8_model(float_model, extraction, 8, ["a", "b", "c", "d"], paths)
    assert "making it again" in capsys.readouterr().err and remade.path.read_bytes() == made  # and deterministic


def test_the_match_finds_the_engines_network_inside_a_larger_graph_and_refuses_other_weights():
    engine = _graph(
        [helper.make_node("Conv", ["x", "w"], ["c"], "conv"), helper.make_node("Relu", ["c"], ["y"], "relu")],
        [_weight("w", 0)],
    )
    classifier = _graph(
        [
            helper.make_node("Mul", ["x", "k"], ["m"], "scale"),  # preprocessing before the network
            helper.make_node("Conv", ["m", "w2"], ["c2"], "conv2"),
            helper.make_node("Relu", ["c2"], ["r2"], "relu2"),
            helper.make_node("Neg", ["r2"], ["y"], "after"),
        ],
        [_weight("w2", 0), onnx.numpy_helper.from_array(np.float32(2.0), "k")],
    )
    assert backbone_match(classifier, engine) == ("m", "r2", [1, 2])
    twice = onnx.ModelProto()
    twice.CopyFrom(classifier)
    twice.graph.node.insert(3, helper.make_node("Conv", ["r2", "w2"], ["c3"], "conv3"))  # a second copy after it
    twice.graph.node.insert(4, helper.make_node("Relu", ["c3"], ["r3"], "relu3"))
    twice.graph.node[5].input[0] = "r3"
    with pytest.raises(ValueError, match="holds 2 copies of the engine's network"):
        backbone_match(twice, engine)
    classifier.graph.initializer[0].CopyFrom(_weight("w2", 1))  # the same graph with other weights: not this network
    with pytest.raises(ValueError, match="holds no copies of the engine's network"):
        backbone_match(classifier, engine)


@pytest.fixture(scope="module")
def int8_project(tmp_path_factory):
    """The pipeline in int8 with the real Lite0 weights at 128 px, exported, with its own conversion cache."""
    project = tmp_path_factory.mktemp("int8")
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(project)
        patch.setenv("DOGSCATS_CACHE", str(project / "cache"))
        export_project(project, precision="int8")
    return project


@pytest.mark.slow  # the pipeline and its export with real weights, quantized: about 80 s
def test_the_int8_classifier_gives_the_pipelines_own_int8_predictions(int8_project, monkeypatch):
    from stages import features

    monkeypatch.chdir(int8_project)
    monkeypatch.setenv("DOGSCATS_CACHE", str(int8_project / "cache"))  # the float conversion the int8 one came from
    features_file = Path(f"data/features/{BACKBONE}.h5")
    with h5py.File(features_file) as h5:
        assert h5.attrs["precision"] == "int8" and json.loads(h5.attrs["int8_method"]) == METHOD
        calibration = h5.attrs["int8_calibration"].tolist()
        first = h5["train/features"][:]
    manifest = pd.read_csv("data/split.csv", dtype=str, keep_default_na=False)
    assert calibration == calibration_sample(manifest).id.tolist()
    found = json.loads(Path(f"metrics/features/{BACKBONE}.json").read_text())
    assert found["int8_deviation"]["median"] > 0 and found["int8_calibration"] == len(calibration)
    if cpu_flags(INT8_FLAGS):  # without int8 dot products ONNX Runtime's U8S8 saturates (docs/engine.md): 0.72 on AVX2
        assert found["int8_deviation"]["median"] < 0.3
    network_bytes = int8_model_of(features_file)
    network = onnx.load_from_string(network_bytes)
    assert {"QuantizeLinear", "DequantizeLinear"} <= {node.op_type for node in network.graph.node}

    expected = pd.read_csv("data/predictions.csv", dtype={"id": str}).set_index("id")
    paths = sorted((int8_project / "raw" / "test").glob("*.jpg"))
    model = Classifier.load("models/classifier")
    p, errors = model.predict(paths)
    assert errors == [""] * len(paths) and model.settings["precision"] == "int8"
    np.testing.assert_allclose(p, expected.loc[[q.stem for q in paths], ["p_cat", "p_dog"]], atol=1e-5)
    graph = onnx.load("models/classifier/classifier.onnx").graph
    assert sum(node.op_type == "QuantizeLinear" for node in graph.node) > 10  # the int8 network, not a float copy
    assert {o.name for o in graph.output} >= {"p_head", f"feature_map_{BACKBONE}"}  # the maps are kept

    for cached in (int8_project / "cache" / "onnx").glob("*-int8-*.onnx"):  # quantized again from nothing
        cached.unlink()
    features.main(BACKBONE, "data/split.csv", str(features_file), f"metrics/features/{BACKBONE}.json")
    with h5py.File(features_file) as h5:
        np.testing.assert_array_equal(h5["train/features"][:], first)  # deterministic
    assert int8_model_of(features_file) == network_bytes  # the same bytes
