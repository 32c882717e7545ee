"""Image decoding: JPEG, PNG, GIF, WebP and BMP files, told by their content (whatever their extension), EXIF
orientation applied, RGB, fitted to the network's square input. 16-bit images are scaled to 8 bits; transparent
pixels are composited over grey. Any other format is refused before Pillow opens it: some of Pillow's plugins run
other programs (EPS runs Ghostscript)."""

from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from dogscats.base.vocabulary import DECODE_POLICIES, RESIZE_POLICIES

RESAMPLE = Image.Resampling.BICUBIC
REDUCED_MIN_SIDE = 0.75  # reduced decoding keeps at least this fraction of the input size on each side
PAD_COLOUR = (127, 127, 127)
CROP_MARGIN = 1 / 7  # five views are cut from a square this much larger than the input (as 224 of the classic 256)
CHECK_DRAFT_SIZE = 64  # decode_problem decodes JPEGs at 1/8 scale: every byte is still read, a fraction of the memory
FORMATS = ("JPEG", "PNG", "GIF", "WEBP", "BMP")  # Pillow's names of the formats read (camera JPEGs open as MPO)
FORMAT_NAMES = "JPEG, PNG, GIF, WebP, BMP"


class ImageFormatError(UnidentifiedImageError):
    """A file in a format Pillow knows but this project does not read."""


def load_rgb(path: Path | str | BinaryIO, draft_size: int | None = None) -> Image.Image:
    """Decode an image (a file, or bytes in a binary file object such as io.BytesIO), apply its EXIF orientation,
    convert to RGB; draft_size allows reduced-scale JPEG decoding. Only FORMATS are opened: any other raises
    ImageFormatError naming it."""
    try:
        opened = Image.open(path, formats=FORMATS)
    except UnidentifiedImageError:
        known = format_of(path)
        if known and known not in (*FORMATS, "MPO"):  # an allowed format that failed to open keeps Pillow's reason
            raise ImageFormatError(f"looks like {known}, not an allowed image format ({FORMAT_NAMES})") from None
        raise
    with opened as im:
        if draft_size:
            im.draft("RGB", (draft_size, draft_size))  # libjpeg DCT scaling, never below draft_size on either side
        im.load()
        return to_rgb(ImageOps.exif_transpose(im))


def format_of(path: Path | str | BinaryIO) -> str | None:
    """The format Pillow would take the file for, by its first bytes alone (no plugin opens it), or None."""
    if isinstance(path, Path | str):
        with open(path, "rb") as f:
            prefix = f.read(16)  # as much as Image.open gives the plugins' checks
    else:
        path.seek(0)
        prefix = path.read(16)
    Image.init()
    return next((name for name, (_, accept) in Image.OPEN.items() if accept and _accepts(accept, prefix)), None)


def _accepts(accept: Callable[[bytes], Any], prefix: bytes) -> bool:
    """Whether a plugin's signature check takes the first bytes (some fail on a few bytes: then it does not)."""
    try:
        return bool(accept(prefix))
    except Exception:  # struct.error and the like, on files shorter than a header
        return False


def to_rgb(im: Image.Image) -> Image.Image:
    """8-bit RGB from any mode: 16-bit greys scaled (PIL's own conversion clips them at 255), alpha over grey."""
    if im.mode == "I" or im.mode.startswith("I;16"):  # PIL opens 16-bit PNG greys as I;16 or I
        im = Image.fromarray(np.clip(np.asarray(im, dtype=np.float64) / 257, 0, 255).round().astype(np.uint8))
    if im.mode in ("RGBA", "LA", "PA") or (im.mode == "P" and "transparency" in im.info):
        rgba = im.convert("RGBA")
        im = Image.alpha_composite(Image.new("RGBA", rgba.size, (*PAD_COLOUR, 255)), rgba)
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


def load_resized(path: Path | str | BinaryIO, size: int, resize: str = "squash", decode: str = "full") -> np.ndarray:
    """An image as uint8 (size, size, 3), decoded and fitted by the given policies.

    decode="reduced" lets libjpeg decode a JPEG at 1/2, 1/4 or 1/8 scale, as long as each side keeps at least 3/4
    of the input size: a 500 x 375 photo for a 224 input decodes at 250 x 187, about half the work of decoding
    and resizing it at full scale."""
    if decode not in DECODE_POLICIES:
        raise ValueError(f"unknown decode policy {decode!r}; choose one of {', '.join(DECODE_POLICIES)}")
    im = load_rgb(path, draft_size=int(size * REDUCED_MIN_SIDE) if decode == "reduced" else None)
    return np.asarray(fit_square(im, size, resize), dtype=np.uint8)


def crop_side(size: int, crops: int) -> int:
    """The side images are loaded at for that many views: the input side for 1, a seventh larger (even) for 5."""
    return size if crops == 1 else size + 2 * round(size * CROP_MARGIN / 2)


def crop_offsets(size: int, crops: int) -> list[tuple[int, int]]:
    """(top, left) of each size x size view in an image loaded at crop_side: the centre, then the four corners."""
    far = crop_side(size, crops) - size
    return [(far // 2, far // 2)] + ([(0, 0), (0, far), (far, 0), (far, far)] if crops == 5 else [])


def centre_view(images: np.ndarray, size: int) -> np.ndarray:
    """The centre size x size view of a batch of square images (the batch itself when it is that size)."""
    top = (images.shape[1] - size) // 2
    return images[:, top : top + size, top : top + size]


def unreadable(err: Exception) -> str:
    """Why an image cannot be read, on one line: the error's type and message."""
    return " ".join(f"{type(err).__name__}: {err}".split())


def read_image(path: Path | str, draft_size: int | None = None) -> tuple[Image.Image | None, str]:
    """The decoded image (load_rgb), or None and why it cannot be read (unreadable): the decoder that catches
    everything, for prepare's check and the pages' thumbnails (the maps decode through Classifier.images_or_error,
    which catches everything too): a bad photo is a row with its reason, never a crash."""
    try:
        return load_rgb(path, draft_size), ""
    except Exception as err:  # PIL raises many types (OSError, SyntaxError, DecompressionBombError, ...)
        return None, unreadable(err)


def decode_problem(path: Path | str) -> str | None:
    """Why an image cannot be used, or None if it decodes."""
    im, problem = read_image(path, draft_size=CHECK_DRAFT_SIZE)
    if im is None:
        return problem
    if min(im.size) < 1:
        return "empty image"
    return None


def view_slices(size: int, crops: int, tta: bool, centre_only: bool = False) -> list[tuple[slice, slice]]:
    """The views of a batch of images loaded at crop_side(size, crops), as (rows, columns) slices that numpy arrays
    and TensorFlow tensors both take (batch[:, rows, columns]): the crop_offsets views (the centre alone with
    centre_only), then with tta their mirror images (the columns reversed)."""
    offsets = crop_offsets(size, crops)[: 1 if centre_only else None]
    views = [(slice(top, top + size), slice(left, left + size)) for top, left in offsets]
    mirrors = [
        (rows, slice(columns.stop - 1, columns.start - 1 if columns.start else None, -1)) for rows, columns in views
    ]
    return views + mirrors if tta else views
