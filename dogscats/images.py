"""Image decoding: any file PIL can read, EXIF orientation applied, RGB, fitted to the network's square input."""

from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

RESAMPLE = Image.Resampling.BICUBIC
RESIZE_POLICIES = ("squash", "crop", "pad")  # stretch to a square; centre-crop the short side; pad to a square
DECODE_POLICIES = ("full", "reduced")  # reduced: JPEG decoded at 1/2, 1/4 or 1/8 scale (see load_resized)
REDUCED_MIN_SIDE = 0.75  # reduced decoding keeps at least this fraction of the input size on each side
PAD_COLOUR = (127, 127, 127)


def load_rgb(path: Path | str, draft_size: int | None = None) -> Image.Image:
    """Decode an image, apply its EXIF orientation, convert to RGB; draft_size allows reduced-scale JPEG decoding."""
    with Image.open(path) as im:
        if draft_size:
            im.draft("RGB", (draft_size, draft_size))  # libjpeg DCT scaling, never below draft_size on either side
        im.load()
        im = ImageOps.exif_transpose(im)
        return im.convert("RGB")


def fit_square(im: Image.Image, size: int, resize: str) -> Image.Image:
    """Fit an image to (size, size) by the resize policy."""
    if resize == "squash":
        return im.resize((size, size), RESAMPLE)
    if resize == "crop":
        return ImageOps.fit(im, (size, size), RESAMPLE)
    if resize == "pad":
        return ImageOps.pad(im, (size, size), RESAMPLE, color=PAD_COLOUR)
    raise ValueError(f"unknown resize policy {resize!r}; choose one of {', '.join(RESIZE_POLICIES)}")


def load_resized(path: Path | str, size: int, resize: str = "squash", decode: str = "full") -> np.ndarray:
    """An image as uint8 (size, size, 3), decoded and fitted by the given policies.

    decode="reduced" lets libjpeg decode a JPEG at 1/2, 1/4 or 1/8 scale, as long as each side keeps at least 3/4
    of the input size: a 500 x 375 photo for a 224 input decodes at 250 x 187, about half the work of decoding
    and resizing it at full scale."""
    if decode not in DECODE_POLICIES:
        raise ValueError(f"unknown decode policy {decode!r}; choose one of {', '.join(DECODE_POLICIES)}")
    im = load_rgb(path, draft_size=int(size * REDUCED_MIN_SIDE) if decode == "reduced" else None)
    return np.asarray(fit_square(im, size, resize), dtype=np.uint8)


def decode_problem(path: Path | str) -> str | None:
    """Why an image cannot be used, or None if it decodes."""
    try:
        im = load_rgb(path)
    except Exception as err:  # PIL raises many types (OSError, SyntaxError, DecompressionBombError, ...)
        return f"{type(err).__name__}: {err}"
    if min(im.size) < 1:
        return "empty image"
    return None
