"""A built-in demo dataset in the Kaggle layout, drawn from shapes and textures, byte-identical on every run.

Cats are drawn with pointed ears, slit-pupil eyes, whiskers and a striped (tabby) coat; dogs with floppy ears,
a big dark nose, a tongue and a spotted coat. Colours, sizes, poses and backgrounds vary within each class, so
the class is visible in shape and texture (what an ImageNet CNN sees), not in one colour.
"""

from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image, ImageDraw, ImageFilter

from dogscats.base.atomic import atomic_path, write_csv

CAT_COATS = [(214, 140, 60), (130, 130, 135), (60, 55, 50), (235, 225, 210), (190, 120, 70)]
DOG_COATS = [(150, 100, 55), (235, 230, 220), (40, 35, 30), (200, 160, 100), (120, 75, 40)]


def _jitter(rng: np.random.Generator, colour: tuple[int, int, int], amount: int = 25) -> tuple[int, int, int]:
    """A colour moved a little at random."""
    return tuple(int(np.clip(c + rng.integers(-amount, amount + 1), 0, 255)) for c in colour)


def _background(rng: np.random.Generator, width: int, height: int) -> Image.Image:
    """A soft two-colour gradient with noise: a floor, a sofa, a lawn."""
    top, bottom = rng.integers(60, 230, size=3), rng.integers(40, 200, size=3)
    t = np.linspace(0, 1, height)[:, None, None]
    img = top * (1 - t) + bottom * t + rng.normal(0, 8, size=(height, width, 3))
    return Image.fromarray(np.clip(np.broadcast_to(img, (height, width, 3)), 0, 255).astype(np.uint8))


def _coat(rng: np.random.Generator, size: tuple[int, int], base: tuple, animal: str) -> Image.Image:
    """Fur texture: tabby stripes for cats, round spots for dogs."""
    width, height = size
    coat = Image.new("RGB", size, base)
    draw = ImageDraw.Draw(coat)
    dark = tuple(max(0, c - 90) for c in base)
    if animal == "cat":
        period = int(rng.integers(8, 16))
        for x in range(-height, width + height, period):
            wobble = int(rng.integers(-4, 5))
            draw.line([(x, 0), (x + wobble + height // 3, height)], fill=dark, width=max(2, period // 3))
    else:
        for _ in range(int(rng.integers(6, 14))):
            cx, cy, r = rng.integers(0, width), rng.integers(0, height), int(rng.integers(5, 16))
            draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=dark)
    return coat.filter(ImageFilter.GaussianBlur(1))


def draw_animal(rng: np.random.Generator, animal: str) -> Image.Image:
    """One picture of a cat or a dog."""
    width, height = int(rng.integers(200, 321)), int(rng.integers(180, 301))
    img = _background(rng, width, height)
    coats = CAT_COATS if animal == "cat" else DOG_COATS
    base = _jitter(rng, coats[rng.integers(len(coats))])
    scale = rng.uniform(0.8, 1.1) * min(width, height) / 240
    cx, cy = width / 2 + rng.uniform(-20, 20), height / 2 + rng.uniform(-10, 25)
    # Body and head, cut out of the coat texture.
    mask = Image.new("L", (width, height), 0)
    mdraw = ImageDraw.Draw(mask)
    body = [cx - 85 * scale, cy + 5 * scale, cx + 85 * scale, cy + 110 * scale]
    head_r = 55 * scale
    head = [cx - head_r, cy - 75 * scale - head_r, cx + head_r, cy - 75 * scale + head_r]
    mdraw.ellipse(body, fill=255)
    mdraw.ellipse(head, fill=255)
    hx, hy = cx, cy - 75 * scale
    if animal == "cat":  # pointed ears, on top of the head
        for side in (-1, 1):
            ear = [(hx + side * 15 * scale, hy - 45 * scale), (hx + side * 55 * scale, hy - 25 * scale)]
            ear.append((hx + side * 45 * scale, hy - 95 * scale))
            mdraw.polygon(ear, fill=255)
    img.paste(_coat(rng, (width, height), base, animal), (0, 0), mask)
    draw = ImageDraw.Draw(img)
    dark = tuple(max(0, c - 110) for c in base)
    if animal == "dog":  # floppy ears hanging beside the head
        for side in (-1, 1):
            ex = hx + side * 52 * scale
            draw.ellipse([ex - 18 * scale, hy - 35 * scale, ex + 18 * scale, hy + 45 * scale], fill=dark)
    eye_colour = (120, 200, 60) if animal == "cat" else (70, 45, 25)
    for side in (-1, 1):
        ex, ey, er = hx + side * 22 * scale, hy - 10 * scale, 9 * scale
        draw.ellipse([ex - er, ey - er, ex + er, ey + er], fill=eye_colour)
        pupil = 2.5 * scale if animal == "cat" else 5 * scale  # slit pupils for cats
        draw.ellipse([ex - pupil, ey - er + 1, ex + pupil, ey + er - 1], fill=(10, 10, 10))
    if animal == "cat":
        draw.polygon(
            [(hx - 6 * scale, hy + 12 * scale), (hx + 6 * scale, hy + 12 * scale), (hx, hy + 20 * scale)],
            fill=(230, 140, 150),
        )
        for side in (-1, 1):
            for dy in (-4, 2, 8):
                start = (hx + side * 10 * scale, hy + 18 * scale)
                draw.line([start, (hx + side * 60 * scale, hy + (18 + dy * 2) * scale)], fill=(245, 245, 245), width=1)
    else:
        draw.ellipse([hx - 14 * scale, hy + 8 * scale, hx + 14 * scale, hy + 28 * scale], fill=(15, 10, 10))
        draw.ellipse([hx - 9 * scale, hy + 32 * scale, hx + 9 * scale, hy + 55 * scale], fill=(220, 80, 100))
    if rng.random() < 0.5:
        img = img.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    return img


def _save_jpeg(img: Image.Image, path: Path) -> None:
    """Save as JPEG atomically, with fixed settings so that the bytes are the same on every run."""
    with atomic_path(path, suffix=".jpg") as tmp:
        img.save(tmp, format="JPEG", quality=90)


def generate_demo(out: Path, train_per_class: int, test_count: int, seed: int) -> None:
    """Write train/cat.N.jpg, train/dog.N.jpg, test/N.jpg and the test answer key test_labels.csv."""
    rng = np.random.default_rng(seed)
    for animal in ("cat", "dog"):
        for n in range(1, train_per_class + 1):
            _save_jpeg(draw_animal(rng, animal), out / "train" / f"{animal}.{n}.jpg")
    labels = rng.permutation(np.arange(test_count) % 2)  # balanced, shuffled: 1 = dog
    for n, label in enumerate(labels, start=1):
        _save_jpeg(draw_animal(rng, "dog" if label else "cat"), out / "test" / f"{n}.jpg")
    write_csv(out / "test_labels.csv", pd.DataFrame({"id": np.arange(1, test_count + 1), "label": labels}))
