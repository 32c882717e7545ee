"""Atomic outputs: a failed write leaves the previous output whole and no temporary files behind."""

import time
import zipfile

import keras
import numpy as np
import pytest

from dogscats.atomic import atomic_dir, atomic_path, save_keras_model


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
    (tmp_path / ".x.h5.999.tmp.h5").write_text("left by a SIGKILLed run")
    (tmp_path / ".x.h5.998.tmp-new").mkdir()
    (tmp_path / ".y.h5.999.tmp.h5").write_text("another target's: kept")
    with atomic_path(target, suffix=".h5") as tmp:
        tmp.write_text("whole")
    assert sorted(p.name for p in tmp_path.iterdir()) == [".y.h5.999.tmp.h5", "x.h5"]


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
