"""Building the exported classifier: one Keras graph from images to the head's (and the fine-tuned models')
probabilities, every backbone and the flip TTA inside it, saved as Keras and converted to ONNX for the engine.

The graph takes one float32 image batch in [0, 255] per backbone, at that backbone's size (a seventh larger with
features.crops 5, for the corner views; named image_<backbone>),
and outputs p_head and p_finetuned (class probabilities, or the second class's for a sigmoid head); the blend,
temperature and clip are applied after it, in numpy, as predict does (dogscats.classifier)."""

from pathlib import Path
from typing import Any

import keras
import numpy as np

from dogscats.backbones import get_backbone, load_feature_extractor
from dogscats.determinism import set_seed
from dogscats.images import crop_offsets, crop_side


@keras.saving.register_keras_serializable(package="dogscats")
class BackbonePreprocess(keras.layers.Layer):
    """A backbone's own input scaling, by name, as a layer."""

    def __init__(self, backbone: str, **kwargs) -> None:
        super().__init__(**kwargs)
        self.backbone = backbone

    def call(self, x):
        """The preprocessed batch."""
        return get_backbone(self.backbone).preprocess(x)

    def get_config(self) -> dict:
        """The layer's config: the backbone's name."""
        return {**super().get_config(), "backbone": self.backbone}


@keras.saving.register_keras_serializable(package="dogscats")
class Mirror(keras.layers.Layer):
    """The batch's mirror images (flipped left to right), as the pipeline's TTA does."""

    def call(self, x):
        """The flipped batch."""
        return keras.ops.flip(x, axis=2)


@keras.saving.register_keras_serializable(package="dogscats")
class StackViews(keras.layers.Layer):
    """Batches of views, one after another in one batch: the network runs once on all, so the graph (and its ONNX
    conversion) holds one copy of it, not one per view."""

    def call(self, views):
        """The views' batches, concatenated along the batch axis."""
        return keras.ops.concatenate(views, axis=0)


@keras.saving.register_keras_serializable(package="dogscats")
class MeanOverViews(keras.layers.Layer):
    """The mean over views of outputs stacked view after view (as StackViews stacked their inputs)."""

    def __init__(self, views: int, **kwargs) -> None:
        super().__init__(**kwargs)
        self.views = views

    def call(self, x):
        """Per image, its views' mean output."""
        return keras.ops.mean(keras.ops.reshape(x, (self.views, -1, *x.shape[1:])), axis=0)

    def compute_output_shape(self, input_shape: tuple) -> tuple:
        """The shape of one view's outputs."""
        return input_shape

    def get_config(self) -> dict:
        """The layer's config: the number of views."""
        return {**super().get_config(), "views": self.views}


def averaged_over(model: keras.Model, views: list):
    """model's output averaged over the views of a batch, the model run once on them all."""
    return model(views[0]) if len(views) == 1 else MeanOverViews(len(views))(model(StackViews()(views)))


def crop(x, size: int, top: int, left: int):
    """The size x size view of a batch at (top, left)."""
    side = int(x.shape[1])
    return keras.layers.Cropping2D(((top, side - size - top), (left, side - size - left)))(x)


def averaged_over_views(model: keras.Model, x, size: int, tta: bool, crops: int):
    """model's output averaged over the views the features stage takes (dogscats.images.crop_offsets), each with its
    mirror image with tta."""
    views = [x] if crops == 1 else [crop(x, size, top, left) for top, left in crop_offsets(size, crops)]
    return averaged_over(model, views + [Mirror()(view) for view in views] if tta else views)


def classifier_graph(
    sizes: dict[str, int],
    features_cfg: dict,
    head: keras.Model,
    finetuned: list[keras.Model],
    finetuned_backbone: str,
    finetune_tta: bool,
) -> keras.Model:
    """Images (one input per backbone, at crop_side of its size) -> [p_head, p_finetuned]: each backbone's GAP
    features (averaged over features.crops views, each flip-averaged with features.tta), concatenated in order,
    through the head; the fine-tuned models' mean on their backbone's centre view (flip-averaged with
    predict.finetune_tta), or the head's again when there are none."""
    inputs, features, crops = {}, [], features_cfg["crops"]
    for name, size in sizes.items():
        side = crop_side(size, crops)
        inputs[name] = keras.Input((side, side, 3), name=f"image_{name}")
        x = BackbonePreprocess(name)(inputs[name])
        set_seed(0)  # as the features stage: with features.weights null, the same random weights
        extractor = load_feature_extractor(name, features_cfg["weights"], features_cfg["pooling"], size)
        features.append(averaged_over_views(extractor, x, size, features_cfg["tta"], crops))
    p_head = head(keras.layers.Concatenate()(features) if len(features) > 1 else features[0])
    p_finetuned = p_head
    if finetuned:
        x = BackbonePreprocess(finetuned_backbone)(inputs[finetuned_backbone])
        size = sizes[finetuned_backbone]
        if crops > 1:
            x = crop(x, size, *crop_offsets(size, crops)[0])  # the centre view, as the finetune stage sees photos
        # renamed: the folds' saved models share one name, which a Keras graph refuses
        folds = [keras.Model(m.input, m.output, name=f"finetuned_{i}") for i, m in enumerate(finetuned, start=1)]
        views = [x, Mirror()(x)] if finetune_tta else [x]
        outputs = [averaged_over(model, views) for model in folds]
        p_finetuned = keras.layers.Average()(outputs) if len(outputs) > 1 else outputs[0]
    return keras.Model(list(inputs.values()), [p_head, p_finetuned], name="dogscats_classifier")


def to_onnx(model: keras.Model, opset: int = 17) -> bytes:
    """The graph as ONNX bytes, its inputs named as the model's, with a free batch dimension."""
    import tensorflow as tf
    import tf2onnx

    spec = [tf.TensorSpec((None, *x.shape[1:]), tf.float32, name=x.name) for x in model.inputs]
    function = tf.function(lambda *xs: model(list(xs), training=False), input_signature=spec)
    proto, _ = tf2onnx.convert.from_function(function, input_signature=spec, opset=opset)
    return canonical_onnx(proto.SerializeToString())


def canonical_onnx(onnx_bytes: bytes) -> bytes:
    """The same ONNX graph, byte-reproducible: tf2onnx names folded constants and deduplicated weights from global
    counters, differently on each run, so every node, intermediate value and weight is renamed by its first use in
    node order (graph inputs and outputs keep their names), the weights are sorted by their new names, and the graph
    and its batch dimension get fixed names."""
    import onnx

    model = onnx.load_from_string(onnx_bytes)
    graph = model.graph
    _outputs_by_identity(graph)
    keep = {value.name for value in [*graph.input, *graph.output]}
    weights = {tensor.name: tensor for tensor in graph.initializer}
    names: dict[str, str] = {}

    def renamed(name: str, prefix: str) -> str:
        if not name or name in keep:
            return name
        return names.setdefault(name, f"{prefix}{sum(n.startswith(prefix) for n in names.values())}")

    for i, node in enumerate(graph.node):
        node.name, node.doc_string = f"node{i}", ""
        node.input[:] = [renamed(x, "weight" if x in weights else "value") for x in node.input]
        node.output[:] = [renamed(x, "value") for x in node.output]
    for tensor in graph.initializer:
        tensor.name = names.get(tensor.name, tensor.name)
    ordered = sorted(graph.initializer, key=lambda tensor: (len(tensor.name), tensor.name))
    graph.ClearField("initializer")
    graph.initializer.extend(ordered)
    graph.ClearField("value_info")
    for value in [*graph.input, *graph.output]:
        for dim in value.type.tensor_type.shape.dim:
            if dim.dim_param:
                dim.dim_param = "batch"  # the free batch dimension, numbered by tf2onnx
    graph.name = "dogscats_classifier"  # tf2onnx names it after the traced function, numbered
    graph.doc_string = model.doc_string = ""
    return model.SerializeToString(deterministic=True)


def _outputs_by_identity(graph: Any) -> None:
    """Identity nodes collapsed, then one Identity per graph output, at the end: where two outputs are equal (the
    fine-tuned probabilities are the head's), tf2onnx computes one and copies it to the other, choosing which anew on
    each run."""
    import onnx

    outputs = [value.name for value in graph.output]
    internal = {name: f"{name}/value" for name in outputs}
    source: dict[str, str] = {}  # an Identity's output -> the value it copies
    nodes = []
    for node in graph.node:
        node.input[:] = [internal.get(source.get(x, x), source.get(x, x)) for x in node.input]
        if node.op_type == "Identity":
            source[node.output[0]] = node.input[0]
            continue
        node.output[:] = [internal.get(x, x) for x in node.output]
        nodes.append(node)
    for name in outputs:
        copied = source.get(name, name)
        nodes.append(onnx.helper.make_node("Identity", [internal.get(copied, copied)], [name]))
    graph.ClearField("node")
    graph.node.extend(nodes)


def probe_inputs(sizes: dict[str, int], seed: int = 0) -> list[np.ndarray]:
    """Two noise images per backbone, float32 in [0, 255], to check a conversion on."""
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, (2, size, size, 3)).astype(np.float32) for size in sizes.values()]


def check_onnx(model: keras.Model, onnx_path: Path, inputs: list[np.ndarray], tolerance: float = 1e-5) -> float:
    """The largest difference between the Keras graph and its ONNX copy on the inputs; stops above tolerance."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    names = [x.name for x in session.get_inputs()]
    expected = [keras.ops.convert_to_numpy(p) for p in model(inputs, training=False)]
    got = session.run(None, dict(zip(names, inputs, strict=True)))
    diff = max(float(np.abs(e - g).max()) for e, g in zip(expected, got, strict=True))
    if diff > tolerance:
        raise RuntimeError(f"{onnx_path}: the ONNX copy differs from the Keras graph by {diff:.2e}")
    return diff
