"""HDF5 feature files: per split (train: the labelled images, test) the float32 GAP features, labels and file ids,
in manifest order; the attributes name the backbone, the classes (labels index them) and how the images were turned
into features (PREPROCESSING), which the exported classifier reads so it cannot disagree with its head's features."""

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np

SPLITS = ("train", "test")  # train: every labelled image (the folds are in the manifest)
# The attributes that say how an image becomes a feature vector: what the exported classifier must do again.
PREPROCESSING = ("backbone", "input_size", "weights", "pooling", "resize", "decode", "tta", "crops", "precision")


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


def read_split(path: Path | str, split: str) -> SplitFeatures:
    """One split of a feature file; labels are -1 where unknown (test)."""
    with h5py.File(path, "r") as h5:
        group = h5[split]
        ids = [s.decode() for s in group["ids"][:]]
        return SplitFeatures(ids, group["features"][:], group["labels"][:], group["usable"][:])


def split_layout(path: Path | str, split: str) -> tuple[list[str], int, np.ndarray]:
    """One split's ids, feature dimension and usable flags, without reading its features."""
    with h5py.File(path, "r") as h5:
        group = h5[split]
        return [s.decode() for s in group["ids"][:]], int(group["features"].shape[1]), group["usable"][:]


def read_feature_blocks(path: Path | str, split: str, rows: int = 65536) -> Iterator[tuple[int, np.ndarray]]:
    """One split's features block by block: (first row, block of at most `rows` rows)."""
    with h5py.File(path, "r") as h5:
        features = h5[split]["features"]
        for start in range(0, len(features), rows):
            yield start, features[start : start + rows]


def backbone_of(path: Path | str) -> str:
    """The name of the backbone whose features a file holds."""
    with h5py.File(path, "r") as h5:
        return str(h5.attrs["backbone"])


def write_preprocessing(h5: h5py.File, backbone: str, input_size: int, features_cfg: dict) -> None:
    """Record how the images became features (PREPROCESSING) in a feature file's attributes."""
    h5.attrs.update(backbone=backbone, input_size=input_size, weights=str(features_cfg["weights"]))
    h5.attrs.update({key: features_cfg[key] for key in ("pooling", "resize", "decode", "tta", "crops", "precision")})


def preprocessing_of(path: Path | str) -> dict:
    """How a file's images became features: PREPROCESSING's attributes as Python values (weights None for random)."""
    with h5py.File(path, "r") as h5:
        missing = [key for key in PREPROCESSING if key not in h5.attrs]
        if missing:
            raise ValueError(f"{path}: no {', '.join(missing)} attributes (an older feature file); rerun its stage")
        values = {key: h5.attrs[key] for key in PREPROCESSING}
    out = {key: (v.item() if isinstance(v, np.generic) else str(v)) for key, v in values.items()}
    out["weights"] = None if out["weights"] == "None" else out["weights"]
    return out


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


INT8_MODEL = "int8_model"  # the int8 network that made the features (features.precision int8): its ONNX bytes


def write_int8_model(h5: h5py.File, onnx_bytes: bytes) -> None:
    """Keep the int8 network in the feature file, so that the export builds the classifier from the very network that
    made the features (dogscats.engine.quantize.with_int8_backbone)."""
    h5.create_dataset(INT8_MODEL, data=np.frombuffer(onnx_bytes, np.uint8))


def int8_model_of(path: Path | str) -> bytes:
    """The int8 network's ONNX bytes from a feature file made in int8; ValueError naming the file otherwise."""
    with h5py.File(path, "r") as h5:
        if INT8_MODEL not in h5:
            raise ValueError(f"{path}: no int8 network in it (made with precision {h5.attrs.get('precision')!r})")
        return h5[INT8_MODEL][:].tobytes()
