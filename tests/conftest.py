"""Shared fixtures: tiny generated images in the Kaggle layout, and a params.yaml to run stages against."""

import contextlib
import ctypes
import gc
import os
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

# Ray started by the tests listens on 127.0.0.1 only (on Linux it listens on every interface unless told it is not a
# cluster); read by Ray when it is imported, so set before any test imports it. The stages' subprocesses inherit it.
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
# A Ray pipeline that waits for CPUs it will never get fails after 5 minutes, not Ray's default half hour.
os.environ.setdefault("RAY_DATA_EXECUTION_NO_PROGRESS_TIMEOUT_S", "300")

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "data"


def write_image(path: Path, colour: tuple[int, int, int], size: tuple[int, int] = (40, 32), fmt: str = "JPEG") -> Path:
    """A small image of one colour plus seeded noise."""
    rng = np.random.default_rng(zlib.crc32(f"{path.name}{colour}".encode()))
    pixels = np.clip(np.array(colour) + rng.normal(0, 10, (size[1], size[0], 3)), 0, 255).astype(np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path, format=fmt)
    return path


def bomb_png(path: Path) -> Path:
    """A small PNG whose header claims 20000 x 10000 pixels: Pillow refuses it (DecompressionBombError)."""
    write_image(path, (1, 2, 3), (8, 8), fmt="PNG")
    data = bytearray(path.read_bytes())
    ihdr = struct.pack(">II", 20000, 10000) + bytes(data[24:29])
    data[16:29] = ihdr
    data[29:33] = struct.pack(">I", zlib.crc32(b"IHDR" + ihdr))
    path.write_bytes(bytes(data))
    return path


def make_kaggle_layout(root: Path, per_class: int = 10, n_test: int = 6) -> Path:
    """train/cat.N.jpg (reddish), train/dog.N.jpg (bluish), test/N.jpg (alternating), the Kaggle layout."""
    for n in range(1, per_class + 1):
        write_image(root / "train" / f"cat.{n}.jpg", (200, 60, 40))
        write_image(root / "train" / f"dog.{n}.jpg", (40, 60, 200))
    for n in range(1, n_test + 1):
        write_image(root / "test" / f"{n}.jpg", (200, 60, 40) if n % 2 else (40, 60, 200))
    return root


# The stage entry points' arguments, as dvc.yaml passes them (paths relative to the project).
PREPARE_ARGS = (
    "data/overrides.csv",
    "data/prepared",
    "data/split.csv",
    "data/answer_key.csv",
    "data/prepare_report.csv",
    "metrics/prepare.json",
)
SUBMIT_ARGS = (
    "data/split.csv",
    "data/predictions.csv",
    "data/answer_key.csv",
    "data/submission.csv",
    "metrics/submit.json",
)
PREDICT_ARGS = (
    "data/split.csv",
    "data/head_predictions.csv",
    "data/finetune_predictions.csv",
    "data/predictions.csv",
    "data/oof_predictions.csv",
    "metrics/predict.json",
)
EXPORT_ARGS = (
    "data/features",
    "models/head",
    "models/finetuned",
    "metrics/predict.json",
    "metrics/train.json",
    "models/classifier",
)
EVALUATE_ARGS = (
    "data/split.csv",
    "data/oof_predictions.csv",
    "metrics/roc.csv",
    "metrics/confusion.csv",
    "metrics/calibration.csv",
    "metrics/per_class.csv",
    "metrics/worst_mistakes.html",
    "metrics/evaluate.json",
    "models/classifier",
)


def finetune_args(backbone: str) -> tuple[str, ...]:
    """The finetune stage's arguments when finetune.backbone is backbone."""
    return (
        "data/split.csv",
        f"data/features/{backbone}.h5",
        "models/finetuned",
        "data/finetune_predictions.csv",
        "metrics/live/finetune",
        "metrics/finetune.json",
    )


TRAIN_ARGS = (
    "data/split.csv",
    "data/features",
    "models/head",
    "data/head_predictions.csv",
    "metrics/live/train",
    "metrics/train.json",
)


def run_stage(name: str, *args: str) -> None:
    """Run a stage as dvc.yaml does, `python -m stages.<name>` in a process of its own, in the current folder (the
    project) with this checkout's code: its TensorFlow graphs and memory end with it, not with the test session."""
    env = {**os.environ, "PYTHONPATH": str(REPO), "TF_CPP_MIN_LOG_LEVEL": "2"}
    result = subprocess.run([sys.executable, "-m", f"stages.{name}", *args], capture_output=True, text=True, env=env)
    assert result.returncode == 0, f"stages.{name} {' '.join(args)}: {result.stderr[-3000:]}"


def default_params() -> dict:
    """The repository's params.yaml."""
    return yaml.safe_load((REPO / "params.yaml").read_text())


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """The slow tests first, in their order, then the others: with worker processes (pytest -n) the longest start
    early and the short ones fill in around them, rather than one long test running alone at the end."""
    items.sort(key=lambda item: item.get_closest_marker("slow") is None)


RELEASE_ABOVE = 1 << 31  # bytes resident (2 GiB) past which a test module's end gives memory back


def _resident_bytes() -> int:
    """This process's resident memory in bytes (Linux); elsewhere as if over the threshold."""
    try:
        return int(Path("/proc/self/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError):
        return RELEASE_ABOVE


def _release() -> None:
    """Give back what finished tests left behind, once the process has grown past RELEASE_ABOVE: Keras's graphs and
    layer names (clear_session), cycles (gc), and the heap glibc keeps once freed (malloc_trim)."""
    if _resident_bytes() < RELEASE_ABOVE:  # a release costs a second or two (gc over TensorFlow's objects): only
        return  # where the process has grown
    if "keras" in sys.modules:
        sys.modules["keras"].backend.clear_session()
    gc.collect()
    with contextlib.suppress(OSError, AttributeError):  # not glibc: its allocator keeps what it keeps
        ctypes.CDLL("libc.so.6").malloc_trim(0)


@pytest.fixture(scope="module", autouse=True)
def release_memory():
    """After each test module, its leftovers go back to the system (_release). Without it one pytest process grew past
    15 GB over the suite."""
    yield
    _release()


@pytest.fixture(autouse=True)
def release_after_a_slow_test(request: pytest.FixtureRequest):
    """After each slow test too: they load real weights and run whole stages, and a worker that ran several in one
    module reached 4.04 GiB (issue 35 allows 4)."""
    yield
    if request.node.get_closest_marker("slow") is not None:
        _release()


@pytest.fixture
def kaggle_raw(tmp_path: Path) -> Path:
    """A tiny raw dataset in the Kaggle layout."""
    return make_kaggle_layout(tmp_path / "raw")


@pytest.fixture
def in_project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """Run in tmp_path with a params.yaml (defaults, random weights); returns a function to write params."""
    monkeypatch.chdir(tmp_path)

    def write_params(**sections) -> dict:
        params = default_params()
        params["features"]["weights"] = None
        for name, values in sections.items():
            if isinstance(values, dict):
                params[name].update(values)
            else:
                params[name] = values
        (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
        return params

    return write_params
