"""Where int8's saved time could buy quality (issue 27), measured out of fold on real photos, everything in int8:

    python bench/int8_variants.py --data ../shared/data/catsdogs [--work /tmp/dogscats-int8]

(a) multi-scale views: Lite2's features at 288, 320 and 352 px (each with its mirror image), averaged per photo, then
    the default head, predict and submit;
(b) the Lite trio each at its own side (Lite0 224, Lite1 240, Lite2 320) as a probability ensemble: one default run
    per backbone, their final out-of-fold probabilities averaged with equal weights, and with the weights that score
    best on all the out-of-fold photos (chosen in sample: an optimistic bound for any weights chosen out of fold).
Each run is a scratch project (this checkout's params.yaml, data.raw and submit.labels set to --data, precision int8)
whose stages run as DVC runs them (`python -m stages.X`). Prints each run's cv_logloss and test log loss (the answer
key: information), the stages' times, and the machine. The baseline is the int8 run of Lite2 at 320 (the default
otherwise), which (a) reuses.
"""

import argparse
import itertools
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from dogscats.base.scoring import log_loss  # noqa: E402
from dogscats.engine.quantize import cpu_flags  # noqa: E402

SIDES = (288, 320, 352)
TRIO = {"efficientnet_lite0": 224, "efficientnet_lite1": 240, "efficientnet_lite2": 320}


def project(path: Path, data: Path, backbone: str, side: int) -> Path:
    """A scratch project of one backbone at one side, in int8, on the photos under data."""
    shutil.rmtree(path, ignore_errors=True)
    (path / "data").mkdir(parents=True)
    (path / "data" / "overrides.csv").write_text("id,action\n")
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["data"]["raw"], params["submit"]["labels"] = str(data), str(data / "test_labels.csv")
    params["backbones"], params["finetune"]["backbone"] = [backbone], backbone
    params["features"]["precision"] = "int8"
    params["features"]["input_size"][backbone] = side
    (path / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    return path


def run(path: Path, stages: list[str]) -> float:
    """Run the stages in the project as DVC would (dvc.yaml's commands); their seconds in all."""
    backbone = yaml.safe_load((path / "params.yaml").read_text())["backbones"][0]
    commands = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]
    env = {**os.environ, "PYTHONPATH": str(REPO), "TF_CPP_MIN_LOG_LEVEL": "2"}
    start = time.perf_counter()
    for name in stages:
        stage = commands[name]
        command = stage.get("do", stage)["cmd"]
        command = re.sub(r"\$\{(item|finetune\.backbone)\}", backbone, command).split()
        done = subprocess.run([sys.executable, *command[1:]], cwd=path, env=env, capture_output=True, text=True)
        if done.returncode:
            sys.exit(f"{path.name}: {name} failed:\n{done.stderr[-3000:]}")
    return time.perf_counter() - start


def figures(path: Path) -> str:
    """The run's cv_logloss and test log loss."""
    cv = json.loads((path / "metrics" / "predict.json").read_text())["cv_logloss"]
    test = json.loads((path / "metrics" / "submit.json").read_text())["test_logloss"]
    return f"cv_logloss {cv:.5f}, test {test:.5f}"


def mean_features(sources: list[Path], target: Path) -> None:
    """The target project's feature file: the mean of the sources' features, row by row (the same photos)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy(sources[0], target)
    with h5py.File(target, "r+") as h5:
        for split in ("train", "test"):
            found = []
            for source in sources:
                with h5py.File(source) as other:
                    if not np.array_equal(other[f"{split}/ids"][:], h5[f"{split}/ids"][:]):
                        sys.exit(f"{source}: its {split} photos differ from {sources[0]}'s")
                    found.append(other[f"{split}/features"][:])
            h5[f"{split}/features"][...] = np.mean(found, axis=0)


def read_table(path: Path) -> pd.DataFrame:
    """A predictions table indexed by id, in id order."""
    return pd.read_csv(path, dtype={"id": str}).set_index("id").sort_index()


def ensemble(paths: list[Path], data: Path) -> None:
    """The projects' final probabilities averaged: equal weights, and the in-sample best on a 0.05 grid."""
    oof, test = ([read_table(p / "data" / name) for p in paths] for name in ("oof_predictions.csv", "predictions.csv"))
    key = pd.read_csv(data / "test_labels.csv", dtype={"id": str}).set_index("id").loc[test[0].index]
    y, y_test = oof[0].label.to_numpy(), key.label.to_numpy()
    columns = ["p_cat", "p_dog"]

    def mixed(tables: list[pd.DataFrame], weights: tuple[float, ...]) -> np.ndarray:
        return sum(w * t[columns].to_numpy() for w, t in zip(weights, tables, strict=True))

    equal = (1 / len(paths),) * len(paths)
    grid = [w for w in itertools.product(np.arange(0, 1.001, 0.05), repeat=len(paths)) if abs(sum(w) - 1) < 1e-9]
    best = min(grid, key=lambda w: log_loss(y, mixed(oof, w)))
    for name, w in (("equal weights", equal), ("in-sample best weights", best)):
        print(f"(b) ensemble, {name} {np.round(w, 2).tolist()}: cv_logloss {log_loss(y, mixed(oof, w)):.5f}, "
              f"test {log_loss(y_test, mixed(test, w)):.5f}")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data" / "catsdogs")
    parser.add_argument("--work", type=Path, default=Path("/tmp/dogscats-int8"))
    args = parser.parse_args()
    data, work = args.data.resolve(), args.work.absolute()
    print(f"machine: {os.cpu_count()} cores, flags {' '.join(cpu_flags())}", flush=True)
    whole = ["prepare", "features", "train", "finetune", "predict", "submit"]
    runs = {}
    for backbone, side in TRIO.items():
        path = project(work / f"{backbone}-{side}", data, backbone, side)
        seconds = run(path, whole)
        runs[backbone] = path
        print(f"{backbone} at {side} in int8: {figures(path)}; {seconds:.0f} s prepare to submit", flush=True)
    ensemble(list(runs.values()), data)

    lite2 = "efficientnet_lite2"
    files, seconds = [], 0.0
    for side in SIDES:
        path = runs[lite2] if side == TRIO[lite2] else project(work / f"{lite2}-{side}", data, lite2, side)
        if side != TRIO[lite2]:
            seconds += run(path, ["prepare", "features"])
        files.append(path / "data" / "features" / f"{lite2}.h5")
    scales = project(work / f"{lite2}-multiscale", data, lite2, TRIO[lite2])
    seconds += run(scales, ["prepare"])
    mean_features(files, scales / "data" / "features" / f"{lite2}.h5")
    seconds += run(scales, ["train", "finetune", "predict", "submit"])
    print(f"(a) Lite2 at {', '.join(map(str, SIDES))} averaged, in int8: {figures(scales)}; {seconds:.0f} s beyond the "
          "320 px run's features")  # fmt: skip


if __name__ == "__main__":
    main()
