"""Image decoding: orientation, colour modes, formats, sizes, resizing, and files that do not decode."""

import builtins
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image, UnidentifiedImageError

from dogscats.data.images import centre_view, crop_offsets, crop_side, decode_problem, load_resized

from ..conftest import REPO, write_image

COLOUR = (200, 60, 40)


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


def _close_to(img: np.ndarray, colour: tuple[int, int, int], tolerance: int = 12) -> bool:
    return bool(np.abs(img.reshape(-1, 3).mean(axis=0) - colour).max() <= tolerance)


@pytest.mark.parametrize("fmt", ["PNG", "GIF", "WEBP"])
def test_other_formats_named_jpg_decode_by_content(tmp_path, fmt):
    path = tmp_path / "cat.1.jpg"
    Image.new("RGB", (30, 20), COLOUR).save(path, format=fmt)
    assert decode_problem(path) is None
    assert _close_to(load_resized(path, 16, "crop", "reduced"), COLOUR)


def test_cmyk_jpeg_becomes_rgb(tmp_path):
    path = tmp_path / "cmyk.jpg"
    Image.new("RGB", (30, 20), COLOUR).convert("CMYK").save(path, quality=95)
    assert Image.open(path).mode == "CMYK" and decode_problem(path) is None
    assert _close_to(load_resized(path, 16, "crop", "reduced"), COLOUR)


def test_palette_image_becomes_rgb(tmp_path):
    path = tmp_path / "palette.png"
    Image.new("RGB", (30, 20), COLOUR).convert("P", palette=Image.Palette.ADAPTIVE).save(path)
    assert Image.open(path).mode == "P"
    assert _close_to(load_resized(path, 16), COLOUR, tolerance=2)


def test_transparent_pixels_are_composited_over_grey(tmp_path):
    path = tmp_path / "rgba.png"
    pixels = np.zeros((20, 40, 4), np.uint8)
    pixels[:, :20] = (*COLOUR, 255)  # left half opaque; right half fully transparent black
    Image.fromarray(pixels, "RGBA").save(path)
    img = load_resized(path, 40, "squash")
    assert _close_to(img[:, :15], COLOUR, 2) and _close_to(img[:, -15:], (127, 127, 127), 2)


def test_16_bit_grey_is_scaled_not_clipped(tmp_path):
    path = tmp_path / "grey16.png"
    Image.fromarray(np.full((20, 20), 128 * 257, np.uint16)).save(path)  # mid grey in 16 bits
    assert Image.open(path).mode.startswith("I")
    assert _close_to(load_resized(path, 8), (128, 128, 128), 1)  # PIL's plain convert("RGB") gives 255


def test_one_pixel_image_is_upscaled(tmp_path):
    path = tmp_path / "dot.jpg"
    Image.new("RGB", (1, 1), COLOUR).save(path, quality=100)
    assert decode_problem(path) is None
    img = load_resized(path, 32, "crop", "reduced")
    assert img.shape == (32, 32, 3) and _close_to(img, COLOUR, 3)


def test_huge_jpeg_decodes_in_little_memory(tmp_path):
    path = tmp_path / "huge.jpg"
    Image.new("RGB", (10_000, 10_000), COLOUR).save(path, quality=50)  # 300 MB of pixels at full scale
    probe = (
        "import resource, sys, warnings; from dogscats.data.images import decode_problem, load_resized\n"
        "warnings.simplefilter('ignore'); before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss\n"
        "assert decode_problem(sys.argv[1]) is None\n"
        "img = load_resized(sys.argv[1], 224, 'crop', 'reduced'); assert img.shape == (224, 224, 3)\n"
        "print((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) // 1024)"
    )
    result = subprocess.run([sys.executable, "-c", probe, str(path)], capture_output=True, text=True, cwd=REPO)
    assert result.returncode == 0, result.stderr
    assert int(result.stdout) < 60  # MiB of peak growth: JPEGs are checked and fed at 1/8 scale (1250 x 1250)


def test_zero_byte_truncated_and_text_files_are_problems(tmp_path):
    good = write_image(tmp_path / "good.jpg", (1, 2, 3), size=(64, 64))
    truncated, nearly_whole = tmp_path / "truncated.jpg", tmp_path / "nearly_whole.jpg"
    truncated.write_bytes(good.read_bytes()[:300])
    nearly_whole.write_bytes(good.read_bytes()[:-40])  # only the last rows are lost: still caught at 1/8 scale
    text = tmp_path / "text.jpg"
    text.write_text("not an image")
    empty = tmp_path / "empty.jpg"
    empty.touch()
    assert decode_problem(good) is None
    assert "truncated" in decode_problem(truncated).lower()
    assert "truncated" in decode_problem(nearly_whole).lower()
    assert "cannot identify image file" in decode_problem(text)
    assert "cannot identify image file" in decode_problem(empty)
    assert "No such file" in decode_problem(tmp_path / "missing.jpg")


def test_unreadable_file_is_a_problem(tmp_path, monkeypatch):
    path = write_image(tmp_path / "locked.jpg", COLOUR)
    path.chmod(0)
    if os.geteuid() == 0:  # root reads any file: make open() refuse it as it would for any other user
        real_open = builtins.open

        def refusing_open(file, *args, **kwargs):
            if str(file) == str(path):
                raise PermissionError(13, "Permission denied", str(file))
            return real_open(file, *args, **kwargs)

        monkeypatch.setattr(builtins, "open", refusing_open)
    assert "Permission denied" in decode_problem(path)


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


def test_a_decompression_bomb_is_a_problem(tmp_path, monkeypatch):
    path = write_image(tmp_path / "bomb.jpg", COLOUR, size=(100, 100))
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 4_000)  # PIL refuses over twice this: 10,000 > 8,000 pixels
    assert "DecompressionBombError" in decode_problem(path)


def test_crop_views_are_cut_from_a_square_a_seventh_larger():
    assert crop_side(320, 1) == 320 and crop_side(320, 5) == 366 and crop_side(224, 5) == 256
    assert crop_offsets(320, 1) == [(0, 0)]
    assert crop_offsets(224, 5) == [(16, 16), (0, 0), (0, 32), (32, 0), (32, 32)]
    batch = np.arange(2 * 6 * 6 * 3).reshape(2, 6, 6, 3)
    assert np.array_equal(centre_view(batch, 4), batch[:, 1:5, 1:5])
    assert np.array_equal(centre_view(batch, 6), batch)


def test_camera_jpegs_that_open_as_mpo_still_decode(tmp_path):
    plain, camera = tmp_path / "plain.jpg", tmp_path / "camera.jpg"
    Image.new("RGB", (30, 20), COLOUR).save(plain)
    Image.new("RGB", (30, 20), COLOUR).save(
        camera, format="MPO", save_all=True, append_images=[Image.new("RGB", (30, 20))]
    )
    assert Image.open(plain).format == "JPEG" and Image.open(camera).format == "MPO"  # through the JPEG plugin
    for path in (plain, camera):
        assert decode_problem(path) is None
        assert _close_to(load_resized(path, 16, "crop", "reduced"), COLOUR)


@pytest.mark.parametrize(
    ("fmt", "name"), [("TIFF", "TIFF"), ("EPS", "EPS"), ("PPM", "PPM"), ("ICO", "ICO"), ("TGA", None)]
)
def test_formats_outside_the_allow_list_are_problems_naming_them(tmp_path, fmt, name):
    path = tmp_path / "photo.jpg"
    if fmt == "EPS":  # Pillow would need Ghostscript to write one, and to read one: its header is enough here
        path.write_text("%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\nshowpage\n")
    else:
        Image.new("RGB", (30, 20), COLOUR).save(path, format=fmt)
    problem = decode_problem(path)
    if name:  # known by its first bytes: named
        assert (
            problem == f"ImageFormatError: looks like {name}, not an allowed image format (JPEG, PNG, GIF, WebP, BMP)"
        )
    else:  # TGA has no signature of its own (its first bytes may look like another format's): refused all the same
        assert problem.startswith(("UnidentifiedImageError: cannot identify image file", "ImageFormatError: "))
    with pytest.raises(UnidentifiedImageError):
        load_resized(path, 16)


@pytest.mark.parametrize("start", [b"\xff\xd8\xff", b"\x89PNG\r\n\x1a\n"])
def test_a_broken_file_of_an_allowed_format_keeps_pillows_reason_not_a_format_refusal(tmp_path, start):
    path = tmp_path / "photo.jpg"
    path.write_bytes(start + bytes(200))
    problem = decode_problem(path)
    assert problem and "not an allowed image format" not in problem
