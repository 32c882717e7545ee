"""Streaming feature extraction: JPEGs decoded and resized in parallel, batched and prefetched, so the CNN never
waits for input; features come out batch by batch, in file order, never all in memory. TensorFlow reads through
tf.data; the CPU engine through low-priority decoder threads that fill the cores' idle moments (see image_batches)."""

import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager

import keras
import numpy as np
import tensorflow as tf

from dogscats.base.vocabulary import PRECISIONS
from dogscats.data.images import crop_side, view_slices
from dogscats.engine.conversion import engine_feature_batches
from dogscats.engine.quantize import INT8_FLAGS, cpu_flags
from dogscats.engine.workers import (
    EngineModel,
    Extraction,
    extract_photos,
    image_batches,
    load_or_blank,
    open_session,
    ordered_map,
)
from dogscats.networks.backbones import Backbone, load_feature_extractor
from dogscats.networks.preprocessing import BACKBONE_PREPROCESSING, PREPROCESSING


def image_dataset(
    files: list[str], usable: list[bool], size: int, resize: str, decode: str, batch_size: int
) -> tf.data.Dataset:
    """Batches of uint8 (B, size, size, 3) images in file order; an unusable image is a black square."""
    dataset = tf.data.Dataset.from_tensor_slices((tf.constant(files, tf.string), tf.constant(usable, tf.bool)))
    return decoded(dataset, size, resize, decode).batch(batch_size).prefetch(2)


def decoded(dataset: tf.data.Dataset, size: int, resize: str, decode: str) -> tf.data.Dataset:
    """Map (path, usable, *rest) elements to (image, *rest), or to the image alone when there is no rest."""

    def load(path: bytes, ok: bool) -> np.ndarray:
        return load_or_blank(path.decode(), ok, size, resize, decode)

    def load_tf(path: tf.Tensor, ok: tf.Tensor, *rest: tf.Tensor):
        image = tf.numpy_function(load, [path, ok], tf.uint8, stateful=False)
        image = tf.ensure_shape(image, (size, size, 3))
        return (image, *rest) if rest else image

    return dataset.map(load_tf, num_parallel_calls=decode_threads(), deterministic=True)


def decode_threads() -> int:
    """tf.data's parallel image decoders: its autotuning with a GPU; on CPUs, where TensorFlow needs every core, one
    decoder per 8 cores: on 2 cores one thread decodes 250-650 photos/s, against about 18/s through Lite0 in
    TensorFlow with TTA."""
    if tf.config.list_physical_devices("GPU"):
        return tf.data.AUTOTUNE
    return max(1, (os.cpu_count() or 1) // 8)


def choose_strategy() -> tf.distribute.Strategy:
    """MirroredStrategy over every GPU when there are several, else the default (one device) strategy."""
    gpus = tf.config.list_logical_devices("GPU")
    return tf.distribute.MirroredStrategy([g.name for g in gpus]) if len(gpus) > 1 else tf.distribute.get_strategy()


def check_precision(precision: str) -> None:
    """Fail early when the hardware cannot run the precision fast (it would be emulated, slower than float32)."""
    if precision not in PRECISIONS:
        raise ValueError(f"unknown precision {precision!r}; choose one of {', '.join(PRECISIONS)}")
    has_gpu = bool(tf.config.list_physical_devices("GPU"))
    if precision == "float16" and not has_gpu:
        raise ValueError(
            "features.precision float16 needs a GPU; use float32 (or bfloat16 on a CPU with AMX/AVX512-BF16)"
        )
    if precision == "bfloat16" and not has_gpu and not cpu_has_bf16():
        raise ValueError("features.precision bfloat16: this CPU has no AMX or AVX512-BF16; use float32")
    if precision == "int8" and not cpu_flags(INT8_FLAGS):
        print(
            "warning: features.precision int8: this CPU has no int8 dot-product instructions (AVX-512 VNNI, AVX-VNNI,"
            " AMX): int8 may be slower than float32 here, and its 16-bit sums can saturate (bench/features.py's Aq"
            " against A measures the speed)",
            file=sys.stderr,
        )


def cpu_has_bf16() -> bool:
    """True when the CPU has native bfloat16 matrix instructions."""
    try:
        with open("/proc/cpuinfo") as f:
            flags = f.read()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


@contextmanager
def dtype_policy(precision: str) -> Iterator[None]:
    """Build models under a Keras dtype policy (mixed precision for bfloat16 and float16; int8 is quantized from the
    float32 model: dogscats.engine.quantize), restored afterwards."""
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy(f"mixed_{precision}" if precision in ("bfloat16", "float16") else "float32")
    try:
        yield
    finally:
        keras.config.set_dtype_policy(previous)


def build_extractor(
    name: str,
    weights: str | None,
    precision: str,
    strategy: tf.distribute.Strategy,
    pooling: str = "avg",
    input_size: int | None = None,
) -> keras.Model:
    """The backbone's pooled feature model, built under the strategy's scope and the precision's dtype policy."""
    check_precision(precision)
    with strategy.scope(), dtype_policy(precision):
        return load_feature_extractor(name, weights, pooling, input_size)


def feature_batches(
    model: keras.Model,
    backbone: Backbone,
    dataset: tf.data.Dataset,
    strategy: tf.distribute.Strategy,
    tta: bool = False,
    crops: int = 1,
) -> Iterator[np.ndarray]:
    """Yield float32 GAP features per batch, in dataset order; with crops 5 the images are loaded at crop_side and
    each view's features (crop_offsets) are averaged; tta averages each view's with its mirror image's."""
    size = int(model.input.shape[1])

    @tf.function(reduce_retracing=True)
    def step(images: tf.Tensor) -> tf.Tensor:
        x = backbone.preprocess(tf.cast(images, tf.float32))
        views = [x[:, rows, columns] for rows, columns in view_slices(size, crops, tta)]
        features = [tf.cast(model(view, training=False), tf.float32) for view in views]
        return features[0] if len(features) == 1 else tf.add_n(features) / len(features)

    for batch in strategy.experimental_distribute_dataset(dataset):
        per_replica = strategy.run(step, args=(batch,))
        yield strategy.gather(per_replica, axis=0).numpy()


def split_features(
    files: list[str],
    usable: list[bool],
    backbone: Backbone,
    model: keras.Model,
    extractor: EngineModel | None,
    strategy: tf.distribute.Strategy,
    params: dict,
    workers: tuple[int, int] = (1, 0),
) -> Iterator[np.ndarray]:
    """The features stage's path: features per batch of the files, in order, through the engine's extractor when
    there is one, else through the Keras model in TensorFlow (photos from tf.data). The engine runs in this process
    with workers (1, T) (photos from image_batches), else in W worker processes of T threads each (engine_batches)."""
    crops, batch_size = params["crops"], params["batch_size"]
    side = crop_side(int(model.input.shape[1]), crops)  # the images are loaded larger for the corner crops
    if extractor is not None:
        preprocessing = BACKBONE_PREPROCESSING[backbone.name]
        count, threads = workers
        if count > 1:
            extraction = extraction_of(extractor, backbone.name, int(model.input.shape[1]), params, threads)
            return engine_batches(extraction, files, usable, batch_size, count)
        images = image_batches(files, usable, side, params["resize"], params["decode"], batch_size)
        return engine_feature_batches(extractor, PREPROCESSING[preprocessing], images, params["tta"], crops)
    dataset = image_dataset(files, usable, side, params["resize"], params["decode"], batch_size)
    return feature_batches(model, backbone, dataset, strategy, params["tta"], crops)


def extraction_of(extractor: EngineModel, backbone_name: str, size: int, params: dict, threads: int) -> Extraction:
    """How a worker process or a Ray actor turns photos into features: the engine's model file, the features params
    (photos loaded at crop_side of the input size) and its session's threads."""
    side = crop_side(size, params["crops"])
    preprocessing = BACKBONE_PREPROCESSING[backbone_name]
    tta, crops = params["tta"], params["crops"]
    return Extraction(str(extractor.path), side, params["resize"], params["decode"], tta, crops, threads, preprocessing)


def engine_batches(
    extraction: Extraction, files: list[str], usable: list[bool], batch_size: int, workers: int
) -> Iterator[np.ndarray]:
    """Features per batch of the files, in order, each batch decoded and extracted by one of `workers` processes."""
    chunks = (
        (files[start : start + batch_size], usable[start : start + batch_size])
        for start in range(0, len(files), batch_size)
    )
    return ordered_map(open_session, extract_photos, extraction, chunks, workers)
