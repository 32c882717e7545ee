"""Building the exported classifier: one Keras graph from images to the head's (and the fine-tuned models')
probabilities, every backbone and the flip TTA inside it, saved as Keras and converted to ONNX for the engine.

The graph takes one float32 image batch in [0, 255] per backbone, at that backbone's size (a seventh larger with
features.crops 5, for the corner views; named image_<backbone>),
and outputs p_head and p_finetuned (class probabilities, or the second class's for a sigmoid head); the blend,
temperature and clip are applied after it, in numpy, as predict does (dogscats.product.classifier)."""

from pathlib import Path
from typing import Any

import keras
import numpy as np

from dogscats.data.classifier_files import FEATURE_MAP_PREFIX, INPUT_PREFIX, OUTPUTS
from dogscats.data.feature_store import int8_model_of, preprocessing_of
from dogscats.data.images import crop_side, view_slices
from dogscats.engine.conversion import engine_model, probe_images
from dogscats.engine.conversion import to_onnx as engine_to_onnx
from dogscats.engine.quantize import with_int8_backbone
from dogscats.engine.workers import EngineModel, batch_features
from dogscats.models.finetune import Finetuned
from dogscats.networks.backbones import get_backbone, load_feature_extractor
from dogscats.networks.determinism import set_seed
from dogscats.networks.preprocessing import BACKBONE_PREPROCESSING, PREPROCESSING

SHARED = ("resize", "decode", "tta", "crops", "weights", "pooling", "precision")  # one policy for every backbone


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
class StackedViews(keras.layers.Layer):
    """The views of a batch (dogscats.data.images.view_slices) one after another in one batch: the network runs once on
    all, so the graph (and its ONNX conversion) holds one copy of it, not one per view."""

    def __init__(self, size: int, crops: int, tta: bool, centre_only: bool = False, **kwargs) -> None:
        super().__init__(**kwargs)
        self.size, self.crops, self.tta, self.centre_only = size, crops, tta, centre_only

    def views(self) -> int:
        """How many views each image gives."""
        return len(view_slices(self.size, self.crops, self.tta, self.centre_only))

    def call(self, x):
        """The views' batches, concatenated along the batch axis."""
        views = [
            x[:, rows, columns] for rows, columns in view_slices(self.size, self.crops, self.tta, self.centre_only)
        ]
        return views[0] if len(views) == 1 else keras.ops.concatenate(views, axis=0)

    def compute_output_shape(self, input_shape: tuple) -> tuple:
        """A view's shape, the batch dimension free."""
        return (None, self.size, self.size, input_shape[-1])

    def get_config(self) -> dict:
        """The layer's config: the view side, the crops, tta and centre_only."""
        config = {"size": self.size, "crops": self.crops, "tta": self.tta, "centre_only": self.centre_only}
        return {**super().get_config(), **config}


@keras.saving.register_keras_serializable(package="dogscats")
class MeanOverViews(keras.layers.Layer):
    """The mean over views of outputs stacked view after view (as StackedViews stacked their inputs)."""

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


def averaged_over_views(models: list[keras.Model], x, views: StackedViews) -> list:
    """Each model's output averaged over the views of a batch, the views stacked once and each model run once on
    them all."""
    return view_means(models, views(x), views.views())


def view_means(models: list[keras.Model], stacked, count: int) -> list:
    """Each model's output on `count` views stacked view after view, averaged over the views."""
    return [model(stacked) if count == 1 else MeanOverViews(count)(model(stacked)) for model in models]


def mean(outputs: list):
    """The mean of the outputs (the fold models')."""
    return keras.layers.Average()(outputs) if len(outputs) > 1 else outputs[0]


def renamed(model: keras.Model, name: str) -> keras.Model:
    """The model under another name: the folds' saved models share one, which a Keras graph refuses."""
    return keras.Model(model.input, model.output, name=name)


def classifier_graph(
    sizes: dict[str, int], preprocessing: dict, head: keras.Model, finetuned: Finetuned | None = None
) -> keras.Model:
    """Images (one input per backbone, at crop_side of its size) -> [p_head, p_finetuned]: each backbone's features
    (preprocessing's weights and pooling; averaged over its crops views, each flip-averaged with its tta),
    concatenated in order, through the head; and the fine-tuned models' mean, as the finetune stage predicts the test
    photos, or the head's again without them."""
    inputs, preprocessed, features, crops = {}, {}, {}, preprocessing["crops"]
    for name, size in sizes.items():
        side = crop_side(size, crops)
        inputs[name] = keras.Input((side, side, 3), name=f"image_{name}")
        preprocessed[name] = BackbonePreprocess(name)(inputs[name])
        set_seed(0)  # as the features stage: with features.weights null, the same random weights
        extractor = load_feature_extractor(name, preprocessing["weights"], preprocessing["pooling"], size)
        views = StackedViews(size, crops, preprocessing["tta"])
        (features[name],) = averaged_over_views([extractor], preprocessed[name], views)
    p_head = head(keras.layers.Concatenate()(list(features.values())) if len(features) > 1 else features[name])
    p_finetuned = p_head if finetuned is None else finetuned_branch(finetuned, sizes, crops, preprocessed, features)
    return keras.Model(list(inputs.values()), [p_head, p_finetuned], name="dogscats_classifier")


def finetuned_branch(finetuned: Finetuned, sizes: dict[str, int], crops: int, preprocessed: dict, features: dict):
    """The fine-tuned probabilities, the folds' mean: with 0 epochs, the starting heads on the backbone's features
    the graph computes for the head (as stored); else the trunk once on the preprocessed centre view (and its mirror
    with the description's tta), each fold's model on its outputs, averaged over the views."""
    description = finetuned.description
    name = description["backbone"]
    folds = [
        renamed(model, f"finetuned_{fold}") for fold, model in zip(description["folds"], finetuned.folds, strict=True)
    ]
    if description["fold_input"] == "features":
        return mean([fold(features[name]) for fold in folds])
    views = StackedViews(sizes[name], crops, description["tta"], centre_only=True)
    maps = views(preprocessed[name])
    if finetuned.trunk is not None:
        maps = renamed(finetuned.trunk, f"{name}_trunk")(maps)  # once, for every fold
    return mean(view_means(folds, maps, views.views()))


def check_preprocessing(files: list[Path], backbones: list[str]) -> tuple[dict[str, int], dict]:
    """Each backbone's input size and the preprocessing its feature file records, which every file must share
    (resize, decode, tta, crops, weights, pooling); a file of another backbone, or one that disagrees, stops the
    export naming both."""
    recorded = [preprocessing_of(path) for path in files]
    for path, name, found in zip(files, backbones, recorded, strict=True):
        if found["backbone"] != name:
            raise ValueError(f"{path} holds {found['backbone']} features, not {name}'s; rerun its features stage")
        if found["precision"] not in ("float32", "int8"):  # the graph runs float32, or the features' int8 networks
            raise ValueError(
                f"{path}: features made in {found['precision']}; the exported classifier runs float32 or int8 and"
                " cannot reproduce them: export from features.precision: float32 or int8"
            )
    for path, found in zip(files[1:], recorded[1:], strict=True):
        differ = [
            f"{key} {found[key]!r} (not {recorded[0][key]!r})" for key in SHARED if found[key] != recorded[0][key]
        ]
        if differ:
            raise ValueError(f"{path}: features made with {', '.join(differ)} of {files[0]}; rerun the features stages")
    sizes = {name: int(found["input_size"]) for name, found in zip(backbones, recorded, strict=True)}
    return sizes, {key: recorded[0][key] for key in SHARED}


def check_finetuned(description: dict, preprocessing: dict, sizes: dict[str, int], finetuned_dir: Path | str) -> None:
    """The fine-tuned models must be of one of the backbones and made from the features the export reads."""
    name = description["backbone"]
    if name not in sizes:
        raise ValueError(f"{finetuned_dir} holds {name} fine-tuned models, not one of backbones {list(sizes)}")
    made = description["preprocessing"]
    now = {**preprocessing, "backbone": name, "input_size": sizes[name]}
    differ = [f"{key} {made.get(key)!r} (now {now[key]!r})" for key in now if made.get(key) != now[key]]
    if differ:
        raise ValueError(f"{finetuned_dir}: fine-tuned on features made with {', '.join(differ)}; rerun finetune")


def to_onnx(model: keras.Model, int8: dict[str, tuple[bytes, bytes]] | None = None) -> bytes:
    """The graph as ONNX bytes, its inputs named as the model's, its outputs p_head and p_finetuned, with a free batch
    dimension, byte-reproducible; each backbone named in int8 (its float engine model's bytes, and its int8 network's
    from its feature file) run by its int8 network (quantize.with_int8_backbone); and each backbone's last feature
    map as an extra output (with_feature_maps)."""
    graph = canonical_onnx(engine_to_onnx(model), OUTPUTS)
    for name, (float_bytes, int8_bytes) in (int8 or {}).items():
        graph = with_int8_backbone(graph, float_bytes, int8_bytes, f"int8_{name}/")
    return with_feature_maps(graph)


def with_feature_maps(onnx_bytes: bytes) -> bytes:
    """The graph with one more output per backbone, feature_map_<backbone> (views x batch, h, w, C): the input of
    the global average pooling that feeds p_head (the first one met walking back from it), transposed to NHWC where
    tf2onnx pools NCHW. An output no caller fetches costs nothing: ONNX Runtime runs only what the fetched outputs
    need. A graph without such pooling (features.pooling max or flatten) is returned unchanged."""
    import onnx

    model = onnx.load_from_string(onnx_bytes)
    graph = model.graph
    producer = {name: node for node in graph.node for name in node.output}
    inputs = {value.name for value in graph.input}
    pools, stack, seen = [], [OUTPUTS[0]], set()
    while stack:
        node = producer.get(stack.pop())
        if node is None or id(node) in seen:
            continue
        seen.add(id(node))
        layout = _pooled_layout(node, graph)
        if layout:
            pools.append((node.input[0], layout))
        else:
            stack += list(node.input)
    found = {}
    for value, layout in pools:
        sources = _graph_inputs_of(value, producer, inputs)
        if len(sources) != 1 or not sources[0].startswith(INPUT_PREFIX):
            raise ValueError(f"the pooled feature map {value} comes from inputs {sources}, not one image_<backbone>")
        found[sources[0][len(INPUT_PREFIX) :]] = (value, layout)
    for value in graph.input:  # in the graph's input order: the same bytes on every run
        name = value.name[len(INPUT_PREFIX) :]
        if name not in found:
            continue
        source, layout = found[name]
        output = FEATURE_MAP_PREFIX + name
        index = len(graph.node)
        if layout == "NCHW":
            graph.node.append(onnx.helper.make_node("Transpose", [source], [output], f"node{index}", perm=[0, 2, 3, 1]))
        else:
            graph.node.append(onnx.helper.make_node("Identity", [source], [output], f"node{index}"))
        shape = ["batch", None, None, None]
        graph.output.append(onnx.helper.make_tensor_value_info(output, onnx.TensorProto.FLOAT, shape))
    return model.SerializeToString(deterministic=True)


def _pooled_layout(node: Any, graph: Any) -> str:
    """NCHW or NHWC when the node averages a 4-D map over its spatial axes (GlobalAveragePool, or ReduceMean over
    axes 2, 3 or 1, 2), else ""."""
    if node.op_type == "GlobalAveragePool":
        return "NCHW"
    if node.op_type != "ReduceMean":
        return ""
    import onnx

    axes = [list(onnx.helper.get_attribute_value(a)) for a in node.attribute if a.name == "axes"]
    if not axes and len(node.input) > 1:  # opset 18 on: the axes are an input
        weights = {tensor.name: tensor for tensor in graph.initializer}
        if node.input[1] in weights:
            axes = [onnx.numpy_helper.to_array(weights[node.input[1]]).tolist()]
    return {(2, 3): "NCHW", (1, 2): "NHWC"}.get(tuple(sorted(axes[0])) if axes else (), "")


def _graph_inputs_of(value: str, producer: dict, inputs: set[str]) -> list[str]:
    """The graph inputs a value is computed from, sorted."""
    found, stack, seen = set(), [value], set()
    while stack:
        name = stack.pop()
        if name in seen:
            continue
        seen.add(name)
        if name in inputs:
            found.add(name)
        elif name in producer:
            stack += list(producer[name].input)
    return sorted(found)


def cam_settings(head: keras.Model, sizes: dict[str, int], preprocessing: dict) -> dict:
    """cam.json (dogscats.product.explain): the head's Dense weights (D, U) and bias, the backbones' view sides (in
    order), crops and tta; the fold heads' mean gives the mean of their weights (the map of their mean logit). Empty
    when the head is not GAP -> Dense (a hidden layer, or pooling other than avg): no exact map exists."""
    heads = [layer for layer in head.layers if isinstance(layer, keras.Model)] or [head]
    dense = [[layer for layer in model.layers if isinstance(layer, keras.layers.Dense)] for model in heads]
    if preprocessing["pooling"] != "avg" or any(len(layers) != 1 for layers in dense):
        return {}
    kernels = [keras.ops.convert_to_numpy(layers[0].kernel) for layers in dense]
    biases = [keras.ops.convert_to_numpy(layers[0].bias) for layers in dense]
    return {
        "weights": np.mean(kernels, axis=0).astype(np.float32).tolist(),
        "bias": np.mean(biases, axis=0).astype(np.float32).tolist(),
        "view_sizes": sizes,
        "crops": preprocessing["crops"],
        "tta": preprocessing["tta"],
    }


def canonical_onnx(onnx_bytes: bytes, output_names: tuple[str, ...] = ()) -> bytes:
    """The same ONNX graph, byte-reproducible: tf2onnx names folded constants and deduplicated weights from global
    counters, differently on each run, and lists independent nodes (the views' slices) in any order; so the nodes are
    put in an order of the graph's own (_in_canonical_order), every node, intermediate value and weight is renamed by
    its first use in node order (graph inputs and outputs keep their names), the weights are sorted by their new
    names, and the graph and its batch dimension get fixed names; output_names, if given, rename the outputs (tf2onnx
    calls them Identity:0, ...)."""
    import onnx

    model = onnx.load_from_string(onnx_bytes)
    graph = model.graph
    _outputs_by_identity(graph, output_names)
    _in_canonical_order(graph)
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


def _in_canonical_order(graph: Any) -> None:
    """The nodes in the order of a depth-first walk from the graph's outputs, each node after the producers of its
    inputs (in input order): an order that depends on the graph alone; nodes no output needs keep theirs, last."""
    nodes = list(graph.node)
    producer = {name: i for i, node in enumerate(nodes) for name in node.output}
    order, seen = [], set()
    stack = [(producer[value.name], False) for value in reversed(graph.output) if value.name in producer]
    while stack:
        i, expanded = stack.pop()
        if expanded:
            order.append(i)
        elif i not in seen:
            seen.add(i)
            stack.append((i, True))
            stack += [(producer[x], False) for x in reversed(nodes[i].input) if producer.get(x, i) not in seen]
    order += [i for i in range(len(nodes)) if i not in seen]
    graph.ClearField("node")
    graph.node.extend([nodes[i] for i in order])


def _outputs_by_identity(graph: Any, output_names: tuple[str, ...] = ()) -> None:
    """Identity nodes collapsed, then one Identity per graph output, at the end: where two outputs are equal (the
    fine-tuned probabilities are the head's), tf2onnx computes one and copies it to the other, choosing which anew on
    each run. The outputs take output_names when given."""
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
    final = list(output_names) or outputs
    if len(final) != len(outputs):
        raise ValueError(f"the graph has {len(outputs)} outputs, not {len(final)} ({', '.join(final)})")
    for name, value in zip(outputs, graph.output, strict=True):
        copied = source.get(name, name)
        value.name = final[outputs.index(name)]
        nodes.append(onnx.helper.make_node("Identity", [internal.get(copied, copied)], [value.name]))
    graph.ClearField("node")
    graph.node.extend(nodes)


def probe_inputs(sizes: dict[str, int], seed: int = 0) -> list[np.ndarray]:
    """Two noise images per backbone, float32 in [0, 255], to check a conversion on."""
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, (2, size, size, 3)).astype(np.float32) for size in sizes.values()]


def int8_networks(files: list[Path], sizes: dict[str, int], preprocessing: dict) -> dict[str, tuple[bytes, bytes]]:
    """Per backbone, for features made in int8: its float engine model's bytes (converted from Keras as the features
    stage converts it, from the engine's cache) and its int8 network's, from its feature file; {} for float32."""
    if preprocessing["precision"] != "int8":
        return {}
    found = {}
    for path, (name, size) in zip(files, sizes.items(), strict=True):
        set_seed(0)  # as the features stage: with features.weights null, the same random weights
        model = load_feature_extractor(name, preprocessing["weights"], preprocessing["pooling"], size)
        probe = get_backbone(name).preprocess(probe_images(size).astype(np.float32))
        found[name] = (engine_model(model, probe).path.read_bytes(), int8_model_of(path))
    return found


def check_int8(
    head: keras.Model, int8: dict[str, tuple[bytes, bytes]], onnx_path: Path, inputs: list[np.ndarray],
    preprocessing: dict, tolerance: float = 1e-5,
) -> float:  # fmt: skip
    """The largest difference between the classifier's p_head and the head on the features the int8 networks give
    the inputs as the features stage computes them (views averaged, mirrors with tta); stops above tolerance."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    features = []
    for (name, (_, int8_bytes)), images in zip(int8.items(), inputs, strict=True):
        preprocess = PREPROCESSING[BACKBONE_PREPROCESSING[name]]
        engine = EngineModel(int8_bytes, name)
        features.append(batch_features(engine, preprocess, images, preprocessing["tta"], preprocessing["crops"]))
    expected = keras.ops.convert_to_numpy(head(np.concatenate(features, axis=1), training=False))
    got = session.run([OUTPUTS[0]], {INPUT_PREFIX + name: x for name, x in zip(int8, inputs, strict=True)})[0]
    diff = float(np.abs(expected - got).max())
    if diff > tolerance:
        raise RuntimeError(f"{onnx_path}: p_head differs from the head on the int8 networks' features by {diff:.2e}")
    return diff


def check_onnx(model: keras.Model, onnx_path: Path, inputs: list[np.ndarray], tolerance: float = 1e-5) -> float:
    """The largest difference between the Keras graph and its ONNX copy on the inputs; stops above tolerance."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    feeds = {x.name: batch for x, batch in zip(model.inputs, inputs, strict=True)}  # by name, as the classifier
    expected = [keras.ops.convert_to_numpy(p) for p in model(inputs, training=False)]
    got = session.run(list(OUTPUTS), feeds)
    diff = max(float(np.abs(e - g).max()) for e, g in zip(expected, got, strict=True))
    if diff > tolerance:
        raise RuntimeError(f"{onnx_path}: the ONNX copy differs from the Keras graph by {diff:.2e}")
    return diff
