"""The exported classifier: image files in, class probabilities out, as the pipeline computes its test predictions.

    from dogscats import Classifier
    probabilities, errors = Classifier.load("models/classifier").predict(["cat.jpg", "dog.png"])

It needs numpy, Pillow, SciPy and ONNX Runtime, not TensorFlow: models/classifier/ holds classifier.onnx (every
backbone, the flip TTA, the head and any fine-tuned models, from dogscats.export) and settings.json (the classes, each
backbone's input size, the decode and resize policies, the blend weight, temperature and clip bounds)."""

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from dogscats.blending import final_p
from dogscats.images import load_resized
from dogscats.scoring import as_matrix

SETTINGS = "settings.json"
ONNX_MODEL = "classifier.onnx"
KERAS_MODEL = "classifier.keras"
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".gif", ".webp", ".bmp")


@dataclass(frozen=True)
class Classifier:
    """An exported classifier: its ONNX Runtime session and settings."""

    session: object
    settings: dict

    @property
    def classes(self) -> list[str]:
        """The class names, in the order of the probability columns."""
        return self.settings["classes"]

    @classmethod
    def load(cls, folder: Path | str) -> "Classifier":
        """Load models/classifier (or any folder the export stage wrote)."""
        import onnxruntime as ort

        folder = Path(folder)
        for name in (SETTINGS, ONNX_MODEL):
            if not (folder / name).is_file():
                raise FileNotFoundError(f"{folder / name} not found: export a classifier with dvc repro export")
        settings = json.loads((folder / SETTINGS).read_text())
        options = ort.SessionOptions()
        options.use_deterministic_compute = True
        session = ort.InferenceSession(str(folder / ONNX_MODEL), options, providers=["CPUExecutionProvider"])
        return cls(session, settings)

    def images(self, path: Path | str) -> list[np.ndarray]:
        """One image decoded and fitted for each backbone, float32 in [0, 255]; PIL's error when it cannot be read."""
        s = self.settings
        return [load_resized(path, size, s["resize"], s["decode"]).astype(np.float32) for size in s["sizes"].values()]

    def probabilities(self, batches: list[np.ndarray]) -> np.ndarray:
        """(N, K) probabilities of image batches (one per backbone): blended, calibrated and clipped as in predict."""
        s = self.settings
        names = [x.name for x in self.session.get_inputs()]
        p_head, p_finetuned = (
            as_probabilities(p) for p in self.session.run(None, dict(zip(names, batches, strict=True)))
        )
        return final_p(p_head, p_finetuned, s["blend"], s["temperature"], s["clip_low"], s["clip_high"])

    def predict(self, paths: list[Path | str], batch_size: int = 16) -> tuple[np.ndarray, list[str]]:
        """(N, K) probabilities for image files, and per file the reason it could not be read ("" if it could);
        the rows of unreadable files are NaN."""
        p = np.full((len(paths), len(self.classes)), np.nan)
        errors = [""] * len(paths)
        for rows, batch_errors, probabilities in self.batches(paths, batch_size):
            for i, error in zip(rows, batch_errors, strict=True):
                errors[i] = error
            ok = [i for i, error in zip(rows, batch_errors, strict=True) if not error]
            p[ok] = probabilities
        return p, errors

    def batches(self, paths: list[Path | str], batch_size: int) -> Iterator[tuple[range, list[str], np.ndarray]]:
        """Per batch of files: their positions, their errors, and the probabilities of those that could be read."""
        for start in range(0, len(paths), batch_size):
            rows = range(start, min(start + batch_size, len(paths)))
            decoded, errors = [], []
            for i in rows:
                try:
                    decoded.append(self.images(paths[i]))
                    errors.append("")
                except Exception as err:  # PIL raises many types (OSError, UnidentifiedImageError, ...)
                    errors.append(f"{type(err).__name__}: {err}".replace("\n", " "))
            if decoded:
                stacked = [np.stack(images) for images in zip(*decoded, strict=True)]
                yield rows, errors, self.probabilities(stacked)
            else:
                yield rows, errors, np.zeros((0, len(self.classes)))


def as_probabilities(outputs: np.ndarray) -> np.ndarray:
    """A model's outputs as (N, K) float64 class probabilities: a sigmoid's single column p becomes (1 - p, p)."""
    return as_matrix(outputs[:, 0].astype(np.float64)) if outputs.shape[1] == 1 else outputs.astype(np.float64)


def image_files(paths: list[Path | str]) -> list[Path]:
    """The files given, and the image files (by suffix) found recursively in the folders given, sorted per folder."""
    found = []
    for path in map(Path, paths):
        if path.is_dir():
            found += sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
        else:
            found.append(path)
    return found
