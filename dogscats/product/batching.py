"""Batching across requests: photos that arrive together run through the network together.

Each request decodes its photos in a thread pool and submits them here one by one; one task collects what is
waiting (up to `max_batch` photos, waiting at most `window` seconds after the first for more), runs the network once
per model in the batch, in a thread of its own, and hands each photo its probabilities. A photo carries the model it
was decoded for, so a request that started before a reload finishes on the model it started with."""

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from dogscats.product.classifier import Classifier, ModelError, stacked


@dataclass
class Job:
    """One decoded photo waiting for its probabilities."""

    classifier: Classifier
    images: list[np.ndarray]  # one per backbone, as Classifier.images gives them
    done: asyncio.Future = field(default_factory=lambda: asyncio.get_running_loop().create_future())


def by_model(jobs: list[Job]) -> list[list[Job]]:
    """The jobs grouped by the model they were decoded for, in order of first arrival."""
    groups: dict[int, list[Job]] = {}
    for job in jobs:
        groups.setdefault(id(job.classifier), []).append(job)
    return list(groups.values())


class Batcher:
    """Collects jobs from concurrent requests into batches and runs them (run() is its one task)."""

    def __init__(self, window: float, max_batch: int, observe: Callable[[int, float], None] = lambda n, s: None):
        """window: seconds to wait for more photos after the first; max_batch: the most photos a run; observe: called
        with each run's photo count and seconds (the metrics)."""
        self.window, self.max_batch, self.observe = window, max_batch, observe
        self.queue: asyncio.Queue[Job] = asyncio.Queue()

    async def probabilities(self, classifier: Classifier, images: list[np.ndarray]) -> np.ndarray:
        """The (K,) probabilities of one decoded photo, computed in a batch with whatever else is waiting."""
        job = Job(classifier, images)
        await self.queue.put(job)
        return await job.done

    async def collect(self) -> list[Job]:
        """The next batch: the first job waited for, then every job already waiting, then more for up to `window`
        seconds, up to max_batch; jobs whose requests gave up (cancelled) are dropped."""
        jobs = [await self.queue.get()]
        deadline = time.monotonic() + self.window
        while len(jobs) < self.max_batch:
            if self.queue.empty():
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                try:
                    jobs.append(await asyncio.wait_for(self.queue.get(), left))
                except TimeoutError:
                    break
            else:
                jobs.append(self.queue.get_nowait())
        return [job for job in jobs if not job.done.done()]

    async def run(self) -> None:
        """Forever: collect a batch, run each model's part of it in a worker thread, resolve its jobs."""
        while True:
            for jobs in by_model(await self.collect()):
                start = time.perf_counter()
                try:
                    p = await asyncio.to_thread(jobs[0].classifier.probabilities, stacked([job.images for job in jobs]))
                    self.observe(len(jobs), time.perf_counter() - start)
                    for job, row in zip(jobs, p, strict=True):
                        if not job.done.done():
                            job.done.set_result(row)
                except Exception as err:  # a model that fails as it runs: the batch's requests get it, the loop goes on
                    for job in jobs:
                        if not job.done.done():
                            job.done.set_exception(ModelError(f"the model failed: {type(err).__name__}: {err}"))
