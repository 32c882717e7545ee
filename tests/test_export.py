import h5py
import keras
import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper

from dogscats.backbones import get_backbone, load_feature_extractor
from dogscats.determinism import set_seed
from dogscats.engine import engine_feature_batches
from dogscats.export import canonical_onnx, check_preprocessing, classifier_graph
from dogscats.feature_store import write_preprocessing
from dogscats.finetune import Finetuned, build_top_classifier, clone_top, freeze_below_top_blocks, split_at_top_blocks
from dogscats.head import build_head
from dogscats.images import centre_view, crop_side
from stages.export import check_epochs


def _two_equal_outputs(computed: str, copied: str, counter: int) -> bytes:
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
        [value("p_head", TensorProto.FLOAT, ["unk__1"]), value("p_finetuned", TensorProto.FLOAT, ["unk__1"])],
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


@pytest.mark.parametrize("fold_input", ["features", "trunk"])
def test_the_finetuned_branch_is_the_finetune_stages_prediction(fold_input):
    """0 epochs: the fold heads' mean on the view-averaged features the head branch computes (as on the stored
    features); else the trunk on the centre view and its mirror, each fold's top on its outputs, averaged."""
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
        trunk, top = split_at_top_blocks(extractor, freeze_below_top_blocks(extractor, 1))
        folds = [
            build_top_classifier(clone_top(top), _head(dim, seed), tuple(trunk.output.shape[1:])) for seed in (1, 2)
        ]
        tuned = Finetuned(description, trunk, folds)
        centre = backbone.preprocess(centre_view(images, size).astype(np.float32))
        maps = [trunk.predict(centre, verbose=0), trunk.predict(centre[:, :, ::-1], verbose=0)]
        expected = np.mean([(f.predict(maps[0], verbose=0) + f.predict(maps[1], verbose=0)) / 2 for f in folds], 0)
    graph = classifier_graph({"small_cnn": size}, config, _head(dim, 0), tuned)
    _, p_finetuned = graph.predict(images.astype(np.float32), verbose=0)
    assert np.allclose(p_finetuned, expected, atol=1e-5) and np.ptp(expected) > 1e-4


def _feature_file(path, backbone: str, **preprocessing) -> str:
    settings = {"weights": "imagenet", "pooling": "avg", "resize": "crop", "decode": "reduced", "tta": True, "crops": 1}
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
    }
    other = _feature_file(tmp_path / "c.h5", "efficientnet_lite0", crops=5, weights=None)
    with pytest.raises(ValueError, match=r"c.h5: features made with crops 5 \(not 1\), weights None"):
        check_preprocessing([lite2, other], ["efficientnet_lite2", "efficientnet_lite0"])
    with pytest.raises(ValueError, match="a.h5 holds efficientnet_lite2 features, not efficientnet_lite0's"):
        check_preprocessing([lite2], ["efficientnet_lite0"])


def test_the_export_refuses_a_predict_epoch_other_than_the_saved_models():
    choices = {"head_epoch": 20, "epoch": 1}
    check_epochs(choices, 20, 1, "predict.json")
    with pytest.raises(ValueError, match="predict.json chose epoch 1, but the saved fine-tuned folds are at epoch 2"):
        check_epochs(choices, 20, 2, "predict.json")
    with pytest.raises(ValueError, match="chose head_epoch 20, but the saved heads are at epoch 10"):
        check_epochs(choices, 10, 1, "predict.json")
