"""Image decoding: any file PIL can read, EXIF orientation applied, RGB, resized to the network's input."""

from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

RESAMPLE = Image.Resampling.BICUBIC


def load_rgb(path: Path | str) -> Image.Image:
    """Decode an image fully, apply its EXIF orientation and convert to RGB; raises on unreadable files."""
    with Image.open(path) as im:
        im.load()
        im = ImageOps.exif_transpose(im)
        return im.convert("RGB")


def load_resized(path: Path | str, size: int) -> np.ndarray:
    """An image as uint8 (size, size, 3), squashed to a square (the aspect ratio is not kept)."""
    return np.asarray(load_rgb(path).resize((size, size), RESAMPLE), dtype=np.uint8)


def decode_problem(path: Path | str) -> str | None:
    """Why an image cannot be used, or None if it decodes."""
    try:
        im = load_rgb(path)
    except Exception as err:  # PIL raises many types (OSError, SyntaxError, DecompressionBombError, ...)
        return f"{type(err).__name__}: {err}"
    if min(im.size) < 1:
        return "empty image"
    return None
