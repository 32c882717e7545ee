import json
from pathlib import Path

import h5py
import keras
import numpy as np
import onnx
import onnxruntime as ort
import pandas as pd
import pytest
import yaml
from onnx import TensorProto, helper

from dogscats.base.scoring import as_matrix
from dogscats.data.feature_store import write_preprocessing
from dogscats.data.images import centre_view, crop_side, load_resized
from dogscats.engine.conversion import engine_feature_batches
from dogscats.models.calibration import final_p
from dogscats.models.export import canonical_onnx, check_preprocessing, classifier_graph
from dogscats.models.finetune import (
    Finetuned,
    build_top_classifier,
    clone_top,
    freeze_below_top_blocks,
    split_at_top_blocks,
)
from dogscats.models.head import build_head
from dogscats.networks.backbones import get_backbone, load_feature_extractor
from dogscats.networks.determinism import set_seed
from dogscats.product.classifier import Classifier
from dogscats.product.cli import main as cli
from dogscats.product.explain import explain
from stages.export import check_epochs

from ..conftest import EXPORT_ARGS, PREDICT_ARGS, PREPARE_ARGS, TRAIN_ARGS, default_params, finetune_args, run_stage


def _two_equal_outputs(
    computed: str, copied: str, counter: int, outputs: tuple[str, str] = ("p_head", "p_finetuned")
) -> bytes:
    """A graph whose two outputs are equal, as tf2onnx writes it: one computed, the other its copy, with a folded
    constant named from a global counter."""
    scale = helper.make_tensor(f"const_fold_opt__{counter}", TensorProto.FLOAT, [1], [2.0])
    nodes = [
        helper.make_node("Mul", ["x", scale.name], [f"mul_{counter}:0"], name=f"Mul_{counter}"),
        helper.make_node("Sigmoid", [f"mul_{counter}:0"], [computed], name=f"Sigmoid_{counter}"),
        helper.make_node("Identity", [computed], [copied], name=f"Identity_{counter}"),
    ]
    value = helper.make_tensor_value_info
    graph = helper.make_graph(
        nodes,
        f"tf2onnx_{counter}",
        [value("x", TensorProto.FLOAT, ["unk__1"])],
        [value(name, TensorProto.FLOAT, ["unk__1"]) for name in outputs],
        [scale],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]).SerializeToString()


def test_canonical_onnx_is_the_same_whichever_equal_output_tf2onnx_computed():
    first = canonical_onnx(_two_equal_outputs("p_head", "p_finetuned", 7))
    second = canonical_onnx(_two_equal_outputs("p_finetuned", "p_head", 12))
    assert first == second
    onnx.checker.check_model(onnx.load_from_string(first))
    x = np.array([-1.0, 0.0, 3.0], np.float32)
    p_head, p_finetuned = ort.InferenceSession(first).run(None, {"x": x})
    assert np.allclose(p_head, 1 / (1 + np.exp(-2 * x))) and np.array_equal(p_head, p_finetuned)


TF2ONNX_NAMES = ("Identity:0", "Identity_1:0")


def test_canonical_onnx_gives_the_outputs_the_names_the_classifier_reads():
    named = canonical_onnx(_two_equal_outputs(*TF2ONNX_NAMES, 3, TF2ONNX_NAMES), ("p_head", "p_finetuned"))
    session = ort.InferenceSession(named)
    assert [x.name for x in session.get_outputs()] == ["p_head", "p_finetuned"]
    x = np.array([-1.0, 0.0, 3.0], np.float32)
    assert np.allclose(session.run(["p_head"], {"x": x})[0], 1 / (1 + np.exp(-2 * x)))
    with pytest.raises(ValueError, match="the graph has 2 outputs, not 1"):
        canonical_onnx(_two_equal_outputs(*TF2ONNX_NAMES, 3, TF2ONNX_NAMES), ("p",))


class _Extractor:
    """A Keras feature extractor called as the engine's are."""

    def __init__(self, model: keras.Model) -> None:
        self.model, self.input_size = model, int(model.input.shape[1])

    def __call__(self, x: np.ndarray) -> np.ndarray:
        return self.model.predict(x, verbose=0)


def test_the_classifier_graph_averages_the_five_views_and_mirrors_as_the_features_stage_does():
    size, backbone = 64, get_backbone("small_cnn")
    set_seed(0)  # as classifier_graph does before building each extractor: the same random weights
    extractor = load_feature_extractor("small_cnn", None, "avg", size)
    head = keras.Sequential([keras.Input((int(extractor.output.shape[-1]),)), keras.layers.Dense(1, "sigmoid")])
    config = {"weights": None, "pooling": "avg", "tta": True, "crops": 5}
    graph = classifier_graph({"small_cnn": size}, config, head)
    side = crop_side(size, 5)
    assert tuple(graph.inputs[0].shape[1:]) == (side, side, 3)
    images = np.random.default_rng(0).integers(0, 256, (2, side, side, 3)).astype(np.uint8)
    (features,) = engine_feature_batches(_Extractor(extractor), backbone.preprocess, [images], tta=True, crops=5)
    p_head, _ = graph.predict(images.astype(np.float32), verbose=0)
    assert np.allclose(p_head, head.predict(features, verbose=0), atol=1e-5)
    centre_only = head.predict(extractor.predict(backbone.preprocess(centre_view(images, size) * 1.0), verbose=0))
    assert not np.allclose(p_head, centre_only, atol=1e-5)  # the views count


def _head(dim: int, seed: int) -> keras.Model:
    keras.utils.set_random_seed(seed)
    return build_head(dim, 2, 0, 0.5, "adam", 1e-3)  # functional, with a dropout, as the stages' heads


@pytest.mark.parametrize("fold_input", ["features", "trunk", "image"])
def test_the_finetuned_branch_is_the_finetune_stages_prediction(fold_input):
    """0 epochs: the fold heads' mean on the view-averaged features the head branch computes (as on the stored
    features); else the trunk on the centre view and its mirror, each fold's top on its outputs, averaged (with every
    block trained there is no trunk: the folds take the preprocessed views)."""
    size, backbone = 64, get_backbone("small_cnn")
    set_seed(0)
    extractor = load_feature_extractor("small_cnn", None, "avg", size)
    dim = int(extractor.output.shape[-1])
    config = {"weights": None, "pooling": "avg", "tta": True, "crops": 5}
    side = crop_side(size, 5)
    images = np.random.default_rng(0).integers(0, 256, (2, side, side, 3)).astype(np.uint8)
    description = {"backbone": "small_cnn", "folds": [2, 5], "fold_input": fold_input, "tta": True}
    if fold_input == "features":
        folds = [_head(dim, 1), _head(dim, 2)]
        tuned = Finetuned(description, None, folds)
        (features,) = engine_feature_batches(_Extractor(extractor), backbone.preprocess, [images], tta=True, crops=5)
        expected = np.mean([fold.predict(features, verbose=0) for fold in folds], axis=0)
    else:
        blocks = freeze_below_top_blocks(extractor, 1 if fold_input == "trunk" else 4)
        trunk, top = split_at_top_blocks(extractor, blocks)
        shape = tuple(trunk.output.shape[1:]) if trunk is not None else (size, size, 3)
        folds = [build_top_classifier(clone_top(top), _head(dim, seed), shape) for seed in (1, 2)]
        tuned = Finetuned(description, trunk, folds)
        centre = backbone.preprocess(centre_view(images, size).astype(np.float32))
        run_trunk = (lambda x: trunk.predict(x, verbose=0)) if trunk is not None else np.asarray
        maps = [run_trunk(centre), run_trunk(centre[:, :, ::-1])]
        expected = np.mean([(f.predict(maps[0], verbose=0) + f.predict(maps[1], verbose=0)) / 2 for f in folds], 0)
    graph = classifier_graph({"small_cnn": size}, config, _head(dim, 0), tuned)
    _, p_finetuned = graph.predict(images.astype(np.float32), verbose=0)
    assert np.allclose(p_finetuned, expected, atol=1e-5) and np.ptp(expected) > 1e-4


def _feature_file(path, backbone: str, **preprocessing) -> str:
    settings = {"weights": "imagenet", "pooling": "avg", "resize": "crop", "decode": "reduced", "tta": True, "crops": 1}
    settings["precision"] = "float32"
    with h5py.File(path, "w") as h5:
        write_preprocessing(h5, backbone, 96, {**settings, **preprocessing})
    return path


def test_the_export_reads_the_preprocessing_from_the_feature_files_and_refuses_files_that_disagree(tmp_path):
    lite2 = _feature_file(tmp_path / "a.h5", "efficientnet_lite2")
    lite0 = _feature_file(tmp_path / "b.h5", "efficientnet_lite0")
    sizes, shared = check_preprocessing([lite2, lite0], ["efficientnet_lite2", "efficientnet_lite0"])
    assert list(sizes) == ["efficientnet_lite2", "efficientnet_lite0"]  # the backbones' order, not alphabetical
    assert shared == {
        "resize": "crop",
        "decode": "reduced",
        "tta": True,
        "crops": 1,
        "weights": "imagenet",
        "pooling": "avg",
        "precision": "float32",
    }
    int8 = _feature_file(tmp_path / "e.h5", "efficientnet_lite0", precision="int8")
    with pytest.raises(ValueError, match=r"e.h5: features made with precision 'int8' \(not 'float32'\)"):
        check_preprocessing([lite2, int8], ["efficientnet_lite2", "efficientnet_lite0"])
    other = _feature_file(tmp_path / "c.h5", "efficientnet_lite0", crops=5, weights=None)
    with pytest.raises(ValueError, match=r"c.h5: features made with crops 5 \(not 1\), weights None"):
        check_preprocessing([lite2, other], ["efficientnet_lite2", "efficientnet_lite0"])
    with pytest.raises(ValueError, match="a.h5 holds efficientnet_lite2 features, not efficientnet_lite0's"):
        check_preprocessing([lite2], ["efficientnet_lite0"])
    half = _feature_file(tmp_path / "d.h5", "efficientnet_lite0", precision="bfloat16")
    with pytest.raises(ValueError, match="d.h5: features made in bfloat16; the exported classifier runs float32 or"):
        check_preprocessing([lite2, half], ["efficientnet_lite2", "efficientnet_lite0"])


def test_the_export_refuses_a_predict_epoch_other_than_the_saved_models():
    choices = {"head_epoch": 20, "epoch": 1}
    check_epochs(choices, 20, 1, "predict.json")
    with pytest.raises(ValueError, match="predict.json chose epoch 1, but the saved fine-tuned folds are at epoch 2"):
        check_epochs(choices, 20, 2, "predict.json")
    with pytest.raises(ValueError, match="chose head_epoch 20, but the saved heads are at epoch 10"):
        check_epochs(choices, 10, 1, "predict.json")


def _by_name(settings: dict, paths: list[Path]) -> tuple[np.ndarray, np.ndarray]:
    """The exported graph's (p_head, p_finetuned) for image files, each backbone's images fed to its input by name."""
    session = ort.InferenceSession("models/classifier/classifier.onnx", providers=["CPUExecutionProvider"])
    feeds = {
        f"image_{name}": np.stack([load_resized(p, side, settings["resize"], settings["decode"]) for p in paths])
        for name, side in settings["sizes"].items()
    }
    outputs = session.run(
        ["p_head", "p_finetuned"], {name: images.astype(np.float32) for name, images in feeds.items()}
    )
    return tuple(as_matrix(p[:, 0].astype(np.float64)) for p in outputs)


def _pipeline_matches_the_export(raw: Path) -> None:
    """The exported graph, fed by name, against the pipeline's test probabilities: each branch against its stage's
    table at predict's epochs, then blended, calibrated and clipped against data/predictions.csv; then classify."""
    settings = json.loads(Path("models/classifier/settings.json").read_text())
    paths = sorted((raw / "test").glob("*.jpg"))
    ids = [p.stem for p in paths]
    p_head, p_finetuned = _by_name(settings, paths)
    head = pd.read_csv("data/head_predictions.csv", dtype={"id": str}).query("split == 'test'")
    head = head[head.epoch == settings["head_epoch"]].set_index("id")
    np.testing.assert_allclose(p_head[:, 1], head.loc[ids, "p_dog"], atol=1e-5)
    tuned = pd.read_csv("data/finetune_predictions.csv", dtype={"id": str}).query("split == 'test'")
    tuned = tuned[tuned.epoch == settings["epoch"]].set_index("id")
    np.testing.assert_allclose(p_finetuned[:, 1], tuned.loc[ids, "p_dog_tta"], atol=1e-5)  # predict.finetune_tta
    assert np.abs(p_finetuned - p_head).max() > 1e-3  # the blend mixes two different models
    expected = pd.read_csv("data/predictions.csv", dtype={"id": str}).set_index("id").loc[ids, ["p_cat", "p_dog"]]
    s = settings
    p = final_p(p_head, p_finetuned, s["blend"], s["temperature"], s["clip_low"], s["clip_high"])
    np.testing.assert_allclose(p, expected, atol=1e-5)
    assert p[:, 1].std() > 0.01 and (np.abs(p[:, 1] - 0.5) < 0.49).mean() > 0.5  # real weights: the photos differ

    assert cli(["classify", str(raw / "test"), "--out", "classified.csv"]) == 0
    table = pd.read_csv("classified.csv").set_index(pd.read_csv("classified.csv").path.map(lambda q: Path(q).stem))
    np.testing.assert_allclose(table.loc[ids, ["p_cat", "p_dog"]], expected, atol=1e-5)
    maps = explain(Classifier.load("models/classifier"), paths)  # each backbone's map found, resized and summed
    assert {e.cam.shape for e in maps} == {(4, 4)} and all(np.isfinite(e.cam).all() for e in maps)  # 112 px: 4 x 4


@pytest.mark.slow  # the demo with two real backbones at small sizes, fine-tuned and exported twice: about 80 s
def test_the_exported_classifier_is_the_pipelines_prediction_for_two_backbones_five_crops_and_a_blend(
    tmp_path, monkeypatch
):
    monkeypatch.chdir(tmp_path)  # each stage in a process of its own, as DVC runs them: 4.3 GB in this one before
    params = default_params()
    params["data"]["raw"], params["submit"]["labels"] = "data/demo", None
    params["demo"].update(train_per_class=20, test_count=10)
    params["prepare"]["folds"] = 2
    params["backbones"] = ["efficientnet_lite2", "efficientnet_lite0"]  # not alphabetical
    params["features"].update(weights="imagenet", crops=5, batch_size=16)
    params["features"]["input_size"].update(efficientnet_lite2=112, efficientnet_lite0=96)
    params["train"].update(epochs=10, dropout=0.2)
    params["finetune"].update(backbone="efficientnet_lite2", epochs=1, head_epochs=5, batch_size=8)
    params["finetune"].update(learning_rate=0.001)
    params["predict"].update(blend=0.5, calibrate=True, clip=[0.005, 0.995])
    Path("params.yaml").write_text(yaml.safe_dump(params))
    run_stage("demo", "data/demo")  # the demo pipeline, small
    raw = Path("data/demo")
    run_stage("prepare", *PREPARE_ARGS)
    for name in params["backbones"]:
        run_stage("features", name, "data/split.csv", f"data/features/{name}.h5", f"metrics/features/{name}.json")
    run_stage("train", *TRAIN_ARGS)
    run_stage("finetune", *finetune_args("efficientnet_lite2"))
    run_stage("predict", *PREDICT_ARGS)
    run_stage("export", *EXPORT_ARGS)
    described = json.loads(Path("models/finetuned/finetuned.json").read_text())
    assert described["fold_input"] == "trunk" and described["epoch"] == 1  # the fine-tuned weights, not the start
    _pipeline_matches_the_export(raw)

    # 0 epochs: the starting heads on the stored (view-averaged) features, in the graph on the head's features
    params["finetune"]["epochs"] = 0
    Path("params.yaml").write_text(yaml.safe_dump(params))
    run_stage("finetune", *finetune_args("efficientnet_lite2"))
    run_stage("predict", *PREDICT_ARGS)
    run_stage("export", *EXPORT_ARGS)
    assert json.loads(Path("models/finetuned/finetuned.json").read_text())["fold_input"] == "features"
    _pipeline_matches_the_export(raw)


def test_canonical_onnx_is_the_same_whatever_order_tf2onnx_lists_independent_nodes_in():
    def graph(swapped: bool) -> bytes:
        nodes = [helper.make_node("Neg", ["x"], ["a"]), helper.make_node("Abs", ["x"], ["b"])]
        nodes = (nodes[::-1] if swapped else nodes) + [helper.make_node("Concat", ["a", "b"], ["y"], axis=0)]
        value = helper.make_tensor_value_info
        made = helper.make_graph(nodes, "g", [value("x", TensorProto.FLOAT, [2])], [value("y", TensorProto.FLOAT, [4])])
        return helper.make_model(made, opset_imports=[helper.make_opsetid("", 17)]).SerializeToString()

    assert graph(False) != graph(True) and canonical_onnx(graph(False)) == canonical_onnx(graph(True))
    x = np.array([-1.0, 2.0], np.float32)
    assert ort.InferenceSession(canonical_onnx(graph(True))).run(None, {"x": x})[0].tolist() == [1, -2, 1, 2]
