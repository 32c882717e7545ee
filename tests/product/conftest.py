"""The server's fixtures: a hand-built classifier folder and photos that differ from one another."""

from pathlib import Path

import pytest

from ..conftest import write_image
from .test_classifier import write_model


@pytest.fixture
def model(tmp_path: Path) -> Path:
    """A two-backbone classifier folder (test_classifier's hand-built graph)."""
    return write_model(tmp_path / "model")


@pytest.fixture
def photos(tmp_path: Path) -> list[Path]:
    """Five small photos of different colours, sizes and formats."""
    colours = [(200, 60, 40), (40, 90, 250), (30, 30, 30), (240, 240, 240), (90, 200, 90)]
    return [
        write_image(tmp_path / "photos" / f"p{i}.{'png' if i % 2 else 'jpg'}", c, (20 + 9 * i, 40 - 3 * i), fmt)
        for i, c in enumerate(colours)
        for fmt in ["PNG" if i % 2 else "JPEG"]
    ]
