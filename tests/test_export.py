import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper

from dogscats.export import canonical_onnx


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
