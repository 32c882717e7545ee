"""Atomic outputs: a failed write leaves the previous output whole and no temporary files behind."""

import pytest

from dogscats.atomic import atomic_dir, atomic_path


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
