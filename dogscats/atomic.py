"""Atomic outputs: write to a temporary file beside the target, then rename, so a killed stage leaves no half file."""

import json
import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pandas as pd


@contextmanager
def atomic_path(target: Path | str, suffix: str = "") -> Iterator[Path]:
    """Yield a temporary path in the target's folder; on success rename it onto the target, on failure remove it."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp{suffix}")
    try:
        yield tmp
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)


@contextmanager
def atomic_dir(target: Path | str) -> Iterator[Path]:
    """Yield a temporary folder beside the target; on success swap it in for the target, on failure remove it."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp, old = (target.with_name(f".{target.name}.{os.getpid()}.tmp-{kind}") for kind in ("new", "old"))
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        yield tmp
        if target.exists():
            target.rename(old)
        try:
            tmp.rename(target)
        except OSError:
            old.rename(target)  # put the previous output back
            raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.rmtree(old, ignore_errors=True)


def write_json(path: Path | str, data: dict) -> None:
    """Write a JSON file (metrics, reports) atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")


def write_csv(path: Path | str, frame: pd.DataFrame) -> None:
    """Write a CSV file atomically, without the index."""
    with atomic_path(path) as tmp:
        frame.to_csv(tmp, index=False)
