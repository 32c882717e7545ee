"""Image decoding: orientation, colour modes, resizing, and files that do not decode."""

import numpy as np
from PIL import Image

from dogscats.images import decode_problem, load_resized

from .conftest import write_image


def test_resized_is_uint8_rgb_square(tmp_path):
    path = write_image(tmp_path / "a.jpg", (10, 200, 30), size=(50, 20))
    img = load_resized(path, 16)
    assert img.shape == (16, 16, 3) and img.dtype == np.uint8
    assert img[..., 1].mean() > 150 > img[..., 0].mean()


def test_grayscale_becomes_rgb(tmp_path):
    path = tmp_path / "gray.jpg"
    Image.new("L", (20, 20), 90).save(path)
    img = load_resized(path, 8)
    assert img.shape == (8, 8, 3) and abs(int(img[0, 0, 0]) - 90) <= 2


def test_exif_orientation_is_applied(tmp_path):
    path = tmp_path / "rotated.jpg"
    pixels = np.zeros((20, 40, 3), np.uint8)  # wide: left half white, right half black
    pixels[:, :20] = 255
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    Image.fromarray(pixels).save(path, exif=exif)
    img = load_resized(path, 40)
    assert img[:10].mean() > 200 and img[-10:].mean() < 50  # the white half is now on top


def test_truncated_and_non_image_files_are_problems(tmp_path):
    good = write_image(tmp_path / "good.jpg", (1, 2, 3), size=(64, 64))
    truncated = tmp_path / "truncated.jpg"
    truncated.write_bytes(good.read_bytes()[:300])
    text = tmp_path / "text.jpg"
    text.write_text("not an image")
    assert decode_problem(good) is None
    assert decode_problem(truncated)
    assert "cannot identify image file" in decode_problem(text)
    assert decode_problem(tmp_path / "empty.jpg") is not None


def test_resize_policies(tmp_path):
    path = tmp_path / "wide.png"
    pixels = np.zeros((20, 60, 3), np.uint8)
    pixels[:, :20] = (255, 0, 0)  # red left third, then black
    Image.fromarray(pixels).save(path)
    squash, crop, pad = (load_resized(path, 30, resize) for resize in ("squash", "crop", "pad"))
    assert squash[:, :5, 0].mean() > 240  # stretched: red still at the left edge
    assert crop[:, :5, 0].mean() < 10  # centre square of the short side: the red third is cut away
    assert tuple(pad[0, 15]) == (127, 127, 127) and pad[15, 2, 0] > 240  # grey bars above and below


def test_reduced_decode_is_close_to_full(tmp_path):
    rng = np.random.default_rng(0)
    smooth = np.kron(rng.integers(0, 256, (15, 20, 3)), np.ones((64, 64, 1))).astype(np.uint8)
    path = tmp_path / "big.jpg"
    Image.fromarray(smooth).save(path, quality=95)  # 1280 x 960: decoded at 1/4 scale (320 x 240) for a 224 input
    full, reduced = load_resized(path, 224, decode="full"), load_resized(path, 224, decode="reduced")
    assert full.shape == reduced.shape == (224, 224, 3)
    assert np.abs(full.astype(int) - reduced.astype(int)).mean() < 8
