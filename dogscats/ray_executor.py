"""Past one machine: the features stages' decode-and-extract (dogscats.workers) as a Ray Data pipeline.

The manifest's rows (index, path, usable) become a Ray dataset of one block per batch; a fixed pool of actors, each
opening one engine session when it starts, maps the batches (decoding the photos where it runs); the driver streams
the features back in manifest order (Ray Data's preserve_order) for the stage to write. Ray is the cluster at
RAY_ADDRESS, else one started on this machine by `ray start`, else one started for the run and stopped after it.
The photos must lie at the same path on every node; the engine's model travels through Ray's object store, so the
nodes need no copy of it. No TensorFlow is imported here, nor in the actors."""

import dataclasses
import logging
import math
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from dogscats.workers import Extraction, extract_photos, open_session

RAY_REQUIREMENT = "ray[data]==2.60.0"  # as requirements.txt pins it
RAY_MISSING = f'features.executor ray needs Ray, not installed here: pip install "{RAY_REQUIREMENT}"'
GPU_PROVIDER = "CUDAExecutionProvider"


def import_ray() -> Any:
    """The ray module, with Ray Data; when Ray is missing an ImportError naming the pip command."""
    try:
        import ray
        import ray.data
    except ImportError as err:
        raise ImportError(RAY_MISSING) from err
    return ray


@contextmanager
def ray_cluster(**init_args: Any) -> Iterator[Any]:
    """Ray for the block: as it is when already initialised; else the cluster at RAY_ADDRESS or one `ray start`ed on
    this machine, else a Ray started here (init_args: ray.init's, e.g. num_cpus) and shut down after the block."""
    ray = import_ray()
    if ray.is_initialized():
        yield ray
        return
    # The package travels with the job, so a node runs this very code: it needs the same packages, not a checkout.
    package = {"py_modules": [str(Path(__file__).parent)]}
    # ERROR: Ray's start-up warnings (token authentication and the like) would drown the stage's few lines.
    context = ray.init(include_dashboard=False, logging_level=logging.ERROR, runtime_env=package, **init_args)
    try:
        yield ray
    finally:
        ray.shutdown()
        del context


def actor_count(cluster_resources: dict, cpus_per_actor: float, gpus_per_actor: float = 0) -> int:
    """How many actors fill the cluster: one per `gpus_per_actor` GPUs when those are asked for, else one per
    `cpus_per_actor` CPUs; at least one."""
    if gpus_per_actor > 0:
        return max(1, math.floor(cluster_resources.get("GPU", 0) / gpus_per_actor))
    return max(1, math.floor(cluster_resources.get("CPU", 1) / cpus_per_actor))


def gpus_per_actor_for(cluster_resources: dict, onnxruntime_providers: Sequence[str]) -> float:
    """GPU actors (one GPU each) where the cluster has GPUs and ONNX Runtime runs on them (onnxruntime-gpu, here as on
    the nodes: one environment), else CPU actors (0)."""
    return 1.0 if cluster_resources.get("GPU", 0) >= 1 and GPU_PROVIDER in onnxruntime_providers else 0.0


class _ExtractorActor:
    """A Ray Data callable class: one engine session per actor, opened once, then batches of rows to features."""

    def __init__(self, extraction: Extraction, model: Any, gpu: bool) -> None:
        self.extraction = _with_local_model(extraction, model)
        self.session = open_session(self.extraction)
        if gpu:  # the actor holds a GPU (Ray sets CUDA_VISIBLE_DEVICES to it): the session runs there
            self.session.session.set_providers([GPU_PROVIDER, "CPUExecutionProvider"])

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """A batch of rows (index, path, usable) to its rows' features, with the index to check the order by."""
        paths = [str(p) for p in batch["path"]]
        features = extract_photos(self.extraction, self.session, paths, [bool(u) for u in batch["usable"]])
        return {"index": np.asarray(batch["index"]), "features": np.asarray(features, dtype=np.float32)}


def _with_local_model(extraction: Extraction, model: Any) -> Extraction:
    """The extraction with a model file on this node: its own when the path is here (cached conversions are named by
    content), else the bytes shipped through the object store, written to a temporary file."""
    if Path(extraction.model).is_file():
        return extraction
    if not isinstance(model, bytes):  # Ray Data hands the constructor's arguments over unresolved
        import ray

        model = ray.get(model)
    folder = Path(tempfile.mkdtemp(prefix="dogscats-ray-"))
    local = folder / Path(extraction.model).name
    local.write_bytes(model)
    return dataclasses.replace(extraction, model=str(local))


def ray_feature_batches(
    extraction: Extraction,
    paths: Sequence[str],
    usable: Sequence[bool],
    batch_size: int,
    actors: int | None = None,
    gpus_per_actor: float | None = None,
) -> Iterator[np.ndarray]:
    """Float32 features of the photos per batch, in manifest order, extracted by a pool of Ray actors on the Ray of
    ray_cluster; an unusable photo's row is its blank's. Each actor takes extraction.threads CPUs and, by default,
    a GPU where the cluster has them (gpus_per_actor_for); by default there are enough actors to fill the cluster
    (actor_count)."""
    if len(paths) != len(usable):
        raise ValueError(f"{len(paths)} paths but {len(usable)} usable flags")
    if not paths:
        return
    with ray_cluster() as ray:
        cpus, resources = float(extraction.threads), ray.cluster_resources()
        if gpus_per_actor is None:
            import onnxruntime

            gpus_per_actor = gpus_per_actor_for(resources, onnxruntime.get_available_providers())
        blocks = math.ceil(len(paths) / batch_size)  # one a batch
        actors = min(actors or actor_count(resources, cpus, gpus_per_actor), blocks)  # no actor without a batch
        model = ray.put(Path(extraction.model).read_bytes())
        rows = [
            {"index": i, "path": str(p), "usable": bool(u)} for i, (p, u) in enumerate(zip(paths, usable, strict=True))
        ]
        with _data_context(ray):
            dataset = ray.data.from_items(rows, override_num_blocks=blocks)
            dataset = dataset.map_batches(
                _ExtractorActor,
                fn_constructor_args=(extraction, model, gpus_per_actor > 0),
                batch_size=batch_size,
                batch_format="numpy",
                compute=ray.data.ActorPoolStrategy(size=actors),
                num_cpus=cpus,
                num_gpus=gpus_per_actor or None,
            )
            yield from _in_order(dataset.iter_batches(batch_size=None, batch_format="numpy"), len(paths))


def _in_order(batches: Iterator[dict[str, np.ndarray]], count: int) -> Iterator[np.ndarray]:
    """The batches' features, checked to come in row order and to number count rows in all."""
    expected = 0
    for batch in batches:
        index = batch["index"]
        if not np.array_equal(index, np.arange(expected, expected + len(index))):
            raise RuntimeError(f"Ray returned rows from {index[0]} where row {expected} was due: the order was lost")
        expected += len(index)
        yield batch["features"]
    if expected != count:
        raise RuntimeError(f"Ray returned {expected} rows for {count} photos")


@contextmanager
def _data_context(ray: Any) -> Iterator[None]:
    """Ray Data's options for the datasets created and run in the block (each seals a copy of them): blocks kept in
    order, no progress bars (the stage has its own) nor execution banners, its console log at ERROR (its file log in
    Ray's session folder keeps everything); the previous options restored after."""
    consoles = [h for h in logging.getLogger("ray.data").handlers if isinstance(h, logging.StreamHandler)]
    levels = [h.level for h in consoles]
    for handler in consoles:
        handler.setLevel(logging.ERROR)
    context = ray.data.DataContext.get_current()
    saved = (context.execution_options.preserve_order, context.enable_progress_bars, context.print_on_execution_start)
    context.execution_options.preserve_order = True
    context.enable_progress_bars = False
    context.print_on_execution_start = False
    try:
        yield
    finally:
        (context.execution_options.preserve_order, context.enable_progress_bars, context.print_on_execution_start) = (
            saved
        )
        for handler, level in zip(consoles, levels, strict=True):
            handler.setLevel(level)
