"""Streaming feature extraction: JPEGs decoded and resized in parallel, batched and prefetched, so the CNN never
waits for input; features come out batch by batch, in file order, never all in memory. TensorFlow reads through
tf.data; the CPU engine through low-priority decoder threads that fill the cores' idle moments (see image_batches)."""

import os
import sys
import threading
from collections import deque
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager

import keras
import numpy as np
import tensorflow as tf

from dogscats.backbones import Backbone, load_feature_extractor
from dogscats.engine import EngineModel, engine_feature_batches
from dogscats.images import crop_side, load_resized, view_slices
from dogscats.params import PRECISIONS  # its one list, where checking params needs no TensorFlow


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


def image_batches(
    files: list[str], usable: list[bool], size: int, resize: str, decode: str, batch_size: int, ahead: int = 2
) -> Iterator[np.ndarray]:
    """Batches of uint8 (B, size, size, 3) images in file order, decoded `ahead` batches in advance by one thread per
    core at the lowest priority; an unusable image is a black square.

    On CPUs the network and the decoders share the cores. At normal priority a decoder thread preempts one of the
    engine's threads and the whole operator waits for it; at the lowest priority the decoders run in the moments the
    engine leaves a core idle, and at full speed only when the engine waits for a batch (docs/engine.md)."""

    pending: deque[Future] = deque()
    todo = iter(zip(files, usable, strict=True))
    with ThreadPoolExecutor(os.cpu_count() or 1, "decode", initializer=lowest_priority) as pool:
        try:
            while True:
                for path, ok in todo:
                    pending.append(pool.submit(load_or_blank, path, ok, size, resize, decode))
                    if len(pending) >= ahead * batch_size:
                        break
                if not pending:
                    return
                yield np.stack([pending.popleft().result() for _ in range(min(batch_size, len(pending)))])
        finally:
            for future in pending:
                future.cancel()  # a consumer that stops early does not wait for the photos it will not use


def load_or_blank(path: str, usable: bool, size: int, resize: str, decode: str) -> np.ndarray:
    """One image as uint8 (size, size, 3), or a black square when it is unusable; a decoding error names the file."""
    if not usable:
        return np.zeros((size, size, 3), np.uint8)
    try:
        return load_resized(path, size, resize, decode)  # PIL releases the GIL while decoding
    except Exception as err:
        err.add_note(f"while decoding {path}")
        raise


def lowest_priority() -> None:
    """Give the calling thread the lowest CPU priority (nice 19; Linux sets it per thread; elsewhere nothing)."""
    if sys.platform.startswith("linux"):
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 19)


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
    """Build models under a Keras dtype policy (mixed precision for bfloat16 and float16), restored afterwards."""
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy("float32" if precision == "float32" else f"mixed_{precision}")
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
) -> Iterator[np.ndarray]:
    """The features stage's path: features per batch of the files, in order, through the engine's extractor when
    there is one (photos from image_batches), else through the Keras model in TensorFlow (photos from tf.data)."""
    crops, batch_size = params["crops"], params["batch_size"]
    side = crop_side(int(model.input.shape[1]), crops)  # the images are loaded larger for the corner crops
    if extractor is not None:
        images = image_batches(files, usable, side, params["resize"], params["decode"], batch_size)
        return engine_feature_batches(extractor, backbone.preprocess, images, params["tta"], crops)
    dataset = image_dataset(files, usable, side, params["resize"], params["decode"], batch_size)
    return feature_batches(model, backbone, dataset, strategy, params["tta"], crops)
