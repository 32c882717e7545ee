"""Atomic outputs: a failed write leaves the previous output whole and no temporary files behind."""

import subprocess
import sys
import time
import zipfile

import keras
import numpy as np
import pytest

from dogscats.base.atomic import atomic_dir, atomic_path, save_keras_model

from ..conftest import REPO

DEAD_PID = 99_999_999  # above Linux's largest process id: no process has it


def test_atomic_path_keeps_the_old_file_on_failure(tmp_path):
    target = tmp_path / "out.txt"
    target.write_text("old")
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        tmp.write_text("half")
        raise RuntimeError("killed")
    assert target.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["out.txt"]


def test_atomic_dir_swaps_in_the_new_folder(tmp_path):
    target = tmp_path / "models"
    (target / "stale").mkdir(parents=True)
    with atomic_dir(target) as tmp:
        (tmp / "a.keras").write_text("new")
    assert [p.name for p in target.iterdir()] == ["a.keras"] and [p.name for p in tmp_path.iterdir()] == ["models"]


def test_atomic_dir_keeps_the_old_folder_on_failure(tmp_path):
    target = tmp_path / "models"
    target.mkdir()
    (target / "a.keras").write_text("old")
    with pytest.raises(RuntimeError), atomic_dir(target) as tmp:
        (tmp / "a.keras").write_text("half")
        raise RuntimeError("killed")
    assert (target / "a.keras").read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["models"]


def test_a_killed_writes_leftovers_are_removed_by_the_next_write(tmp_path):
    target = tmp_path / "x.h5"
    (tmp_path / f".x.h5.{DEAD_PID}.tmp.h5").write_text("left by a SIGKILLed run")
    (tmp_path / f".x.h5.{DEAD_PID}.tmp-new").mkdir()
    (tmp_path / f".y.h5.{DEAD_PID}.tmp.h5").write_text("another target's: kept")
    (tmp_path / f".x.h5.keras.{DEAD_PID}.tmp").write_text("target x.h5.keras's: kept")
    with atomic_path(target, suffix=".h5") as tmp:
        tmp.write_text("whole")
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        f".x.h5.keras.{DEAD_PID}.tmp",
        f".y.h5.{DEAD_PID}.tmp.h5",
        "x.h5",
    ]


def test_a_concurrent_writer_of_the_same_target_keeps_its_temporary_file(tmp_path):
    target, ready, done = tmp_path / "w.h5", tmp_path / "ready", tmp_path / "done"
    writer = f"""
import time
from pathlib import Path
from dogscats.base.atomic import atomic_path
with atomic_path(Path({str(target)!r})) as tmp, open(tmp, "w") as f:
    f.write("first")
    f.flush()
    Path({str(ready)!r}).touch()
    while not Path({str(done)!r}).exists():
        time.sleep(0.01)
    f.write(" writer, whole")
"""
    first = subprocess.Popen([sys.executable, "-c", writer], cwd=REPO, stderr=subprocess.PIPE, text=True)
    while not ready.exists() and first.poll() is None:
        time.sleep(0.01)
    with atomic_path(target) as tmp:  # this process starts writing the same target meanwhile
        tmp.write_text("second writer")
    done.touch()
    assert first.wait() == 0, first.stderr.read()
    assert target.read_text() == "first writer, whole"  # both succeeded; the last to finish wins
    assert sorted(p.name for p in tmp_path.iterdir()) == ["done", "ready", "w.h5"]


def _head() -> keras.Model:
    """A small functional model, seeded, with fixed names: two calls build equal models from distinct objects."""
    keras.utils.set_random_seed(0)
    inputs = keras.Input((3,), name="features")
    return keras.Model(
        inputs, keras.layers.Dense(1, name="p")(keras.layers.Dropout(0.5, name="drop")(inputs)), name="head"
    )


def test_keras_models_are_saved_byte_for_byte_reproducibly(tmp_path):
    first, second = _head(), _head()
    save_keras_model(first, tmp_path / "a.keras")
    time.sleep(2.1)  # zip entry times have a 2 s resolution
    save_keras_model(second, tmp_path / "b.keras")
    with zipfile.ZipFile(tmp_path / "b.keras") as saved:
        assert b'"shared_object_id": 0' in saved.read("config.json")  # memory addresses renumbered
    assert (tmp_path / "a.keras").read_bytes() == (tmp_path / "b.keras").read_bytes()
    loaded = keras.models.load_model(tmp_path / "b.keras")
    assert np.array_equal(loaded.get_weights()[0], first.get_weights()[0])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.keras", "b.keras"]
