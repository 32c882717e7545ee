"""Streaming feature extraction: images are decoded a batch ahead in a worker thread while the CNN runs."""

from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import keras
import numpy as np

from dogscats.backbones import Backbone
from dogscats.images import load_resized


def load_batch(files: list[str], usable: list[bool], size: int) -> np.ndarray:
    """Decode and resize a batch; an unusable image (listed by prepare) becomes a black square."""
    blank = np.zeros((size, size, 3), np.uint8)
    return np.stack([load_resized(f, size) if ok else blank for f, ok in zip(files, usable, strict=True)])


def feature_batches(
    model: keras.Model, backbone: Backbone, files: list[str], usable: list[bool], batch_size: int
) -> Iterator[np.ndarray]:
    """Yield float32 GAP features batch by batch, in file order, decoding batch i+1 while batch i runs."""
    chunks = [(files[s : s + batch_size], usable[s : s + batch_size]) for s in range(0, len(files), batch_size)]
    with ThreadPoolExecutor(max_workers=1) as pool:
        loading = [pool.submit(load_batch, *chunks[0], backbone.input_size)] if chunks else []
        for i in range(len(chunks)):
            images = loading.pop().result()
            if i + 1 < len(chunks):
                loading.append(pool.submit(load_batch, *chunks[i + 1], backbone.input_size))
            x = backbone.preprocess(images.astype(np.float32))
            yield np.asarray(model(x, training=False), dtype=np.float32)
