"""Benchmark the pipeline's bookkeeping at the real competition's size: 25,000 training and 12,500 test images.

    python bench/scale.py [--train 25000 --test 12500 --side 64 --keep DIR]

Generates small JPEGs in the Kaggle layout outside a fresh copy of the project (as ../shared is outside the repo),
then times `dvc repro prepare`, a no-op `dvc status prepare`, and `dvc status` of the whole pipeline (every stage's
dependencies hashed or looked up, with the features stages not run: they would take hours on a CPU). It reports the
DVC cache's size and file count beside the raw images' size, and how many files in the cache are images.
"""

import argparse
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import yaml
from PIL import Image

REPO = Path(__file__).resolve().parents[1]


def write_images(raw: Path, n_train: int, n_test: int, side: int) -> None:
    """n_train/2 cats and dogs and n_test test images, each a distinct seeded noise JPEG of side x side."""
    rng = np.random.default_rng(0)
    names = [f"train/{c}.{i}.jpg" for c in ("cat", "dog") for i in range(n_train // 2)]
    names += [f"test/{i}.jpg" for i in range(1, n_test + 1)]
    for sub in ("train", "test"):
        (raw / sub).mkdir(parents=True)
    for name in names:
        Image.fromarray(rng.integers(0, 256, (side, side, 3), dtype=np.uint8)).save(raw / name, quality=75)


def du(path: Path) -> tuple[int, int]:
    """Bytes and number of regular files under a path (symlinks not followed)."""
    files = [p for p in path.rglob("*") if p.is_file() and not p.is_symlink()]
    return sum(p.stat().st_size for p in files), len(files)


def timed(cwd: Path, *cmd: str) -> tuple[float, str]:
    """Seconds a command took, and its output; stops the benchmark if it fails."""
    start = time.perf_counter()
    result = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True)
    if result.returncode:
        sys.exit(f"{' '.join(cmd)} failed:\n{result.stdout}{result.stderr}")
    return time.perf_counter() - start, result.stdout + result.stderr


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--train", type=int, default=25_000)
    parser.add_argument("--test", type=int, default=12_500)
    parser.add_argument("--side", type=int, default=64, help="image side in pixels")
    parser.add_argument("--keep", type=Path, help="work here and keep it (default: a temporary folder, removed)")
    args = parser.parse_args()
    work = args.keep or Path(tempfile.mkdtemp(prefix="dogscats-scale-"))
    raw, project = work / "raw", work / "project"
    try:
        start = time.perf_counter()
        write_images(raw, args.train, args.test, args.side)
        raw_bytes, raw_files = du(raw)
        print(f"generated {raw_files} images, {raw_bytes / 2**20:.1f} MiB, in {time.perf_counter() - start:.0f} s")

        project.mkdir()
        for name in ("stages", "dogscats"):
            shutil.copytree(REPO / name, project / name, ignore=shutil.ignore_patterns("__pycache__"))
        for name in ("dvc.yaml", ".gitignore", ".dvcignore"):
            shutil.copy(REPO / name, project)
        params = yaml.safe_load((REPO / "params.yaml").read_text())
        params["data"]["raw"] = str(raw)
        (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
        timed(project, "git", "init", "-q")
        timed(project, "dvc", "init", "-q", "--force")

        seconds, output = timed(project, "dvc", "repro", "prepare")
        print(f"dvc repro prepare: {seconds:.1f} s")
        print("  " + next(line for line in output.splitlines() if line.startswith("prepare: {")))
        for run in (1, 2, 3):
            seconds, output = timed(project, "dvc", "status", "prepare")
            assert "up to date" in output, output
            print(f"dvc status prepare (no-op, up to date), run {run}: {seconds:.1f} s")
        for run in (1, 2):
            seconds, _ = timed(project, "dvc", "status")
            print(f"dvc status, whole pipeline (features and later stages not run), run {run}: {seconds:.1f} s")

        cache_bytes, cache_files = du(project / ".dvc" / "cache")
        images_in_cache = sum(
            1 for p in (project / ".dvc" / "cache").rglob("*") if p.is_file() and p.read_bytes()[:2] == b"\xff\xd8"
        )
        tree_bytes, tree_files = du(project / "data" / "prepared")
        links = sum(1 for p in (project / "data" / "prepared").rglob("*") if p.is_symlink())
        print(f"raw images: {raw_bytes / 2**20:.1f} MiB in {raw_files} files")
        print(f"DVC cache: {cache_bytes / 2**20:.2f} MiB in {cache_files} files, {images_in_cache} of them images")
        print(f"data/prepared: {links} symlinks, {tree_files} regular files ({tree_bytes} bytes)")
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
