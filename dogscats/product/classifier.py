"""The exported classifier: image files in, class probabilities out, as the pipeline computes its test predictions.

    from dogscats import Classifier
    probabilities, errors = Classifier.load("models/classifier").predict(["cat.jpg", "dog.png"])

It needs numpy, Pillow, pydantic and ONNX Runtime, not TensorFlow nor SciPy: models/classifier/ holds classifier.onnx
(every backbone, the flip TTA, the head and any fine-tuned models, from dogscats.models.export; one input per backbone,
image_<backbone>, and two outputs, the head's probabilities then the fine-tuned models') and settings.json (the
classes, each backbone's input side, the decode and resize policies, the blend weight, temperature and clip bounds).
Both are checked at load: a folder that is not such a classifier raises ModelError, one line naming the file and
every problem."""

import hashlib
import io
import json
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

import numpy as np
from pydantic import Field, ValidationInfo, field_validator

from dogscats.base.backbone_sizes import MIN_SIZE
from dogscats.base.schema import Section, problems
from dogscats.base.scoring import as_probabilities
from dogscats.base.vocabulary import DECODE_POLICIES, RESIZE_POLICIES
from dogscats.data.classifier_files import CAM_FILE, INPUT_PREFIX, ONNX_MODEL, OUTPUTS, SETTINGS
from dogscats.data.images import load_resized, unreadable
from dogscats.engine.workers import ahead_batches, ordered_map
from dogscats.models.calibration import TEMPERATURE_RANGE, final_p

# Folders are searched for these; .tif and .tiff too, so that they get a row saying TIFF is not read (not skipped).
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".gif", ".webp", ".bmp", ".tif", ".tiff")


class ModelError(ValueError):
    """A model folder that is not a classifier the export stage wrote: the message is one line."""


ClassName = Annotated[str, Field(min_length=1)]
Fraction = Annotated[float, Field(ge=0, le=1)]
Epoch = Annotated[int, Field(ge=0)]


class Settings(Section):
    """settings.json, as stages/export.py writes it."""

    classes: Annotated[list[ClassName], Field(min_length=2)]
    sizes: Annotated[dict[str, Annotated[int, Field(ge=MIN_SIZE)]], Field(min_length=1)]
    resize: Literal[RESIZE_POLICIES]
    decode: Literal[DECODE_POLICIES]
    blend: Fraction
    temperature: Annotated[float, Field(ge=TEMPERATURE_RANGE[0], le=TEMPERATURE_RANGE[1])]  # the range searched
    clip_low: Fraction
    clip_high: Fraction
    head_epoch: Epoch
    epoch: Epoch
    precision: Literal["float32", "int8"] = "float32"  # the backbones' (int8: the features stages' own networks)

    @field_validator("classes")
    @classmethod
    def _distinct(cls, classes: list[str]) -> list[str]:
        if len(set(classes)) < len(classes):
            raise ValueError("distinct class names")
        return classes

    @field_validator("clip_high")
    @classmethod
    def _clip_around_chance(cls, high: float, info: ValidationInfo) -> float:
        if "classes" in info.data and "clip_low" in info.data:  # else their own errors are reported
            k, low = len(info.data["classes"]), info.data["clip_low"]
            if not low < 1 / k < high:
                raise ValueError(f"above 1/K = {1 / k:.4g} ({k} classes), clip_low below it (it is {low})")
        return high


@dataclass(frozen=True)
class Classifier:
    """An exported classifier: its ONNX Runtime session and settings."""

    session: object
    settings: dict
    folder: Path | None = None  # where it was loaded from: worker processes load it again
    version: str = ""  # a content hash of the files loaded (model_version): workers check theirs against it
    cam: bytes = b""  # cam.json's bytes, as loaded with the graph (explain reads the head's weights from them)

    @property
    def classes(self) -> list[str]:
        """The class names, in the order of the probability columns."""
        return self.settings["classes"]

    @classmethod
    def load(cls, folder: Path | str, threads: int = 0, version: str = "") -> "Classifier":
        """Load models/classifier (or any folder the export stage wrote), its session with `threads` intra-op threads
        (0: ONNX Runtime's default); ModelError when it is not one, or when a version is given and its files are not
        that version (the folder changed since: a new export)."""
        folder = Path(folder)
        found = {}
        for name in (SETTINGS, ONNX_MODEL):
            try:
                found[name] = (folder / name).read_bytes()
            except OSError:
                raise ModelError(f"{folder / name} not found: export a classifier with dvc repro export") from None
        cam = (folder / CAM_FILE).read_bytes() if (folder / CAM_FILE).is_file() else b""
        loaded = model_version(found[SETTINGS], found[ONNX_MODEL], cam)
        if version and loaded != version:
            raise ModelError(f"{folder} changed while it was in use (a new export?); run again to use the new model")
        settings = read_settings(folder / SETTINGS, found[SETTINGS])
        session = onnx_session(folder / ONNX_MODEL, threads, found[ONNX_MODEL])
        mismatch = graph_mismatch(session, settings)
        if mismatch:
            raise ModelError(f"{folder / ONNX_MODEL} does not fit {folder / SETTINGS}: {mismatch}")
        return cls(session, settings, folder, loaded, cam)

    def images(self, path: Path | str | bytes) -> list[np.ndarray]:
        """One image (a file, or a file's bytes) decoded and fitted for each backbone, float32 in [0, 255]; PIL's error
        when it cannot be read."""
        s = self.settings
        fitted = [load_resized(_opened(path), size, s["resize"], s["decode"]) for size in s["sizes"].values()]
        return [image.astype(np.float32) for image in fitted]

    def images_or_error(self, path: Path | str | bytes) -> tuple[list[np.ndarray] | None, str]:
        """The photo's images (images), or None and why it cannot be read, on one line."""
        try:
            return self.images(path), ""
        except Exception as err:  # PIL raises many types (OSError, UnidentifiedImageError, ...)
            return None, unreadable(err)

    def probabilities(self, batches: list[np.ndarray]) -> np.ndarray:
        """(N, K) probabilities of image batches (one per backbone, in the order of settings' sizes): blended,
        calibrated and clipped as in predict."""
        s = self.settings
        feeds = {INPUT_PREFIX + name: batch for name, batch in zip(s["sizes"], batches, strict=True)}
        try:
            outputs = self.session.run(output_names(self.session), feeds)
        except Exception as err:  # ONNX Runtime raises its own types for a graph that fails as it runs
            raise ModelError(f"the model failed to run: {type(err).__name__}: {' '.join(str(err).split())}") from None
        p_head, p_finetuned = (as_probabilities(p) for p in outputs)
        p = final_p(p_head, p_finetuned, s["blend"], s["temperature"], s["clip_low"], s["clip_high"])
        if p.shape != (len(batches[0]), len(self.classes)) or not np.isfinite(p).all():
            raise ModelError(f"the model gave {p.shape} probabilities, not finite, one per class of {self.classes}")
        return p

    def predict(
        self, paths: list[Path | str], batch_size: int = 16, workers: tuple[int, int] = (1, 0)
    ) -> tuple[np.ndarray, list[str]]:
        """(N, K) probabilities for image files, and per file the reason it could not be read ("" if it could);
        the rows of unreadable files are NaN. workers: (W, T), as in batches."""
        p = np.full((len(paths), len(self.classes)), np.nan)
        errors = [""] * len(paths)
        for rows, batch_errors, probabilities in self.batches(paths, batch_size, workers):
            for i, error in zip(rows, batch_errors, strict=True):
                errors[i] = error
            ok = [i for i, error in zip(rows, batch_errors, strict=True) if not error]
            p[ok] = probabilities
        return p, errors

    def batches(
        self, paths: list[Path | str], batch_size: int, workers: tuple[int, int] = (1, 0)
    ) -> Iterator[tuple[range, list[str], np.ndarray]]:
        """Per batch of files, in order: their positions, their errors, and the probabilities of those that could be
        read. workers (W, T): with W 1, this session, the photos decoded ahead by low-priority threads
        (ahead_batches); else W worker processes, each loading this classifier with T intra-op threads and decoding
        its own batches."""
        starts = range(0, len(paths), batch_size)
        if workers[0] > 1 and self.folder is not None:
            job = (str(self.folder), workers[1], self.version)  # each worker checks it loads this very model
            chunks = ([paths[start : start + batch_size]] for start in starts)
            for start, (errors, p) in zip(starts, ordered_map(_load, _classify, job, chunks, workers[0]), strict=True):
                yield range(start, start + len(errors)), errors, p
            return
        decoded_batches = ahead_batches(self.images_or_error, ((path,) for path in paths), batch_size)
        for start, decoded in zip(starts, decoded_batches, strict=True):
            errors, p = self._classify_decoded(decoded)
            yield range(start, start + len(decoded)), errors, p

    def _classify_decoded(self, decoded: list[tuple[list[np.ndarray] | None, str]]) -> tuple[list[str], np.ndarray]:
        """The errors of a batch of decoded files, and the probabilities of those that could be read."""
        images = [found for found, error in decoded if not error]
        errors = [error for _, error in decoded]
        if not images:
            return errors, np.zeros((0, len(self.classes)))
        return errors, self.probabilities(stacked(images))

    def classify(self, paths: list[Path | str]) -> tuple[list[str], np.ndarray]:
        """One batch of files decoded here, one after another: their errors and the readable ones' probabilities."""
        return self._classify_decoded([self.images_or_error(path) for path in paths])


def stacked(images: list[list[np.ndarray]]) -> list[np.ndarray]:
    """Photos' images (each one per backbone, as Classifier.images gives them) as one batch per backbone."""
    return [np.stack(side) for side in zip(*images, strict=True)]


class Upload(io.BytesIO):
    """A photo's bytes as a file object, named as such in the decoder's errors (not by its address in memory)."""

    def __repr__(self) -> str:
        return "<uploaded bytes>"


def _opened(path: Path | str | bytes) -> Path | str | io.BytesIO:
    """What the decoder reads: a file's path as it is, bytes as a new file object (each decode reads from the start)."""
    return Upload(path) if isinstance(path, bytes) else path


def _load(job: tuple[str, int, str]) -> Classifier:
    """In a worker: the classifier of the folder, its session with the given threads, checked to be the version the
    run started with (ModelError otherwise: one run never mixes two models)."""
    folder, threads, version = job
    return Classifier.load(folder, threads, version)


def _classify(
    job: tuple[str, int, str], classifier: Classifier, paths: list[Path | str]
) -> tuple[list[str], np.ndarray]:
    """In a worker: one batch of files classified."""
    return classifier.classify(paths)


def model_version(settings: bytes, model: bytes, cam: bytes = b"") -> str:
    """A classifier's version: the SHA-256 of its settings', its graph's and its maps' (cam.json) bytes, hex."""
    parts = b"".join(hashlib.sha256(part).digest() for part in (settings, model, cam))
    return hashlib.sha256(parts).hexdigest()


def read_settings(path: Path, data: bytes) -> dict:
    """settings.json (path, and its bytes as read), checked; ModelError naming every problem, on one line."""
    try:
        settings = json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ModelError(f"{path}: cannot be read as JSON: {err}") from None
    found = problems(Settings, settings, "settings must be a JSON object")
    if found:
        raise ModelError(f"{path}: {'; '.join(found)}")
    return settings


def onnx_session(path: Path, threads: int, model: bytes) -> Any:
    """An ONNX Runtime session on the model's bytes (read from path), with `threads` intra-op threads (0: its
    default); ModelError if they are not a model it can run, or if the model keeps weights in external data files
    (none is read: their folder is an empty one)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.use_deterministic_compute = True
    options.intra_op_num_threads = threads
    try:
        with tempfile.TemporaryDirectory() as empty:
            # loaded from bytes, external data would be looked for in this folder (ONNX Runtime 1.21 on)
            options.add_session_config_entry("session.model_external_initializers_file_folder_path", empty)
            return ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])
    except Exception as err:  # ONNX Runtime raises its own types (Fail, InvalidGraph, ...), and OSError
        message = " ".join(str(err).split())
        if "external data" in message.lower():
            raise ModelError(f"{path}: uses external data files, which are not loaded ({message})") from None
        raise ModelError(f"{path}: ONNX Runtime cannot load it: {type(err).__name__}: {message}") from None


def graph_mismatch(session: Any, settings: dict) -> str:
    """How the graph's inputs and outputs disagree with the settings (one image_<backbone> input per entry of sizes,
    float (batch, side, side, 3); the two outputs with a column per class, or one for two classes), or "" when they
    agree."""
    inputs = {x.name: x for x in session.get_inputs()}
    wanted = {INPUT_PREFIX + name: side for name, side in settings["sizes"].items()}
    fits = set(inputs) == set(wanted) and all(
        inputs[name].type == "tensor(float)" and list(inputs[name].shape[1:]) == [side, side, 3]
        for name, side in wanted.items()
    )
    if not fits:
        graph = ", ".join(f"{x.name} {_shape(x.shape)}" for x in inputs.values())
        expected = ", ".join(f"{name}: {side}" for name, side in settings["sizes"].items())
        return f"the graph's inputs are {graph}; the settings' sizes are {expected} (inputs image_<backbone>)"
    outputs = {x.name: x.shape for x in session.get_outputs()}
    if not output_names(session):
        return f"the graph's outputs are {', '.join(outputs) or 'none'}, not two ({', '.join(OUTPUTS)})"
    k = len(settings["classes"])
    columns = [(outputs[name] or [None])[-1] for name in output_names(session)]  # K, 1 for a sigmoid, or free
    if not all(not isinstance(n, int) or n == (1 if k == 2 and n == 1 else k) for n in columns):
        shapes = ", ".join(f"{name} {_shape(outputs[name])}" for name in output_names(session))
        return f"the graph's outputs are {shapes}; the settings have {k} classes"
    return ""


def output_names(session: Any) -> list[str]:
    """The graph's outputs to read, p_head then p_finetuned (the export names them); [] when it lacks them."""
    return list(OUTPUTS) if set(OUTPUTS) <= {x.name for x in session.get_outputs()} else []


def _shape(shape: list) -> str:
    """An input's shape as text, a free dimension as ?."""
    return "x".join(str(d) if isinstance(d, int) else "?" for d in shape)


def image_files(paths: list[Path | str]) -> list[Path]:
    """The files given, and the image files (by suffix) found recursively in the folders given, sorted per folder;
    hidden files and folders (a dot first, such as macOS's ._ copies) are skipped."""
    found = []
    for path in map(Path, paths):
        if path.is_dir():
            found += sorted(
                p
                for p in path.rglob("*")
                if p.is_file()
                and p.suffix.lower() in IMAGE_SUFFIXES
                and not any(part.startswith(".") for part in p.relative_to(path).parts)
            )
        else:
            found.append(path)
    return found
