"""Past one machine: the features stages' decode-and-extract (dogscats.engine.workers) as a Ray Data pipeline.

The manifest's rows (index, path, usable) become a Ray dataset of blocks of a few batches each; a fixed pool of
actors, each opening one engine session when it starts, maps the blocks (decoding the photos where it runs, a batch
ahead of the session: workers.pipelined_features); the driver streams the features back in manifest order (Ray
Data's preserve_order) for the stage to write. Ray is the cluster at RAY_ADDRESS, else one started on this machine
by `ray start`, else one started for the run and stopped after it.
The photos must lie at the same path on every node; the engine's model travels through Ray's object store, and each
actor opens its session on those bytes, so no node needs, or is left with, a copy of it. No TensorFlow is imported
here, nor in the actors."""

import logging
import math
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from dogscats.engine.workers import Extraction, open_session, pipelined_features

RAY_REQUIREMENT = "ray[data]==2.60.0"  # as requirements.txt pins it
RAY_MISSING = f'features.executor ray needs Ray, not installed here: pip install "{RAY_REQUIREMENT}"'
GPU_PROVIDER = "CUDAExecutionProvider"
BLOCK_BATCHES = 8  # at most this many batches a block: an actor decodes a batch while its session runs the last
BLOCKS_PER_ACTOR = 4  # at least this many blocks an actor where the photos allow, so that the actors finish together


def import_ray() -> Any:
    """The ray module, with Ray Data; when Ray is missing an ImportError naming the pip command."""
    try:
        import ray
        import ray.data
    except ImportError as err:
        raise ImportError(RAY_MISSING) from err
    return ray


def runtime_env() -> dict:
    """Ray's runtime environment: the whole dogscats package travels with the job, so a node runs this very code (it
    needs the same packages installed, not a checkout)."""
    return {"py_modules": [str(Path(__file__).parents[1])]}  # dogscats/, not this layer's engine/


@contextmanager
def ray_cluster(**init_args: Any) -> Iterator[Any]:
    """Ray for the block: as it is when already initialised; else the cluster at RAY_ADDRESS or one `ray start`ed on
    this machine, else a Ray started here (init_args: ray.init's, e.g. num_cpus) and shut down after the block."""
    ray = import_ray()
    if ray.is_initialized():
        yield ray
        return
    # ERROR: Ray's start-up warnings (token authentication and the like) would drown the stage's few lines.
    context = ray.init(include_dashboard=False, logging_level=logging.ERROR, runtime_env=runtime_env(), **init_args)
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


def batches_per_block(batches: int, actors: int) -> int:
    """How many batches one Ray block (one actor call) holds: up to BLOCK_BATCHES, so that decoding overlaps the
    engine within a call, but few enough that each actor gets BLOCKS_PER_ACTOR blocks; at least one."""
    return max(1, min(BLOCK_BATCHES, batches // (actors * BLOCKS_PER_ACTOR)))


class _ExtractorActor:
    """A Ray Data callable class: one engine session per actor, opened once on the model's bytes from the object
    store (no file is written on its node), then blocks of rows to features."""

    def __init__(self, extraction: Extraction, model: Any, gpu: bool, batch_size: int) -> None:
        import ray

        self.extraction, self.batch_size = extraction, batch_size
        # Ray Data hands the constructor's arguments over unresolved: the object reference to the model's bytes.
        self.session = open_session(extraction, model if isinstance(model, bytes) else ray.get(model))
        self.node = ray.get_runtime_context().get_node_id()
        if gpu:  # the actor holds a GPU (Ray sets CUDA_VISIBLE_DEVICES to it): the session runs there
            self.session.session.set_providers([GPU_PROVIDER, "CPUExecutionProvider"])

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """A block of rows (index, path, usable) to its rows' features, batch_size photos at a time (the local
        executor's batches: a block starts at a multiple of batch_size), with the index to check the order by and the
        node that computed them."""
        paths, usable = [str(p) for p in batch["path"]], [bool(u) for u in batch["usable"]]
        features = pipelined_features(self.extraction, self.session, paths, usable, self.batch_size)
        index = np.asarray(batch["index"])
        nodes = np.full(len(index), self.node, dtype=object)
        return {"index": index, "features": np.asarray(features, dtype=np.float32), "node": nodes}


def ray_feature_batches(
    extraction: Extraction,
    paths: Sequence[str],
    usable: Sequence[bool],
    batch_size: int,
    actors: int | None = None,
    gpus_per_actor: float | None = None,
    parts: Sequence[int] = (),
    nodes: set[str] | None = None,
    model: bytes | None = None,
) -> Iterator[np.ndarray]:
    """Float32 features of the photos per block of batches (batches_per_block), in manifest order, extracted by a pool
    of Ray actors on the Ray of ray_cluster; an unusable photo's row is its blank's. Each actor takes
    extraction.threads CPUs and, by default, a GPU where the cluster has them (gpus_per_actor_for); by default there
    are enough actors to fill the cluster (actor_count). parts: the row counts of consecutive parts (the splits),
    each batched from its own first row as the local executor batches it (default: one part). nodes: where given,
    the ids of the Ray nodes that computed features are added to it. model: the engine model's bytes (default:
    extraction.model's), shipped to the actors through the object store."""
    if len(paths) != len(usable):
        raise ValueError(f"{len(paths)} paths but {len(usable)} usable flags")
    parts = list(parts) or [len(paths)]
    if sum(parts) != len(paths):
        raise ValueError(f"parts of {sum(parts)} rows for {len(paths)} paths")
    if not paths:
        return
    with ray_cluster() as ray:
        cpus, resources = float(extraction.threads), ray.cluster_resources()
        if gpus_per_actor is None:
            import onnxruntime

            gpus_per_actor = gpus_per_actor_for(resources, onnxruntime.get_available_providers())
        batches = sum(math.ceil(part / batch_size) for part in parts)
        actors = min(actors or actor_count(resources, cpus, gpus_per_actor), batches)  # no actor without a batch
        block_size = batch_size * batches_per_block(batches, actors)
        shipped = ray.put(Path(extraction.model).read_bytes() if model is None else model)
        rows = pd.DataFrame({"index": np.arange(len(paths)), "path": [str(p) for p in paths], "usable": usable})
        with _data_context(ray):
            # One data frame a block, of block_size rows from its part's start: a call's batches are the local ones.
            dataset = ray.data.from_pandas(_blocks(rows, parts, block_size))
            dataset = dataset.map_batches(
                _ExtractorActor,
                fn_constructor_args=(extraction, shipped, gpus_per_actor > 0, batch_size),
                batch_size=block_size,
                batch_format="numpy",
                compute=ray.data.ActorPoolStrategy(size=actors),
                num_cpus=cpus,
                num_gpus=gpus_per_actor or None,
            )
            yield from _in_order(dataset.iter_batches(batch_size=None, batch_format="numpy"), len(paths), nodes)


def _blocks(rows: pd.DataFrame, parts: Sequence[int], block_size: int) -> list[pd.DataFrame]:
    """The rows cut into blocks of block_size rows, counted from each part's first row (a part's last block short)."""
    ends = np.cumsum(parts)
    return [
        rows[i : min(i + block_size, end)]
        for start, end in zip(ends - parts, ends, strict=True)
        for i in range(start, end, block_size)
    ]


def ray_split_features(
    extraction: Extraction,
    splits: Sequence[tuple[Sequence[str], Sequence[bool]]],
    batch_size: int,
    nodes: set[str] | None = None,
) -> Iterator[Iterator[np.ndarray]]:
    """Per split (its paths and usable flags), its features per block as ray_feature_batches gives them, from one
    pipeline for all the splits (one actor pool to start, not one a split); read each split's whole before the next.
    nodes: as for ray_feature_batches."""
    paths = [str(path) for split_paths, _ in splits for path in split_paths]
    usable = [bool(ok) for _, split_usable in splits for ok in split_usable]
    counts = [len(split_paths) for split_paths, _ in splits]
    yield from cut_rows(ray_feature_batches(extraction, paths, usable, batch_size, parts=counts, nodes=nodes), counts)


def cut_rows(batches: Iterable[np.ndarray], counts: Sequence[int]) -> Iterator[Iterator[np.ndarray]]:
    """The batches' rows as consecutive parts of counts rows each (a batch across a boundary is cut in two); read each
    part whole before the next."""
    stream = iter(batches)
    beyond: list[np.ndarray] = []  # the rows of the last batch read that lie past the part before

    def part(count: int) -> Iterator[np.ndarray]:
        while count > 0:
            batch = beyond.pop() if beyond else next(stream, None)
            if batch is None:
                raise RuntimeError(f"the features ended {count} rows short of a split's end")
            if len(batch) > count:
                batch, rest = batch[:count], batch[count:]
                beyond.append(rest)
            count -= len(batch)
            yield batch

    for count in counts:
        yield part(count)


def _in_order(
    batches: Iterator[dict[str, np.ndarray]], count: int, nodes: set[str] | None = None
) -> Iterator[np.ndarray]:
    """The batches' features, checked to come in row order and to number count rows in all; the nodes that computed
    them added to nodes, where given."""
    expected = 0
    for batch in batches:
        index = batch["index"]
        if not np.array_equal(index, np.arange(expected, expected + len(index))):
            raise RuntimeError(f"Ray returned rows from {index[0]} where row {expected} was due: the order was lost")
        expected += len(index)
        if nodes is not None:
            nodes.update(str(node) for node in np.unique(batch["node"]))
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
