"""int8 networks: a frozen float32 ONNX extractor quantized statically by ONNX Runtime, for CPUs with int8 dot
products (AVX-512 VNNI, AVX-VNNI, AMX).

The float32 model stays the source: it is converted from Keras and checked against it (dogscats.engine.conversion), and
the int8 model is made from it here: QDQ format (QuantizeLinear/DequantizeLinear pairs that ONNX Runtime fuses into
integer kernels), weights signed int8 per output channel, activations unsigned int8 per tensor (U8S8: the operand order
of the VNNI instruction vpdpbusd, measured 2.3x float32 here, where S8S8 was no faster than float32), ranges from the
min and max over a calibration sample. The pooling that makes the features and everything after it stay float32, so
the features are not rounded to 256 levels. The calibration sample is drawn from the labelled photos, seeded and
stratified (one class alone gives a constant output), and seen as the extractor sees them (every view); its ids,
the method and the ONNX Runtime version key the cached file, so the same inputs give the same bytes. Needs numpy and
ONNX Runtime (with onnx), not TensorFlow."""

import hashlib
import json
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from dogscats.base.atomic import atomic_path
from dogscats.data.images import view_slices
from dogscats.engine.workers import EngineModel, Extraction, cached_engine_model, decode_photos
from dogscats.networks.preprocessing import PREPROCESSING

CALIBRATION_PHOTOS = 64  # labelled photos whose activations set the int8 ranges
CALIBRATION_SEED = 0
CALIBRATION_BATCH = 16  # views per calibration batch
METHOD = {"format": "QDQ", "weights": "int8 per channel", "activations": "uint8 per tensor", "ranges": "MinMax"}
POOLING_OPS = ("GlobalAveragePool", "GlobalMaxPool", "ReduceMean", "ReduceMax", "Flatten")  # features start here
COMPUTE_OPS = ("Conv", "ConvTranspose", "Gemm", "MatMul")  # the network's layers: the tail starts after the last
INT8_FLAGS = ("avx512_vnni", "avx_vnni", "amx_int8")  # /proc/cpuinfo's names of int8 dot-product instructions
CPU_FLAGS = (*INT8_FLAGS, "avx512_bf16", "amx_bf16", "avx512f", "avx2")  # what the benches print


def resolved_precision(setting: str, engine: str, gpu: bool, flags: list[str]) -> str:
    """features.precision as a run uses it: auto is int8 where the CPU runs the networks (the engine not tensorflow,
    no GPU) and has int8 dot-product instructions (flags: cpu_flags(INT8_FLAGS)), where int8 measured faster
    (docs/engine.md), and float32 elsewhere; any other setting as it is."""
    if setting != "auto":
        return setting
    return "int8" if engine != "tensorflow" and not gpu and flags else "float32"


def cpu_flags(names: tuple[str, ...] = CPU_FLAGS) -> list[str]:
    """Which of the named instruction sets the CPU has (/proc/cpuinfo; none found where it cannot be read)."""
    try:
        flags = set(Path("/proc/cpuinfo").read_text().split())
    except OSError:
        return []
    return [name for name in names if name in flags]


def calibration_sample(
    manifest: pd.DataFrame, count: int = CALIBRATION_PHOTOS, seed: int = CALIBRATION_SEED
) -> pd.DataFrame:
    """count usable labelled photos of the manifest (all when fewer), drawn seeded and stratified: the classes taken in
    turn, each class's photos in a seeded order; returned in id order."""
    usable = manifest[(manifest.split == "train") & (manifest.problem == "")].sort_values("id")
    rng = np.random.default_rng(seed)
    by_class = [list(rng.permutation(rows.index)) for _, rows in usable.groupby("label", sort=True)]
    taken: list = []
    while len(taken) < min(count, len(usable)):
        for order in by_class:
            if order and len(taken) < count:
                taken.append(order.pop(0))
    return usable.loc[taken].sort_values("id")


def calibration_views(extraction: Extraction, paths: list[str], size: int) -> np.ndarray:
    """The calibration photos as the extractor sees them: decoded at the extraction's side, scaled for the backbone,
    every view (crops, mirrors) one after another."""
    e = extraction
    images = decode_photos(paths, [True] * len(paths), e.side, e.resize, e.decode, e.threads or 1)
    x = PREPROCESSING[e.preprocessing](images.astype(np.float32))
    return np.concatenate([x[:, rows, columns] for rows, columns in view_slices(size, e.crops, e.tta)])


def quantization_key(float_path: Path, md5s: list[str], views: np.ndarray) -> str:
    """What makes the int8 model: the float model's bytes, the calibration photos' md5s in order and their views as
    the network sees them (resize, decode, crops, mirrors), the method, this module's code and ONNX Runtime's
    version."""
    import onnxruntime

    digest = hashlib.sha256(hashlib.sha256(float_path.read_bytes()).digest())
    digest.update(hashlib.sha256(np.ascontiguousarray(views).tobytes()).digest())
    digest.update(json.dumps({"md5s": md5s, "method": METHOD, "ort": onnxruntime.__version__}).encode())
    digest.update(Path(__file__).read_bytes())
    return digest.hexdigest()[:16]


def pooling_and_after(model: Any) -> list[str]:  # an onnx.ModelProto (onnx imported where it runs)
    """The names of the pooling that makes the features and every node computed from it: left float32. The pooling is
    the earliest POOLING_OPS node of the graph's tail (what follows its last convolution or matrix product), so a
    squeeze-and-excitation block's pooling inside the network is not it."""
    consumers: dict[str, list] = {}
    for node in model.graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    index = {name: i for i, node in enumerate(model.graph.node) for name in node.output}
    tail, walk = set(), [model.graph.output[0].name]
    while walk:
        i = index.get(walk.pop())
        if i is None or i in tail or model.graph.node[i].op_type in COMPUTE_OPS:
            continue
        tail.add(i)
        walk += list(model.graph.node[i].input)
    pooling = [i for i in sorted(tail) if model.graph.node[i].op_type in POOLING_OPS][:1]
    found, stack = [], [model.graph.node[i] for i in pooling]
    while stack:
        node = stack.pop()
        if node.name in found:
            continue
        found.append(node.name)
        stack += [after for output in node.output for after in consumers.get(output, [])]
    return sorted(found)


class _Batches:
    """ONNX Runtime's CalibrationDataReader over an array of views, CALIBRATION_BATCH at a time."""

    def __init__(self, input_name: str, views: np.ndarray) -> None:
        self.batches: Iterator[dict] = iter(
            {input_name: views[i : i + CALIBRATION_BATCH]} for i in range(0, len(views), CALIBRATION_BATCH)
        )

    def get_next(self) -> dict | None:
        """The next batch, or None when done."""
        return next(self.batches, None)


def quantize(float_path: Path, views: np.ndarray, out_path: Path) -> None:
    """Write the int8 model of the float32 ONNX model at float_path, its ranges from the calibration views."""
    import onnx
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    with tempfile.TemporaryDirectory(prefix="dogscats-int8-") as scratch:
        prepared = Path(scratch) / "prepared.onnx"
        quant_pre_process(str(float_path), str(prepared), skip_symbolic_shape=True)  # shapes and fused ops
        model = onnx.load(str(prepared))
        quantize_static(
            str(prepared),
            str(out_path),
            _Batches(model.graph.input[0].name, views),
            quant_format=QuantFormat.QDQ,
            per_channel=True,
            weight_type=QuantType.QInt8,
            activation_type=QuantType.QUInt8,
            calibrate_method=CalibrationMethod.MinMax,
            nodes_to_exclude=pooling_and_after(model),
        )


def int8_model(
    float_model: EngineModel, extraction: Extraction, size: int, md5s: list[str], paths: list[str]
) -> tuple[EngineModel, dict]:
    """The float model quantized to int8 with the calibration photos (their md5s and paths), from the cache beside
    the float model's file, or made, written atomically and cached; with the float model's threads. And its
    features' deviation from the float model's on the calibration photos' views (relative L2 per view: median, max)."""
    if not paths:
        raise ValueError("features.precision int8 needs labelled photos to calibrate on, and none is usable")
    float_path = Path(float_model.path)
    views = calibration_views(extraction, paths, size)
    cached = float_path.with_name(f"{float_path.stem}-int8-{quantization_key(float_path, md5s, views)}.onnx")
    threads = float_model.session.get_session_options().intra_op_num_threads
    quantized = cached_engine_model(cached, float_model.name, threads)
    if quantized is None:
        with atomic_path(cached, suffix=".onnx") as tmp:
            quantize(float_path, views, tmp)
        quantized = EngineModel(cached.read_bytes(), float_model.name, threads, cached)
    chunks = [views[i : i + CALIBRATION_BATCH] for i in range(0, len(views), CALIBRATION_BATCH)]  # bounded memory
    reference, found = (np.concatenate([run(chunk) for chunk in chunks]) for run in (float_model, quantized))
    return quantized, deviation(reference, found)


def deviation(reference: np.ndarray, found: np.ndarray) -> dict:
    """Per row, the L2 norm of the difference relative to the reference row's: the median and the max."""
    relative = np.linalg.norm(found - reference, axis=1) / np.maximum(np.linalg.norm(reference, axis=1), 1e-12)
    return {"median": float(np.median(relative)), "max": float(relative.max())}


def backbone_match(classifier, engine) -> tuple[str, str, list[int]]:
    """Where the float engine model (one backbone: input -> features) lies inside a classifier graph built around the
    same Keras backbone: the classifier's value the engine's input is, the value its output is, and the indices of
    the classifier's nodes that compute one from the other. Matched node by node walking back from the output (same
    operators, same weights); ValueError when no part of the classifier is that network."""
    from onnx import numpy_helper

    c_producer = {name: i for i, node in enumerate(classifier.graph.node) for name in node.output}
    e_producer = {name: node for node in engine.graph.node for name in node.output}
    c_weights = {t.name: t for t in classifier.graph.initializer}
    e_weights = {t.name: t for t in engine.graph.initializer}
    e_input, e_output = engine.graph.input[0].name, engine.graph.output[0].name
    last, matches = e_producer[e_output], []
    for candidate in (i for i, node in enumerate(classifier.graph.node) if node.op_type == last.op_type):
        matched: dict[str, int] = {}
        entry, stack, ok = None, [(e_output, classifier.graph.node[candidate].output[0])], True
        while stack and ok:
            e_value, c_value = stack.pop()
            if e_value == e_input:
                ok = entry in (None, c_value)
                entry = c_value
            elif e_value in e_weights:
                found = c_weights.get(c_value)
                ok = found is not None and np.array_equal(
                    numpy_helper.to_array(found), numpy_helper.to_array(e_weights[e_value])
                )
            else:
                e_node, c_index = e_producer[e_value], c_producer.get(c_value)
                c_node = None if c_index is None else classifier.graph.node[c_index]
                ok = (
                    c_node is not None
                    and c_node.op_type == e_node.op_type
                    and len(c_node.input) == len(e_node.input)
                    and list(c_node.output).index(c_value) == list(e_node.output).index(e_value)
                    and list(c_node.attribute) == list(e_node.attribute)
                    and matched.get(e_node.name, c_index) == c_index
                )
                if ok and e_node.name not in matched:
                    matched[e_node.name] = c_index
                    stack += zip(e_node.input, c_node.input, strict=True)
        if ok and entry is not None and len(matched) == len(engine.graph.node):
            matches.append((entry, classifier.graph.node[candidate].output[0], sorted(matched.values())))
    if len(matches) != 1:
        raise ValueError(
            f"the classifier holds {len(matches) or 'no'} copies of the engine's network {engine.graph.name!r} (its "
            "features), not one"
        )
    return matches[0]


def with_int8_backbone(classifier_bytes: bytes, float_bytes: bytes, int8_bytes: bytes, prefix: str) -> bytes:
    """The classifier graph with its float copy of a backbone (the float engine model, float_bytes) replaced by that
    model's int8 version (int8_bytes, as the features stage ran it), every name of the int8 graph under prefix: the
    classifier then computes exactly the features the pipeline's int8 features were."""
    import onnx

    classifier, engine, int8 = (onnx.load_from_string(b) for b in (classifier_bytes, float_bytes, int8_bytes))
    entry, features, removed = backbone_match(classifier, engine)
    ends = {int8.graph.input[0].name: entry, int8.graph.output[0].name: features}

    def renamed(name: str) -> str:
        return ends.get(name, f"{prefix}{name}" if name else "")

    nodes = []
    for node in int8.graph.node:
        copy = onnx.NodeProto()
        copy.CopyFrom(node)
        copy.name = prefix + node.name
        copy.input[:] = [renamed(name) for name in node.input]
        copy.output[:] = [renamed(name) for name in node.output]
        nodes.append(copy)
    kept = [node for i, node in enumerate(classifier.graph.node) if i not in set(removed)]
    at = removed[0]  # the int8 nodes where the float ones began: their input is computed before, their output after
    classifier.graph.ClearField("node")
    classifier.graph.node.extend(kept[:at] + nodes + kept[at:])
    weights = []
    for tensor in int8.graph.initializer:
        copy = onnx.TensorProto()
        copy.CopyFrom(tensor)
        copy.name = renamed(tensor.name)
        weights.append(copy)
    used = {name for node in classifier.graph.node for name in node.input}
    remaining = [t for t in classifier.graph.initializer if t.name in used]
    classifier.graph.ClearField("initializer")
    classifier.graph.initializer.extend(remaining + [t for t in weights if t.name in used])
    classifier.graph.ClearField("value_info")  # shapes of the removed values; ONNX Runtime infers them again
    onnx.checker.check_model(classifier)
    return classifier.SerializeToString(deterministic=True)
