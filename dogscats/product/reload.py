"""The model a server serves, reloaded when its folder changes (a dvc repro, dvc checkout or dvc artifacts get).

The folder's files are polled (stat: size, time and inode, cheap; DVC replaces files or links them from its cache,
which every file watcher sees differently, a stat never). A change is loaded once the files stop changing, checked
(the graph fits its settings and gives finite probabilities for a blank photo) in a thread, and swapped in with one
assignment: requests hold the model they started with. A folder that fails is refused: the old model keeps serving
and `problem` says why until a later change loads."""

import asyncio
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from dogscats.data.classifier_files import CAM_FILE, ONNX_MODEL, SETTINGS
from dogscats.product.classifier import Classifier, ModelError

log = logging.getLogger("uvicorn.error")  # printed as uvicorn prints its own lines

Fingerprint = tuple[tuple[str, int, int, int] | None, ...]


def fingerprint(folder: Path) -> Fingerprint:
    """The model files' (name, size, modification time, inode), None for a missing one: any rewrite moves it."""
    found = []
    for name in (SETTINGS, ONNX_MODEL, CAM_FILE):
        try:
            stat = os.stat(folder / name)
        except OSError:
            found.append(None)
            continue
        found.append((name, stat.st_size, stat.st_mtime_ns, stat.st_ino))
    return tuple(found)


def checked(folder: Path, threads: int = 0) -> Classifier:
    """The classifier in the folder, loaded and run once on a blank photo: ModelError when either fails or the
    probabilities are not a distribution over its classes."""
    classifier = Classifier.load(folder, threads)
    blank = [np.full((1, side, side, 3), 127, np.float32) for side in classifier.settings["sizes"].values()]
    p = classifier.probabilities(blank)
    if not np.isclose(p.sum(), 1, atol=1e-3):
        raise ModelError(f"{folder}: a blank photo's probabilities sum to {p.sum():.6g}, not 1")
    return classifier


@dataclass
class Serving:
    """The model being served, and the last refused folder's reason ("" when none)."""

    classifier: Classifier | None = None
    problem: str = ""


class ModelWatcher:
    """Holds the served classifier and swaps in a new one when the folder changes (watch() is its one task)."""

    def __init__(
        self,
        folder: Path,
        threads: int = 0,
        interval: float = 1.0,
        on_swap: Callable[[str], None] = lambda version: None,
        on_refuse: Callable[[str], None] = lambda problem: None,
    ):
        """folder: the exported classifier; threads: ONNX Runtime's intra-op threads (0: its default); interval:
        seconds between polls; on_swap, on_refuse: called with each newly served version, each refusal (metrics)."""
        self.folder, self.threads, self.interval = Path(folder), threads, interval
        self.on_swap, self.on_refuse = on_swap, on_refuse
        self.serving = Serving()
        self.seen: Fingerprint = ()

    def load(self) -> None:
        """Load the folder as it is now: served when it passes its checks, else refused (the old one stays)."""
        before = fingerprint(self.folder)
        try:
            classifier = checked(self.folder, self.threads)
        except Exception as err:  # ModelError, or a file replaced while it was read: refused, never the watcher's end
            self.seen = before
            old = self.serving.classifier.version if self.serving.classifier else "none"
            reason = str(err) if isinstance(err, ModelError) else f"{self.folder}: {type(err).__name__}: {err}"
            self.serving = Serving(self.serving.classifier, f"{' '.join(reason.split())} (still serving: {old})")
            log.error("model refused: %s", self.serving.problem)
            self.on_refuse(self.serving.problem)
            return
        self.seen = before
        self.serving = Serving(classifier)  # one assignment: a request reads the old or the new, never a mix
        log.info("serving model %s from %s", classifier.version, self.folder)
        self.on_swap(classifier.version)

    async def watch(self) -> None:
        """Forever: poll the folder; when it changed and then stayed the same for one interval, load it."""
        while True:
            await asyncio.sleep(self.interval)
            now = fingerprint(self.folder)
            if now == self.seen:
                continue
            await asyncio.sleep(self.interval)  # a copy or checkout in progress: wait until the files settle
            if fingerprint(self.folder) == now:
                await asyncio.to_thread(self.load)
