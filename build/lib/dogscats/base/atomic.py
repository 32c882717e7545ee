"""Atomic outputs: write to a temporary file beside the target, then rename, so a killed stage leaves no half file.

Temporary names start with a dot and contain the writer's process id and `.tmp` (`.dvcignore` hides them from DVC), so
concurrent writers of one target never share a name; a killed run's leftovers are removed by the next write of the same
target, while a live process's temporary file is left alone."""

import json
import os
import re
import shutil
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pandas as pd

SHARED_OBJECT_ID = re.compile(r'("shared_object_id": )(\d+)')


@contextmanager
def atomic_path(target: Path | str, suffix: str = "") -> Iterator[Path]:
    """Yield a temporary path in the target's folder; on success rename it onto the target, on failure remove it."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    remove_leftovers(target)
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
    remove_leftovers(target)
    tmp, old = (target.with_name(f".{target.name}.{os.getpid()}.tmp-{kind}") for kind in ("new", "old"))
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


def remove_leftovers(target: Path) -> None:
    """Delete temporary files and folders that a killed write of this target left behind (not a live writer's)."""
    ours = re.compile(rf"\.{re.escape(target.name)}\.(\d+)\.tmp")  # .<name>.<pid>.tmp...: not another target's
    for leftover in target.parent.glob(f".{target.name}.*.tmp*"):
        match = ours.match(leftover.name)
        if not match or (int(match[1]) != os.getpid() and _process_alive(int(match[1]))):
            continue
        if leftover.is_dir():
            shutil.rmtree(leftover, ignore_errors=True)
        else:
            leftover.unlink(missing_ok=True)


def _process_alive(pid: int) -> bool:
    """Whether a process with this id runs on this machine."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    try:  # a zombie (ended, not yet reaped) holds its id but writes nothing
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):  # no /proc: not Linux
        return True


def save_keras_model(model, target: Path | str) -> None:
    """Save a Keras model atomically and byte-reproducibly: the same weights give the same file (and DVC hash).

    A .keras file is a zip; Keras stamps it with the save time (zip entry times, `date_saved`) and numbers shared
    objects by their memory address (`shared_object_id`): both are replaced here by fixed values."""
    with atomic_path(target, suffix=".keras") as tmp:
        model.save(tmp)
        with zipfile.ZipFile(tmp) as saved:
            entries = [(info, saved.read(info)) for info in saved.infolist()]
        with zipfile.ZipFile(tmp, "w") as fixed:
            for info, data in entries:
                if info.filename == "metadata.json":
                    data = json.dumps({**json.loads(data), "date_saved": "unrecorded"}).encode()
                if info.filename == "config.json":
                    data = _renumber_shared_objects(data.decode()).encode()
                stamped = zipfile.ZipInfo(info.filename, date_time=(1980, 1, 1, 0, 0, 0))
                stamped.compress_type, stamped.external_attr = info.compress_type, info.external_attr
                fixed.writestr(stamped, data)


def _renumber_shared_objects(config: str) -> str:
    """Replace each distinct shared_object_id (a memory address) by its order of first appearance: 0, 1, ..."""
    numbers: dict[str, int] = {}
    return SHARED_OBJECT_ID.sub(lambda m: f"{m[1]}{numbers.setdefault(m[2], len(numbers))}", config)


def write_json(path: Path | str, data: dict) -> None:
    """Write a JSON file (metrics, reports) atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")


def write_csv(path: Path | str, frame: pd.DataFrame, sep: str = ",") -> None:
    """Write a CSV file (or another separator's) atomically, without the index."""
    with atomic_path(path) as tmp:
        frame.to_csv(tmp, index=False, sep=sep)
