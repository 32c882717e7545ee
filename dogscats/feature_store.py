"""HDF5 feature files: per split (train: the labelled images, test) the float32 GAP features, labels and file ids,
in manifest order; the attributes name the backbone and the classes (labels index them)."""

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np

SPLITS = ("train", "test")  # train: every labelled image (the folds are in the manifest)


@dataclass
class SplitFeatures:
    """One split's rows: image ids, features (N, D), labels (-1 unknown), usable (False: image did not decode)."""

    ids: list[str]
    features: np.ndarray
    labels: np.ndarray
    usable: np.ndarray


def write_split(
    h5: h5py.File,
    split: str,
    ids: list[str],
    labels: np.ndarray,
    usable: list[bool],
    batches: Iterable[np.ndarray],
    dim: int,
) -> None:
    """Create a split's datasets and fill the features batch by batch, never holding them all in memory."""
    group = h5.create_group(split)
    group.create_dataset("ids", data=np.array(ids, dtype=object), dtype=h5py.string_dtype())
    group.create_dataset("labels", data=np.asarray(labels, dtype=np.int16))
    group.create_dataset("usable", data=np.asarray(usable, dtype=bool))
    chunks = (min(256, len(ids)), dim) if ids else None
    features = group.create_dataset("features", shape=(len(ids), dim), dtype=np.float32, chunks=chunks)
    start = 0
    for batch in batches:
        features[start : start + len(batch)] = batch
        start += len(batch)
    if start != len(ids):
        raise RuntimeError(f"{split}: wrote {start} feature rows for {len(ids)} images")


def read_labels(path: Path | str, split: str) -> np.ndarray:
    """Only the labels of one split (no features read)."""
    with h5py.File(path, "r") as h5:
        return h5[split]["labels"][:]


def read_split(path: Path | str, split: str) -> SplitFeatures:
    """One split of a feature file; labels are -1 where unknown (test)."""
    with h5py.File(path, "r") as h5:
        group = h5[split]
        ids = [s.decode() for s in group["ids"][:]]
        return SplitFeatures(ids, group["features"][:], group["labels"][:], group["usable"][:])


def backbone_of(path: Path | str) -> str:
    """The name of the backbone whose features a file holds."""
    with h5py.File(path, "r") as h5:
        return str(h5.attrs["backbone"])


def classes_of_file(path: Path | str) -> list[str]:
    """The class names a file's labels index."""
    with h5py.File(path, "r") as h5:
        return [str(c) for c in h5.attrs["classes"]]


def shared_classes(paths: list[Path]) -> list[str]:
    """The class names every feature file's labels index; a file with other classes is stale and stops the run."""
    classes = classes_of_file(paths[0])
    for path in paths[1:]:
        if classes_of_file(path) != classes:
            raise ValueError(f"{path}: classes {classes_of_file(path)}, but {paths[0]} has {classes}; rerun features")
    return classes
