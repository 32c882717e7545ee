"""The features stage on Ray against the local executor: time and features, on real photos.

    python bench/ray_features.py --data ../shared/data/catsdogs [--limit 500] [--rounds 1]

In a scratch project (params.yaml as the repository's, data.raw = --data, one backbone), prepare runs once; then the
features stage runs as DVC runs it (`python -m stages.features ...`), with features.executor local and ray in turn,
`--rounds` times each, on the first --limit photos of the manifest (all by default). With RAY_ADDRESS unset and no
`ray start`ed cluster, the stage starts a Ray on this machine and stops it, as a user's first run does. A warm-up run
on a few photos converts the model once. Prints each run's whole-stage wall time and the stage's own extraction time
(Ray's start included), the ray/local ratios (medians), and the largest difference between the two feature files.

    python bench/ray_features.py --data ../shared/data/catsdogs --per-actor --limit 300 [--actors 1,2]

--per-actor: no stage; a Ray on this machine, and the photos through a pool of 1, then 2, ... single-threaded actors:
photos/s over the batches after the first quarter (the steady state, without Ray's and the actors' start: the first
batches come bunched), and the first batch's wait. docs/engine.md ("Ray") scales this per-actor figure to a cluster.
"""

import argparse
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import yaml

REPO = Path(__file__).resolve().parents[1]
STAGE_TIME = re.compile(r"images in ([0-9.]+) s")


def main() -> None:
    """Run the stage both ways and print the table."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, required=True, help="a folder in the Kaggle layout (train/, test/)")
    parser.add_argument("--backbone", default="efficientnet_lite2")
    parser.add_argument("--limit", type=int, default=0, help="the manifest's first N rows (0: all)")
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--per-actor", action="store_true", help="time the actor pool alone (see above)")
    parser.add_argument("--actors", default="1,2", help="--per-actor: the pool sizes, comma-separated")
    parser.add_argument("--batch-size", type=int, default=32)
    args = parser.parse_args()
    os.environ.pop("RAY_ADDRESS", None)
    if args.per_actor:
        per_actor(args.data.resolve(), args.backbone, args.limit or 300, args.batch_size, args.actors)
        return
    with tempfile.TemporaryDirectory(prefix="ray-bench-") as folder:
        project = Path(folder)
        prepare(project, args.data.resolve(), args.backbone)
        limit(project / "data/split.csv", 8)
        run_stage(project, args.backbone, "local", "warm-up")  # converts the model once, outside the timings
        limit(project / "data/split.csv", args.limit)
        times: dict[str, list[tuple[float, float]]] = {"local": [], "ray": []}
        for round_ in range(args.rounds):
            for executor in ("local", "ray"):
                times[executor].append(run_stage(project, args.backbone, executor, f"{executor}-{round_}"))
                print(f"{executor:5} round {round_ + 1}: stage {times[executor][-1][0]:.1f} s, "
                      f"extraction {times[executor][-1][1]:.1f} s", flush=True)  # fmt: skip
        report(project, times)


def prepare(project: Path, raw: Path, backbone: str) -> None:
    """The scratch project's params.yaml and manifest."""
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["data"]["raw"] = str(raw)
    params["backbones"], params["finetune"]["backbone"] = [backbone], backbone
    (project / "params.yaml").write_text(yaml.safe_dump(params))
    args = ["data/prepared", "data/split.csv", "data/answer_key.csv", "data/prepare_report.csv", "metrics/p.json"]
    subprocess.run([sys.executable, "-m", "stages.prepare", *args], cwd=project, env=_env(), check=True)
    (project / "data/split_all.csv").write_bytes((project / "data/split.csv").read_bytes())


def limit(manifest: Path, rows: int) -> None:
    """The manifest cut to its first rows (0: all of them)."""
    full = pd.read_csv(manifest.with_name("split_all.csv"), dtype=str, keep_default_na=False)
    (full.head(rows) if rows else full).to_csv(manifest, index=False)


def run_stage(project: Path, backbone: str, executor: str, name: str) -> tuple[float, float]:
    """One features stage run: (its wall time, its own extraction time), its features kept as <name>.h5."""
    params = yaml.safe_load((project / "params.yaml").read_text())
    params["features"]["executor"] = executor
    (project / "params.yaml").write_text(yaml.safe_dump(params))
    command = [sys.executable, "-m", "stages.features", backbone, "data/split.csv", f"{name}.h5", f"{name}.json"]
    start = time.perf_counter()
    done = subprocess.run(command, cwd=project, env=_env(), capture_output=True, text=True)
    wall = time.perf_counter() - start
    if done.returncode:
        raise SystemExit(f"{name}: the stage failed\n{done.stderr[-3000:]}")
    return wall, float(STAGE_TIME.findall(done.stdout)[-1])


def report(project: Path, times: dict[str, list[tuple[float, float]]]) -> None:
    """The median times, the ratios and the largest feature difference of the last runs."""
    wall = {executor: statistics.median(t[0] for t in runs) for executor, runs in times.items()}
    extraction = {executor: statistics.median(t[1] for t in runs) for executor, runs in times.items()}
    last = len(times["local"]) - 1
    with h5py.File(project / f"local-{last}.h5") as local, h5py.File(project / f"ray-{last}.h5") as on_ray:
        rows = sum(len(local[split]["features"]) for split in ("train", "test"))
        diffs = [np.abs(local[s]["features"][:] - on_ray[s]["features"][:]).max(initial=0) for s in ("train", "test")]
        same = all(np.array_equal(local[s]["features"][:], on_ray[s]["features"][:]) for s in ("train", "test"))
    print(f"{rows} photos; load average {os.getloadavg()[0]:.2f}")
    print(f"stage wall time:   local {wall['local']:.1f} s, ray {wall['ray']:.1f} s, ray/local "
          f"{wall['ray'] / wall['local']:.3f}")  # fmt: skip
    print(f"extraction time:   local {extraction['local']:.1f} s, ray {extraction['ray']:.1f} s, ray/local "
          f"{extraction['ray'] / extraction['local']:.3f}")  # fmt: skip
    print(f"features: largest difference {max(diffs):.3g}, bit-identical: {same}")


def per_actor(raw: Path, backbone_name: str, count: int, batch_size: int, pools: str) -> None:
    """Steady-state photos/s of pools of single-threaded actors, and their start, on a Ray on this machine."""
    sys.path.insert(0, str(REPO))
    import ray

    from dogscats.engine.conversion import engine_model, probe_images
    from dogscats.engine.extract import build_extractor, choose_strategy, extraction_of
    from dogscats.engine.ray_executor import ray_cluster, ray_feature_batches
    from dogscats.networks.backbones import get_backbone

    params = yaml.safe_load((REPO / "params.yaml").read_text())["features"]
    backbone = get_backbone(backbone_name)
    size = params["input_size"][backbone.name]
    model = build_extractor(backbone.name, params["weights"], "float32", choose_strategy(), params["pooling"], size)
    extractor = engine_model(model, backbone.preprocess(probe_images(size).astype("float32")))
    extraction = extraction_of(extractor, backbone.name, size, params, 1)  # single-threaded actors
    files = sorted(str(p) for p in (raw / "train").glob("*.jpg"))[:count]
    start = time.perf_counter()
    with ray_cluster():
        print(f"Ray started in {time.perf_counter() - start:.1f} s, {ray.cluster_resources().get('CPU')} CPUs")
        for actors in (int(a) for a in pools.split(",")):
            start = time.perf_counter()
            arrivals = [time.perf_counter() for _ in ray_feature_batches(extraction, files, [True] * count, batch_size,
                                                                         actors)]  # fmt: skip
            quarter = len(arrivals) // 4  # from there on, the pool runs at its pace (the first batches come bunched)
            steady = (len(arrivals) - 2 - quarter) * batch_size / (arrivals[-2] - arrivals[quarter])
            print(f"{actors} actor(s): first batch after {arrivals[0] - start:.1f} s, then {steady:.1f} photos/s "
                  f"({steady / actors:.1f} per actor); load average {os.getloadavg()[0]:.2f}", flush=True)  # fmt: skip
        pipeline_bound(ray, 25_000, batch_size, 2, int(model.output.shape[-1]))


class _NoWork:
    """An actor that returns zero features at once: what Ray Data's pipeline alone costs."""

    def __init__(self, dim: int) -> None:
        self.dim = dim

    def __call__(self, batch: dict) -> dict:
        return {"index": batch["index"], "features": np.zeros((len(batch["index"]), self.dim), np.float32)}


def pipeline_bound(ray, rows: int, batch_size: int, actors: int, dim: int) -> None:
    """Rows/s through the same pipeline (one block a batch, preserve_order, iter_batches) with actors that do no
    work: the bound the driver and Ray Data's scheduling put on any cluster, on this machine."""
    from dogscats.engine.ray_executor import _data_context, _in_order

    start = time.perf_counter()
    with _data_context(ray):
        items = [{"index": i, "path": f"photo{i}.jpg", "usable": True} for i in range(rows)]
        dataset = ray.data.from_items(items, override_num_blocks=-(-rows // batch_size))
        dataset = dataset.map_batches(_NoWork, fn_constructor_args=(dim,), batch_size=batch_size, batch_format="numpy",
                                      compute=ray.data.ActorPoolStrategy(size=actors), num_cpus=1)  # fmt: skip
        done = sum(len(b) for b in _in_order(dataset.iter_batches(batch_size=None, batch_format="numpy"), rows))
    seconds = time.perf_counter() - start
    print(f"no-work pipeline: {done} rows of {dim} features in {seconds:.1f} s, {done / seconds:.0f} rows/s "
          f"({actors} actors; load average {os.getloadavg()[0]:.2f})")  # fmt: skip


def _env() -> dict:
    """The environment for a stage: this repository's code first, TensorFlow's C++ logs quiet."""
    return {**os.environ, "PYTHONPATH": str(REPO), "TF_CPP_MIN_LOG_LEVEL": "2"}


if __name__ == "__main__":
    main()
