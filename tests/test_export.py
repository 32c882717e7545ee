import keras
import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper

from dogscats.backbones import get_backbone, load_feature_extractor
from dogscats.determinism import set_seed
from dogscats.engine import engine_feature_batches
from dogscats.export import canonical_onnx, classifier_graph
from dogscats.images import centre_view, crop_side


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
    graph = classifier_graph({"small_cnn": size}, config, head, [], "small_cnn", True)
    side = crop_side(size, 5)
    assert tuple(graph.inputs[0].shape[1:]) == (side, side, 3)
    images = np.random.default_rng(0).integers(0, 256, (2, side, side, 3)).astype(np.uint8)
    (features,) = engine_feature_batches(_Extractor(extractor), backbone.preprocess, [images], tta=True, crops=5)
    p_head, _ = graph.predict(images.astype(np.float32), verbose=0)
    assert np.allclose(p_head, head.predict(features, verbose=0), atol=1e-5)
    centre_only = head.predict(extractor.predict(backbone.preprocess(centre_view(images, size) * 1.0), verbose=0))
    assert not np.allclose(p_head, centre_only, atol=1e-5)  # the views count
