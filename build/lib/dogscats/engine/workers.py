"""The frozen networks on every core: W worker processes, each with its own ONNX Runtime session of T intra-op
threads and its own decoding, fed batches of photos and giving their results back in order.

One session cannot use many cores well: an operator split over 16 threads waits for the slowest, and the photos are
decoded beside it. W sessions of T threads each keep every core busy with whole batches (docs/engine.md has the
figures and the rule `features.workers: auto` follows). This module imports neither TensorFlow nor Keras, so a worker
starts in about a second with what it needs: numpy, Pillow and ONNX Runtime.

The contract a worker (here, or a Ray actor) follows: an `Extraction` (small, picklable) says how photos become
features; `open_session(extraction)` opens the engine once per process; `extract_photos(extraction, session, paths,
usable)` turns one batch of photos into features, exactly as the in-process path does (`batch_features`)."""

import os
import pickle
import sys
import threading
import types
from collections import deque
from collections.abc import Callable, Hashable, Iterable, Iterator
from concurrent.futures import Future, ProcessPoolExecutor, ThreadPoolExecutor
from dataclasses import dataclass
from multiprocessing.context import SpawnContext, SpawnProcess
from pathlib import Path
from typing import Any

import numpy as np

from dogscats.base.vocabulary import AUTO, LAYOUT, LAYOUT_HELP
from dogscats.data.images import load_resized, view_slices
from dogscats.networks.preprocessing import PREPROCESSING

WORKERS_FROM_CORES = 8  # auto's workers start here: one session's threads scale well on fewer (docs/engine.md)
WORKER_MEMORY = 1.5 * 2**30  # bytes a worker may take: Lite2 at 320, batch 32, TTA peaks at 1.0 GiB (docs/engine.md)
VIEWS = ("all", "centre", "mirrored centre")  # Extraction.view


class EngineModel:
    """A converted model in an ONNX Runtime session: float32 batches in, float32 outputs out. threads: its intra-op
    threads (0: ONNX Runtime's default, one per physical core); path: the file it was loaded from, if any."""

    def __init__(self, onnx_bytes: bytes, name: str, threads: int = 0, path: Path | None = None) -> None:
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.inter_op_num_threads = 1  # one operator at a time; intra-op threads are the physical cores
        options.intra_op_num_threads = threads
        options.use_deterministic_compute = True
        # Threads sleep between operators instead of spinning, leaving those moments to the image decoders
        # (image_batches): measured faster end to end on 2 cores, the bare model 3% slower (docs/engine.md).
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self.name, self.path = name, path
        self.session = ort.InferenceSession(onnx_bytes, options, providers=["CPUExecutionProvider"])
        self.input_name = self.session.get_inputs()[0].name

    @property
    def input_size(self) -> int:
        """The side of the square images the model takes."""
        return int(self.session.get_inputs()[0].shape[1])

    def __call__(self, x: np.ndarray) -> np.ndarray:
        """The model's output for a batch."""
        return self.session.run(None, {self.input_name: np.ascontiguousarray(x, dtype=np.float32)})[0]


def cached_engine_model(path: Path, name: str, threads: int = 0) -> EngineModel | None:
    """The engine model cached at path, marked as used now (kept by conversion.remove_unused); None when there is
    none, or when the file is damaged (with a warning: its maker makes it again)."""
    if not path.exists():
        return None
    try:
        model = EngineModel(path.read_bytes(), name, threads, path)
    except Exception as err:  # ONNX Runtime raises its own types for a damaged file
        print(f"warning: {path}: {err}; making it again", file=sys.stderr)
        return None
    os.utime(path)
    return model


@dataclass(frozen=True)
class Extraction:
    """Everything one process needs to turn photo paths into features (small and picklable: the model's path, not
    its bytes)."""

    model: str  # the converted ONNX file (engine.engine_model's cache): preprocessed views -> features
    side: int  # photos are loaded at this side (images.crop_side of the model's input and the crops)
    resize: str  # images.RESIZE_POLICIES
    decode: str  # images.DECODE_POLICIES
    tta: bool  # each view's features averaged with its mirror image's
    crops: int  # 1 or 5 views per photo (images.crop_offsets)
    threads: int  # the session's intra-op threads (and the decoding threads of a worker)
    preprocessing: str  # the backbone's input scaling, a name of preprocessing.PREPROCESSING
    view: str = "all"  # VIEWS: every view averaged (features), or the centre view alone, plain or mirrored (trunks)


def open_session(extraction: Extraction, model: bytes | None = None) -> EngineModel:
    """The extraction's engine session, with its intra-op threads: on the model's bytes when given (a Ray actor's,
    from the object store: nothing is written to its node), else on its file's."""
    path = Path(extraction.model)
    return EngineModel(path.read_bytes() if model is None else model, path.stem, extraction.threads, path)


def extract_photos(extraction: Extraction, session: EngineModel, paths: list[str], usable: list[bool]) -> np.ndarray:
    """float32 features of the photos, in order (an unusable one is a black square; a decoding error names the
    file), as the features stage's in-process path computes them for that batch."""
    images = decode_photos(paths, usable, extraction.side, extraction.resize, extraction.decode, extraction.threads)
    preprocess = PREPROCESSING[extraction.preprocessing]
    return batch_features(session, preprocess, images, extraction.tta, extraction.crops, extraction.view)


def pipelined_features(
    extraction: Extraction, session: EngineModel, paths: list[str], usable: list[bool], batch_size: int
) -> np.ndarray:
    """float32 features of many photos, batch_size at a time, each batch's photos decoded while the engine runs the
    one before (image_batches: low-priority decoders, one per session thread); the same rows as extract_photos
    gives batch by batch."""
    preprocess = PREPROCESSING[extraction.preprocessing]
    e = extraction
    images = image_batches(paths, usable, e.side, e.resize, e.decode, batch_size, threads=e.threads)
    return np.concatenate([batch_features(session, preprocess, x, e.tta, e.crops, e.view) for x in images])


def batch_features(
    extractor: Callable[[np.ndarray], np.ndarray],
    preprocess: Callable[[np.ndarray], np.ndarray],
    images: np.ndarray,
    tta: bool = False,
    crops: int = 1,
    view: str = "all",
) -> np.ndarray:
    """float32 features of a batch of uint8 images loaded at crop_side: each view's (crop_offsets) averaged, with tta
    each averaged with its mirror image's; or with view "centre" or "mirrored centre", that view's outputs alone."""
    if view not in VIEWS:
        raise ValueError(f"unknown view {view!r}; choose one of {', '.join(VIEWS)}")
    views = view_slices(extractor.input_size, crops, tta or view == "mirrored centre", centre_only=view != "all")
    views = views[-1:] if view == "mirrored centre" else views[:1] if view == "centre" else views
    x = preprocess(np.asarray(images, dtype=np.float32))
    return sum(extractor(x[:, rows, columns]) for rows, columns in views) / len(views)


def decode_photos(
    paths: list[str], usable: list[bool], side: int, resize: str, decode: str, threads: int = 1
) -> np.ndarray:
    """uint8 (N, side, side, 3) photos in order, decoded by `threads` threads; an unusable one is a black square."""
    jobs = [(path, ok, side, resize, decode) for path, ok in zip(paths, usable, strict=True)]
    if threads <= 1 or len(jobs) <= 1:
        return np.stack([load_or_blank(*job) for job in jobs])
    with ThreadPoolExecutor(threads, "decode") as pool:
        return np.stack(list(pool.map(lambda job: load_or_blank(*job), jobs)))


def load_or_blank(path: str, usable: bool, size: int, resize: str, decode: str) -> np.ndarray:
    """One image as uint8 (size, size, 3), or a black square when it is unusable; a decoding error names the file."""
    if not usable:
        return np.zeros((size, size, 3), np.uint8)
    try:
        return load_resized(path, size, resize, decode)  # PIL releases the GIL while decoding
    except Exception as err:
        err.add_note(f"while decoding {path}")
        raise


def image_batches(
    files: list[str],
    usable: list[bool],
    size: int,
    resize: str,
    decode: str,
    batch_size: int,
    ahead: int = 2,
    threads: int | None = None,
) -> Iterator[np.ndarray]:
    """Batches of uint8 (B, size, size, 3) images in file order, decoded `ahead` batches in advance by `threads`
    threads (default one per core) at the lowest priority (ahead_batches); an unusable image is a black square."""
    jobs = ((path, ok, size, resize, decode) for path, ok in zip(files, usable, strict=True))
    for images in ahead_batches(load_or_blank, jobs, batch_size, ahead, threads):
        yield np.stack(images)


def ahead_batches(
    function: Callable[..., Any], items: Iterable[tuple], batch_size: int, ahead: int = 2, threads: int | None = None
) -> Iterator:
    """Lists of function(*item), batch_size items each, in order, computed `ahead` batches in advance by `threads`
    threads (default one per core) at the lowest priority.

    On CPUs the network and the decoders share the cores. At normal priority a decoder thread preempts one of the
    engine's threads and the whole operator waits for it; at the lowest priority the decoders run in the moments the
    engine leaves a core idle, and at full speed only when the engine waits for a batch (docs/engine.md)."""
    pending: deque[Future] = deque()
    todo = iter(items)
    with ThreadPoolExecutor(threads or os.cpu_count() or 1, "decode", initializer=lowest_priority) as pool:
        try:
            while True:
                for item in todo:
                    pending.append(pool.submit(function, *item))
                    if len(pending) >= ahead * batch_size:
                        break
                if not pending:
                    return
                yield [pending.popleft().result() for _ in range(min(batch_size, len(pending)))]
        finally:
            for future in pending:
                future.cancel()  # a consumer that stops early does not wait for the photos it will not use


def lowest_priority() -> None:
    """Give the calling thread the lowest CPU priority (nice 19; Linux sets it per thread; elsewhere nothing)."""
    if sys.platform.startswith("linux"):
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 19)


def usable_cores() -> int:
    """The cores this process may run on (its CPU affinity where the system tells it, else every core)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def available_memory() -> int | None:
    """Bytes of memory available to new processes (Linux's MemAvailable), or None where it is not known."""
    try:
        with open("/proc/meminfo") as f:
            fields = dict(line.split(":", 1) for line in f)
        return int(fields["MemAvailable"].split()[0]) * 1024
    except (OSError, KeyError, ValueError):
        return None


def parse_layout(setting: str) -> tuple[int, int] | None:
    """(W, T) of a WxT setting such as 2x1, None for auto; ValueError for anything else."""
    if setting == AUTO:
        return None
    match = LAYOUT.fullmatch(str(setting))
    if not match:
        raise ValueError(f"{LAYOUT_HELP}, got {setting!r}")
    return int(match[1]), int(match[2])


def auto_layout(cores: int, memory: int | None = None) -> tuple[int, int]:
    """The W x T that `auto` chooses: below WORKERS_FROM_CORES cores (1, 0), one session in the stage's own process
    with ONNX Runtime's default threads (one per physical core, pinned to it: on 2 cores it beat 2 workers and 2
    unpinned threads); from there one single-threaded worker per core, as many as `memory` (bytes) holds at
    WORKER_MEMORY each, the cores shared among them (docs/engine.md has the measurements behind the rule)."""
    cores = max(1, cores)
    if cores < WORKERS_FROM_CORES:
        return 1, 0
    workers = cores if memory is None else max(1, min(cores, int(memory // WORKER_MEMORY)))
    return workers, cores // workers


def worker_layout(setting: str, cores: int | None = None, memory: int | None = None) -> tuple[int, int]:
    """(W, T) for features.workers or --workers: WxT as given, or auto's choice for the cores and the memory available
    (by default this machine's)."""
    layout = parse_layout(setting)
    if layout:
        return layout
    return auto_layout(cores or usable_cores(), memory if memory is not None else available_memory())


def ordered_map(
    setup: Callable[[Any], Any],
    task: Callable[..., Any],
    config: Hashable,
    items: Iterable[tuple],
    workers: int,
    ahead: int | None = None,
) -> Iterator[Any]:
    """task(config, state, *item) for each item, in `workers` spawned processes each holding state = setup(config)
    (opened on its first item), results in the items' order with at most `ahead` items in flight (default 2 per
    worker), so memory stays flat however many items come. A worker's error is raised here, its notes (the file it
    was decoding) kept; the workers stop when the consumer stops early. setup, task and config must pickle."""
    ahead = ahead or 2 * workers
    pending: deque[Future] = deque()
    with ProcessPoolExecutor(workers, mp_context=_SpawnWithoutMain()) as pool:
        try:
            for item in items:
                pending.append(pool.submit(_run_in_worker, setup, task, config, item))
                if len(pending) >= ahead:
                    yield pending.popleft().result()
            while pending:
                yield pending.popleft().result()
        finally:
            for future in pending:
                future.cancel()  # an early stop or an error: queued batches are dropped, not computed


_STATE: dict[Hashable, Any] = {}  # in a worker process: the state of its one config (its engine session)


def _run_in_worker(setup: Callable[[Any], Any], task: Callable[..., Any], config: Hashable, item: tuple) -> Any:
    """In a worker: run the task with this process's state for the config, opened the first time."""
    try:
        if config not in _STATE:
            _STATE.clear()
            _STATE[config] = setup(config)
        return task(config, _STATE[config], *item)
    except Exception as err:
        try:
            pickle.dumps(err)
        except Exception:  # an exception that cannot travel back: its text does
            notes = "".join(f"\n{note}" for note in getattr(err, "__notes__", []))
            raise RuntimeError(f"{type(err).__name__}: {err}{notes}") from None
        raise


class _SpawnWithoutMainProcess(SpawnProcess):
    """A spawned process that does not import the parent's __main__ module (a stage script importing TensorFlow):
    the spawn start method would run it in every worker, seconds and hundreds of MiB each."""

    @staticmethod
    def _Popen(process_obj):  # noqa: N802 (multiprocessing's name)
        main = sys.modules["__main__"]
        sys.modules["__main__"] = types.ModuleType("__main__")  # no file, no spec: the child imports no main
        try:
            return SpawnProcess._Popen(process_obj)
        finally:
            sys.modules["__main__"] = main


class _SpawnWithoutMain(SpawnContext):
    """The spawn context (not fork: the parent runs TensorFlow's and ONNX Runtime's threads), its processes
    started without the parent's __main__."""

    Process = _SpawnWithoutMainProcess
