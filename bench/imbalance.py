"""Benchmark train.class_weight on imbalanced classes: a scratch project on a sample of the Kaggle photos with fewer
dogs than cats (symlinks: every cat, a seeded draw of --dogs dogs, and the test folder), its features computed once,
then train, finetune (0 epochs: nothing), predict and evaluate run once for each class_weight setting, as dvc.yaml
runs them. Prints, for each setting, predict's out-of-fold figures and evaluate's per-class ones.

    python bench/imbalance.py --raw /work/shared/data/catsdogs --dogs 200 --work /tmp/imbalance

Run from the repository root; the scratch project's params.yaml is this one's, but data.raw and train.class_weight.
--dogs 0 keeps every dog (the sample as it is). Results and each run's metrics go under WORK/results/<setting>/.
"""

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import yaml

SETTINGS = ("none", "balanced")
FEATURE_STAGES = ("prepare", "features")  # run once
RUN_STAGES = ("train", "finetune", "predict", "evaluate")  # run for each setting


def sample_folder(raw: Path, dogs: int, seed: int, out: Path) -> tuple[int, int]:
    """out/train: links to every cat and to `dogs` dogs drawn at random (seeded; 0: all); out/test: a link to
    raw/test. Returns the counts of cats and dogs linked."""
    if out.exists():
        shutil.rmtree(out)
    (out / "train").mkdir(parents=True)
    names = sorted(p.name for p in (raw / "train").iterdir())
    cats = [n for n in names if n.startswith("cat.")]
    all_dogs = [n for n in names if n.startswith("dog.")]
    chosen = sorted(np.random.default_rng(seed).choice(all_dogs, dogs, replace=False)) if dogs else all_dogs
    for name in cats + list(chosen):
        (out / "train" / name).symlink_to((raw / "train" / name).resolve())
    (out / "test").symlink_to((raw / "test").resolve(), target_is_directory=True)
    return len(cats), len(chosen)


def stage_commands(dvc_yaml: Path, params: dict) -> dict[str, list[str]]:
    """Each stage's command from dvc.yaml, ${item} being each backbone and ${finetune.backbone} filled in."""
    stages = yaml.safe_load(dvc_yaml.read_text())["stages"]
    commands = {}
    for name in FEATURE_STAGES + RUN_STAGES:
        stage = stages[name]
        if "foreach" in stage:
            cmds = [stage["do"]["cmd"].replace("${item}", item) for item in params["backbones"]]
        else:
            cmds = [stage["cmd"].replace("${finetune.backbone}", params["finetune"]["backbone"])]
        commands[name] = cmds
        for cmd in cmds:
            if re.search(r"\$\{", cmd):
                raise ValueError(f"dvc.yaml: stage {name}: cannot fill in {cmd}")
    return commands


def run_stage(name: str, commands: list[str], project: Path, env: dict) -> float:
    """Run one stage's commands in the project; its seconds."""
    start = time.perf_counter()
    for cmd in commands:
        program, *arguments = cmd.split()
        python = [sys.executable] if program == "python" else [program]  # this environment's Python
        subprocess.run(python + arguments, cwd=project, env=env, check=True, stdout=subprocess.DEVNULL)
    seconds = time.perf_counter() - start
    print(f"  {name}: {seconds:.0f} s", flush=True)
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--raw", type=Path, default=Path("/work/shared/data/catsdogs"))
    parser.add_argument("--dogs", type=int, default=200, help="dogs to keep (0: all)")
    parser.add_argument("--seed", type=int, default=0, help="of the dogs' draw")
    parser.add_argument("--work", type=Path, default=Path("/tmp/imbalance"))
    args = parser.parse_args()
    repo = Path.cwd().resolve()
    params = yaml.safe_load((repo / "params.yaml").read_text())
    cats, dogs = sample_folder(args.raw, args.dogs, args.seed, args.work / "raw")
    project = args.work / "project"
    project.mkdir(parents=True, exist_ok=True)
    params["data"]["raw"] = str((args.work / "raw").resolve())
    commands = stage_commands(repo / "dvc.yaml", params)
    env = os.environ | {"PYTHONPATH": str(repo), "TF_CPP_MIN_LOG_LEVEL": "2"}
    print(f"{cats} cats, {dogs} dogs; project {project}", flush=True)
    for setting in (None, *SETTINGS):
        if setting is not None:
            params["train"]["class_weight"] = setting
            print(f"train.class_weight: {setting}", flush=True)
        (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
        for name in FEATURE_STAGES if setting is None else RUN_STAGES:
            run_stage(name, commands[name], project, env)
        if setting is not None:
            results = args.work / "results" / setting
            shutil.rmtree(results, ignore_errors=True)
            shutil.copytree(project / "metrics", results, ignore=shutil.ignore_patterns("live", "*.html"))
    report(args.work / "results", cats, dogs)


def report(results: Path, cats: int, dogs: int) -> None:
    """The Markdown table of the settings' out-of-fold figures."""
    print(f"\n{cats} cats, {dogs} dogs labelled, out of fold")
    print("| train.class_weight | cv_logloss | cv_accuracy | cat: recall, precision, log loss | dog: ditto |")
    print("|---|---|---|---|---|")
    for setting in SETTINGS:
        predict = json.loads((results / setting / "predict.json").read_text())
        per_class = json.loads((results / setting / "evaluate.json").read_text())["per_class"]
        cells = [
            f"{f['recall']:.4f}, {f['precision']:.4f}, {f['log_loss']:.4f}"
            for f in (per_class["cat"], per_class["dog"])
        ]
        print(f"| {setting} | {predict['cv_logloss']:.4f} | {predict['cv_accuracy']:.4f} | {' | '.join(cells)} |")


if __name__ == "__main__":
    sys.exit(main())
