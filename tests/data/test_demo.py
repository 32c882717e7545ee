"""The built-in demo dataset: Kaggle layout, balanced answer key, byte-identical on every run."""

import hashlib

import pandas as pd

from dogscats.data.dataset import scan_raw
from dogscats.data.demo import generate_demo


def _digest(root):
    return {p.relative_to(root): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(root.rglob("*.*"))}


def test_demo_is_kaggle_layout_and_byte_identical(tmp_path):
    generate_demo(tmp_path / "a", train_per_class=3, test_count=4, seed=0)
    generate_demo(tmp_path / "b", train_per_class=3, test_count=4, seed=0)
    frame, skipped = scan_raw(tmp_path / "a")
    assert skipped == [] and (frame.split == "train").sum() == 6 and (frame.split == "test").sum() == 4
    key = pd.read_csv(tmp_path / "a" / "test_labels.csv")
    assert key.id.tolist() == [1, 2, 3, 4] and key.label.sum() == 2
    assert _digest(tmp_path / "a") == _digest(tmp_path / "b")
    generate_demo(tmp_path / "c", train_per_class=3, test_count=4, seed=1)
    assert _digest(tmp_path / "a") != _digest(tmp_path / "c")
