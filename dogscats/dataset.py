"""The raw Kaggle layout (train/cat.N.jpg, train/dog.N.jpg, test/N.jpg), the split manifest and the symlink tree."""

import hashlib
import os
import re
import sys
from pathlib import Path

import numpy as np
import pandas as pd

from dogscats.atomic import atomic_dir

CLASSES = ("cat", "dog")  # label index: 0 = cat, 1 = dog; the submission's label is p(dog)
TRAIN_NAME = re.compile(r"^(cat|dog)\.(\d+)\.jpe?g$", re.IGNORECASE)
TEST_NAME = re.compile(r"^(\d+)\.jpe?g$", re.IGNORECASE)
MANIFEST_COLUMNS = ["id", "file", "label", "split", "source", "problem", "md5"]


def scan_raw(raw: Path) -> tuple[pd.DataFrame, list[tuple[str, str]]]:
    """Read the raw layout: a frame of (id, label, source) rows, and (file, reason) for names that carry no label."""
    for sub in ("train", "test"):
        if not (raw / sub).is_dir():
            raise FileNotFoundError(f"{raw / sub}: missing; the raw data needs train/ and test/ (Kaggle layout)")
    rows, skipped = [], []
    for path in sorted((raw / "train").iterdir()):
        match = TRAIN_NAME.match(path.name)
        if match:
            rows.append((f"{match[1].lower()}.{match[2]}", match[1].lower(), "train", str(path)))
        elif not path.name.startswith("."):
            skipped.append((str(path), "name does not match cat.N.jpg or dog.N.jpg"))
    for path in sorted((raw / "test").iterdir()):
        match = TEST_NAME.match(path.name)
        if match:
            rows.append((str(int(match[1])), "", "test", str(path)))
        elif not path.name.startswith("."):
            skipped.append((str(path), "name does not match N.jpg"))
    frame = pd.DataFrame(rows, columns=["id", "label", "split", "source"])
    _check_structure(frame, raw)
    return frame, skipped


def _check_structure(frame: pd.DataFrame, raw: Path) -> None:
    """Stop on problems no amount of skipping fixes: an empty class or test set, duplicate ids."""
    train = frame[frame.split == "train"]
    for label in CLASSES:
        if not (train.label == label).any():
            raise ValueError(f"{raw / 'train'}: no {label} images ({label}.N.jpg)")
    if not (frame.split == "test").any():
        raise ValueError(f"{raw / 'test'}: no test images (N.jpg)")
    dup = frame[frame.duplicated(["split", "id"], keep=False)].groupby(["split", "id"]).source.apply(" and ".join)
    if len(dup):
        named = "; ".join(f"{split} id {id_}: {files}" for (split, id_), files in dup.head(10).items())
        raise ValueError(f"duplicate ids (one file per id, please): {named}")


def stratified_split(labels: pd.Series, val_fraction: float, seed: int) -> np.ndarray:
    """'train' or 'val' per row: a seeded shuffle within each class, the first round(n * val_fraction) to val."""
    rng = np.random.default_rng(seed)
    split = np.full(len(labels), "train", dtype=object)
    for label in CLASSES:
        positions = np.flatnonzero(labels.to_numpy() == label)
        chosen = rng.permutation(positions)[: int(round(len(positions) * val_fraction))]
        split[chosen] = "val"
    return split


def link_path(source: str, split: str, label: str, out: Path) -> Path:
    """Where an image appears in the symlink tree: train/<class>/, val/<class>/ or test/."""
    name = Path(source).name
    return out / split / name if split == "test" else out / split / label / name


def write_symlink_tree(manifest: pd.DataFrame, out: Path) -> None:
    """Link every image into the seed layout under out, with relative symlinks (nothing is copied)."""
    for sub in ("train/cat", "train/dog", "val/cat", "val/dog", "test"):
        (out / sub).mkdir(parents=True, exist_ok=True)
    for source, split, label in zip(manifest.source, manifest.split, manifest.label, strict=True):
        link = link_path(source, split, label, out)
        link.symlink_to(os.path.relpath(Path(source).resolve(), link.parent.resolve()))


def file_md5(path: Path | str) -> str:
    """The MD5 of a file's bytes (as DVC hashes files), or "" if it cannot be read."""
    digest = hashlib.md5()
    try:
        with open(path, "rb") as file:
            for block in iter(lambda: file.read(1 << 20), b""):
                digest.update(block)
    except OSError:
        return ""
    return digest.hexdigest()


def label_index(labels: pd.Series) -> np.ndarray:
    """Class names to 0 (cat) / 1 (dog); -1 where the label is unknown (test)."""
    return np.array([CLASSES.index(lb) if lb in CLASSES else -1 for lb in labels], dtype=np.int8)


def read_manifest(path: Path | str) -> pd.DataFrame:
    """The split manifest, ids and labels as strings."""
    return pd.read_csv(path, dtype=str, keep_default_na=False)


if __name__ == "__main__":  # rebuild the symlink tree from a manifest: python -m dogscats.dataset data/split.csv out
    manifest_path, tree = sys.argv[1:]
    with atomic_dir(tree) as tmp:
        write_symlink_tree(read_manifest(manifest_path), tmp)
