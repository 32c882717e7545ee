"""The CPU inference engine: frozen Keras networks converted to ONNX (tf2onnx) and run by ONNX Runtime.

On this project's 2-core machines ONNX Runtime runs the EfficientNet-Lite extractors about 3 times as fast as
TensorFlow, and faster than OpenVINO (docs/engine.md has the figures). The Keras model stays the source of truth: the
engine's model is converted from it, cached under a key made of the model's architecture, its weights and the
converter's code and versions, and checked against the Keras model once per conversion. Conversions unused for 30
days are deleted."""

import hashlib
import json
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

import keras
import numpy as np

from dogscats.base.atomic import atomic_path
from dogscats.base.vocabulary import ENGINES, ONNXRUNTIME_PRECISIONS
from dogscats.engine.workers import (  # the session runs without TensorFlow, in workers too
    EngineModel,
    batch_features,
    cached_engine_model,
)
from dogscats.networks.backbones import cache_root

OPSET = 17
UNUSED_DAYS = 30  # a cached conversion unused this long is deleted when another is written
CHECK_TOLERANCE = 1e-4  # largest deviation from Keras allowed, relative to the largest output (we measure ~2e-6)


def choose_engine(engine: str, gpu_visible: bool, precision: str) -> str:
    """The engine a run uses: auto is ONNX Runtime in int8 (a CPU run, GPU or not) and on CPU in float32, TensorFlow
    on a GPU or in bfloat16 or float16."""
    if engine not in ENGINES:
        raise ValueError(f"unknown engine {engine!r}; choose one of {', '.join(ENGINES)}")
    if engine == "auto":
        return "onnxruntime" if precision == "int8" or (precision == "float32" and not gpu_visible) else "tensorflow"
    if engine == "onnxruntime" and precision not in ONNXRUNTIME_PRECISIONS:
        raise ValueError(f"features.engine onnxruntime runs float32 or int8, not {precision}; use tensorflow")
    if engine == "tensorflow" and precision == "int8":
        raise ValueError("features.precision int8 runs on the onnxruntime engine, not tensorflow; use auto")
    return engine


def gpu_visible() -> bool:
    """Whether TensorFlow sees a GPU."""
    import tensorflow as tf

    return bool(tf.config.list_physical_devices("GPU"))


def converter_key() -> str:
    """The converter's content: this file and the versions of the libraries that convert and run the model."""
    import onnx
    import onnxruntime
    import tensorflow as tf
    import tf2onnx

    versions = (
        f"{tf.__version__} {keras.__version__} {tf2onnx.__version__} {onnx.__version__} {onnxruntime.__version__}"
    )
    return hashlib.sha256(Path(__file__).read_bytes() + versions.encode()).hexdigest()


def model_key(model: keras.Model) -> str:
    """A model's content: its layers' configs (less their generated names), its weights and the converter."""
    digest = hashlib.sha256(converter_key().encode())
    for layer in model.layers:
        config = {key: value for key, value in layer.get_config().items() if key != "name"}
        digest.update(f"{type(layer).__name__} {json.dumps(config, sort_keys=True, default=str)}".encode())
    for weight in model.weights:
        digest.update(np.ascontiguousarray(keras.ops.convert_to_numpy(weight)).tobytes())
    return digest.hexdigest()[:16]


def to_onnx(model: keras.Model, input_names: list[str] | None = None) -> bytes:
    """The model as ONNX bytes, with a free batch dimension, its inputs named input_names (by default the model's)."""
    import tensorflow as tf
    import tf2onnx

    names = input_names or [x.name for x in model.inputs]
    spec = [
        tf.TensorSpec((None, *x.shape[1:]), tf.float32, name=name) for x, name in zip(model.inputs, names, strict=True)
    ]
    function = tf.function(lambda *xs: model(xs[0] if len(xs) == 1 else list(xs), training=False), input_signature=spec)
    try:
        proto, _ = tf2onnx.convert.from_function(function, input_signature=spec, opset=OPSET)
    except Exception as err:  # tf2onnx raises many types for an op it cannot convert
        raise RuntimeError(f"{model.name}: tf2onnx could not convert it to ONNX ({type(err).__name__}: {err})") from err
    return proto.SerializeToString()


def engine_model(model: keras.Model, probe: np.ndarray, cache_dir: Path | None = None, threads: int = 0) -> EngineModel:
    """The model in the engine with `threads` intra-op threads (0: ONNX Runtime's default): loaded from the cache, or
    converted, checked on the probe batch and cached; its path is the cached file (what worker processes load)."""
    cache_dir = cache_dir or cache_root() / "onnx"
    shape = "x".join(str(d) for d in model.input.shape[1:])
    cached = cache_dir / f"{model.name}-{shape}-{model_key(model)}.onnx"
    if (converted := cached_engine_model(cached, model.name, threads)) is not None:
        return converted
    try:
        onnx_bytes = to_onnx(model, ["x"])
    except RuntimeError as err:
        raise RuntimeError(f"{err}; run with features.engine: tensorflow") from err
    converted = EngineModel(onnx_bytes, model.name, threads)
    check_conversion(model, converted, probe)
    with atomic_path(cached, suffix=".onnx") as tmp:
        tmp.write_bytes(onnx_bytes)
    converted.path = cached
    remove_unused(cache_dir)
    return converted


def remove_unused(cache_dir: Path, days: float = UNUSED_DAYS) -> None:
    """Delete the cached conversions not used for `days` (several sizes and weights of one model can be in use)."""
    cutoff = time.time() - days * 86400
    for path in cache_dir.glob("*.onnx"):
        if path.stat().st_mtime < cutoff:
            path.unlink(missing_ok=True)


def check_conversion(model: keras.Model, converted: EngineModel, probe: np.ndarray) -> float:
    """The largest deviation of the engine's outputs from Keras's on the probe; too large a one is an error."""
    expected = keras.ops.convert_to_numpy(model(probe, training=False))
    deviation = float(np.abs(converted(probe) - expected).max())
    scale = max(1.0, float(np.abs(expected).max()))
    if not deviation <= CHECK_TOLERANCE * scale:
        raise RuntimeError(
            f"{model.name}: the ONNX Runtime conversion deviates from Keras by {deviation:.3g} "
            f"(allowed {CHECK_TOLERANCE * scale:.3g}); run with features.engine: tensorflow"
        )
    return deviation


def probe_images(size: int, count: int = 2, seed: int = 0) -> np.ndarray:
    """A fixed batch of noise images, uint8 (count, size, size, 3), to check a conversion on."""
    return np.random.default_rng(seed).integers(0, 256, (count, size, size, 3), dtype=np.uint8)


def engine_feature_batches(
    extractor: EngineModel,
    preprocess: Callable[[np.ndarray], np.ndarray],
    batches: Iterable,
    tta: bool = False,
    crops: int = 1,
) -> Iterator[np.ndarray]:
    """Yield float32 features per batch of uint8 images, in order (workers.batch_features: with crops 5 the images
    are loaded at crop_side and each view's features are averaged; tta averages each with its mirror image's)."""
    for images in batches:
        yield batch_features(extractor, preprocess, images, tta, crops)
