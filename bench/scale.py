"""Benchmark the default pipeline at the whole competition's size, on real photos: per-stage time and peak memory.

    python bench/scale.py --data ../shared/data/catsdogs [--train 20000 --test 5000 --work DIR]

1. Builds a photo set in the Kaggle layout (train/cat.N.jpg, train/dog.N.jpg, test/N.jpg) from the labelled and test
   photos under --data, each copy re-encoded at its own scale (50-100% of the side) and JPEG quality (60-95), so no
   two files are alike (checked by md5). A built set is reused when --work already holds it. The copies of one
   photo are near duplicates across folds, so the quality figures are optimistic: this bench measures time and memory.
2. Copies the project (stages, package, dvc.yaml, params.yaml) beside it, points data.raw at the set, and runs every
   stage with `dvc repro --single-item` in dvc.yaml's order, each one's wall time and peak resident memory (the
   largest process of the stage's tree: dvc, the stage and its workers; os.wait4) printed as it ends.
3. Then the bookkeeping at this size: `dvc status` and a no-op `dvc repro`, timed, with their peak memory.
Prints the CPU's model and flags first, and a table of every figure last.

    python bench/scale.py --synthetic 100000 1000000 [--work DIR]

The synthetic mode times the stages that read no photo on generated rows instead (so far the audit): a manifest,
out-of-fold probabilities (1% of labels flipped) and a 1,280-wide feature file of clustered GAP-like rows, with 1% near
copies, in a project of this checkout; each stage's wall time and peak memory beside the feature matrix's size.
"""

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import yaml
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
SCALES = (1.0, 0.95, 0.9, 0.85, 0.8, 0.75, 0.7, 0.65, 0.6, 0.55, 0.5)
QUALITIES = (95, 90, 85, 80, 75, 70, 65, 60)


def cpu() -> str:
    """The CPU's model, core count and the instruction-set flags that matter for inference."""
    info = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    model = next((line.split(":", 1)[1].strip() for line in info.splitlines() if line.startswith("model name")), "?")
    flags = set(next((line.split(":", 1)[1].split() for line in info.splitlines() if line.startswith("flags")), []))
    wanted = ("avx2", "avx512f", "avx512_vnni", "avx512_bf16", "amx_int8", "amx_bf16")
    return f"{model}, {os.cpu_count()} cores, flags: {' '.join(f for f in wanted if f in flags) or 'none of note'}"


def copy_plan(sources: list[Path], count: int) -> list[tuple[Path, float, int]]:
    """count (source, scale, quality) triples, the sources in turn, each source's k-th copy at its own pair."""
    pairs = [(scale, quality) for scale in SCALES for quality in QUALITIES]
    return [(sources[i % len(sources)], *pairs[(i // len(sources)) % len(pairs)]) for i in range(count)]


def reencode(job: tuple[Path, float, int, Path]) -> str:
    """Write the source at the scale and quality to the target; its md5."""
    source, scale, quality, target = job
    with Image.open(source) as image:
        image = image.convert("RGB")
        side = (max(32, round(image.width * scale)), max(32, round(image.height * scale)))
        image.resize(side, Image.Resampling.BILINEAR).save(target, quality=quality)
    return hashlib.md5(target.read_bytes()).hexdigest()


def build(data: Path, raw: Path, n_train: int, n_test: int) -> None:
    """The photo set in the Kaggle layout, its labelled copies keeping their source's class; every file distinct."""
    cats, dogs = sorted((data / "train").glob("cat.*.jpg")), sorted((data / "train").glob("dog.*.jpg"))
    tests = sorted((data / "test").glob("*.jpg"))
    if not (cats and dogs and tests):
        sys.exit(f"{data}: needs train/cat.*.jpg, train/dog.*.jpg and test/*.jpg")
    jobs = []
    for label, sources in (("cat", cats), ("dog", dogs)):
        plan = copy_plan(sources, n_train // 2)
        jobs += [(*job, raw / "train" / f"{label}.{n}.jpg") for n, job in enumerate(plan, start=1)]
    jobs += [(*job, raw / "test" / f"{n}.jpg") for n, job in enumerate(copy_plan(tests, n_test), start=1)]
    for sub in ("train", "test"):
        (raw / sub).mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    with ProcessPoolExecutor() as pool:
        digests = list(pool.map(reencode, jobs, chunksize=64))
    if len(set(digests)) != len(digests):
        sys.exit(f"{raw}: {len(digests) - len(set(digests))} files are byte-identical to another")
    print(f"built {len(jobs)} distinct photos under {raw} in {time.perf_counter() - start:.0f} s", flush=True)


def run(cwd: Path, *cmd: str) -> tuple[float, float, str]:
    """Wall seconds, peak resident MiB of the command's largest process, and its output; stops on failure."""
    start = time.perf_counter()
    process = subprocess.Popen(cmd, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    output = process.stdout.read()
    _, status, usage = os.wait4(process.pid, 0)
    process.returncode = os.waitstatus_to_exitcode(status)
    if process.returncode:
        sys.exit(f"{' '.join(cmd)} failed:\n{output[-5000:]}")
    return time.perf_counter() - start, usage.ru_maxrss / 1024, output


def project_at(work: Path, raw: Path) -> Path:
    """A fresh copy of this project with data.raw pointing at the photo set."""
    project = work / "project"
    shutil.rmtree(project, ignore_errors=True)
    project.mkdir(parents=True)
    for name in ("stages", "dogscats"):
        shutil.copytree(REPO / name, project / name, ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("dvc.yaml", ".gitignore", ".dvcignore", "data/overrides.csv"):
        (project / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(REPO / name, project / name)
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["data"]["raw"] = str(raw)
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    run(project, "git", "init", "-q")
    run(project, "dvc", "init", "-q", "--force")
    return project


def synthetic_project(work: Path, rows: int, dim: int = 1280, seed: int = 0) -> Path:
    """A project (params.yaml, data/, the repo's code on PYTHONPATH) of `rows` generated photos, 80% labelled: the
    manifest (unique md5s; every source one of four real JPEGs, for the audit page's thumbnails), out-of-fold
    probabilities and efficientnet_lite2's feature file, written block by block."""
    sys.path.insert(0, str(REPO))
    from dogscats.data.feature_store import write_preprocessing, write_split

    project = work / f"synthetic-{rows}"
    shutil.rmtree(project, ignore_errors=True)
    (project / "data" / "features").mkdir(parents=True)
    raw = project / "raw"
    for n, colour in enumerate(((200, 60, 40), (40, 60, 200), (90, 90, 90), (10, 200, 10))):
        (raw / "train").mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (64, 48), colour).save(raw / "train" / f"{n}.jpg")
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["data"]["raw"] = str(raw)
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    rng = np.random.default_rng(seed)
    labelled = int(rows * 0.8)
    label = np.where(np.arange(rows) % 2, "dog", "cat")
    split = np.where(np.arange(rows) < labelled, "train", "test")
    ids = [f"{c}.{i}" if s == "train" else str(i) for i, (c, s) in enumerate(zip(label, split, strict=True))]
    manifest = pd.DataFrame(
        {
            "id": ids,
            "file": [f"data/prepared/{i}.jpg" for i in range(rows)],
            "label": np.where(split == "train", label, ""),
            "split": split,
            "fold": np.where(split == "train", np.arange(rows) % 5 + 1, 0),
            "source": [f"train/{i % 4}.jpg" for i in range(rows)],
            "problem": "",
            "md5": [hashlib.md5(str(i).encode()).hexdigest() for i in range(rows)],
        }
    )
    manifest.to_csv(project / "data" / "split.csv", index=False)
    y = (label[:labelled] == "dog").astype(int)
    given = np.where(rng.random(labelled) < 0.01, 1 - y, y)  # 1% flipped: label issues to find
    p_dog = 1 / (1 + np.exp(-(np.where(y == 1, 4.0, -4.0) + rng.normal(0, 1.5, labelled))))
    oof = pd.DataFrame({"id": ids[:labelled], "label": given, "fold": manifest.fold[:labelled]})
    oof = oof.assign(p_cat=1 - p_dog, p_dog=p_dog, p_cat_head=1 - p_dog, p_dog_head=p_dog)
    oof.to_csv(project / "data" / "oof_predictions.csv", index=False)
    centres = np.abs(rng.normal(0, 1, (64, dim))).astype(np.float32)

    def blocks(first: int, count: int):
        for start in range(first, first + count, 65536):
            n = min(65536, first + count - start)
            block = centres[rng.integers(0, 64, n)] + np.abs(rng.normal(0, 0.8, (n, dim))).astype(np.float32)
            copies = rng.random(max(n - 2, 0)) < 0.01  # near copies of the row two before: same class, another fold
            block[2:][copies] = block[:-2][copies] + rng.normal(0, 0.02, (int(copies.sum()), dim))
            yield block

    features = params["features"] | {"precision": "float32"}
    with h5py.File(project / "data" / "features" / "efficientnet_lite2.h5", "w") as h5:
        h5.attrs["classes"] = ["cat", "dog"]
        write_preprocessing(h5, "efficientnet_lite2", 320, features)
        for name, first, count in (("train", 0, labelled), ("test", labelled, rows - labelled)):
            labels = (label[first : first + count] == "dog").astype(int) if name == "train" else -np.ones(count)
            write_split(h5, name, ids[first : first + count], labels, [True] * count, blocks(first, count), dim)
    return project


def synthetic(work: Path, sizes: list[int]) -> None:
    """The synthetic mode: per size, the audit stage's wall time and peak memory on a generated project."""
    table = []
    for rows in sizes:
        project = synthetic_project(work, rows)
        matrix = rows * 1280 * 4 / 2**20
        command = [sys.executable, "-m", "stages.audit", "data/split.csv", "data/oof_predictions.csv", "data/features"]
        command += ["data/audit.csv", "metrics/audit.html", "metrics/audit.json", "", "data/overrides.csv"]
        os.environ["PYTHONPATH"] = str(REPO)
        seconds, mib, output = run(project, *command)
        found = json.loads((project / "metrics" / "audit.json").read_text())
        line = next((s for s in output.splitlines() if s.startswith("audit: {")), "")
        print(f"{rows:,} rows: audit {seconds:.1f} s, peak {mib:.0f} MiB (feature matrix {matrix:.0f} MiB); {found}; "
              f"{line[line.find('('):]}", flush=True)  # fmt: skip
        table.append((rows, seconds, mib, matrix))
    print(f"\nmachine: {cpu()}\n{'rows':>10} {'audit s':>8} {'peak MiB':>9} {'matrix MiB':>11}")
    for rows, seconds, mib, matrix in table:
        print(f"{rows:10,} {seconds:8.1f} {mib:9.0f} {matrix:11.0f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data" / "catsdogs")
    parser.add_argument("--train", type=int, default=20_000, help="labelled photos, half of each class")
    parser.add_argument("--test", type=int, default=5_000, help="photos to predict")
    parser.add_argument("--work", type=Path, default=Path("/tmp/dogscats-scale"), help="the set and the project")
    parser.add_argument("--synthetic", type=int, nargs="+", metavar="ROWS", help="time the audit on generated rows")
    args = parser.parse_args()
    print(f"machine: {cpu()}", flush=True)
    if args.synthetic:
        return synthetic(args.work.absolute(), args.synthetic)
    raw = (args.work / f"raw-{args.train}-{args.test}").absolute()
    if not (raw / "test").is_dir() or len(list((raw / "train").iterdir())) != args.train // 2 * 2:
        shutil.rmtree(raw, ignore_errors=True)
        build(args.data, raw, args.train, args.test)
    project = project_at(args.work.absolute(), raw)

    rows = []
    stages = run(project, "dvc", "stage", "list", "--name-only")[2].split()
    for stage in stages:
        seconds, mib, output = run(project, "dvc", "repro", "--single-item", stage)
        rows.append((f"dvc repro {stage}", seconds, mib))
        print(f"{stage}: {seconds:.0f} s, peak {mib:.0f} MiB", flush=True)
    total = sum(seconds for _, seconds, _ in rows)
    for command in (("dvc", "status"), ("dvc", "repro")):
        seconds, mib, output = run(project, *command)
        if "changed" in output or "Running stage" in output:
            sys.exit(f"{' '.join(command)} after the run is not a no-op:\n{output}")
        rows.append((f"{' '.join(command)} (no-op)", seconds, mib))

    metrics = {name: json.loads((project / "metrics" / f"{name}.json").read_text()) for name in ("predict", "train")}
    print(f"\nmachine: {cpu()}\nphotos: {args.train} labelled, {args.test} to predict ({raw})")
    print(f"{'step':42} {'seconds':>8} {'peak MiB':>9}")
    for name, seconds, mib in rows:
        print(f"{name:42} {seconds:8.1f} {mib:9.0f}")
    print(f"{'the whole pipeline':42} {total:8.1f} {max(mib for _, _, mib in rows):9.0f}")
    print(f"cv_logloss {metrics['predict']['cv_logloss']:.5f} (optimistic: near duplicates cross the folds)")


if __name__ == "__main__":
    main()
