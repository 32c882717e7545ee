"""The DVC pipeline itself: a full repro, a no-op second repro, and reruns limited to what a change touches."""

import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from .conftest import REPO, default_params

pytestmark = pytest.mark.slow


def _run(cwd: Path, *args: str) -> str:
    result = subprocess.run(args, cwd=cwd, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout + result.stderr


def _repro(project: Path, expected: set[str]) -> None:
    """Run `dvc repro` and check the names of the stages it ran, showing DVC's output if they differ."""
    output = _run(project, "dvc", "repro")
    assert set(re.findall(r"Running stage '([^']+)'", output)) == expected, output


def _set_params(project: Path, params: dict) -> None:
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))


@pytest.fixture
def project(tmp_path: Path) -> tuple[Path, dict]:
    """A copy of the pipeline on a tiny demo dataset with random-weight backbones."""
    for name in ("stages", "dogscats"):
        shutil.copytree(REPO / name, tmp_path / name, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(REPO / "dvc.yaml", tmp_path)
    params = default_params()
    params["data"]["raw"], params["submit"]["labels"] = "data/demo", None
    params["demo"].update(train_per_class=6, test_count=4)
    params["features"]["weights"] = None
    params["backbones"] = ["efficientnet_lite0"]
    params["train"]["epochs"] = 2
    params["finetune"].update(backbone="efficientnet_lite0", epochs=1, head_epochs=2, batch_size=8)
    _set_params(tmp_path, params)
    _run(tmp_path, "git", "init", "-q")
    _run(tmp_path, "dvc", "init", "-q")
    return tmp_path, params


def test_repro_reruns_only_what_a_change_touches(project):
    path, params = project
    everything = {"demo", "prepare", "features@efficientnet_lite0", "train", "finetune", "predict", "evaluate"}
    _repro(path, everything | {"submit"})
    _repro(path, set())

    params["train"]["dropout"] = 0.3
    _set_params(path, params)
    _repro(path, {"train", "predict", "evaluate", "submit"})

    params["predict"]["blend"] = 0.37  # off the auto grid, so the blend surely changes
    _set_params(path, params)
    _repro(path, {"predict", "evaluate", "submit"})

    params["backbones"].append("efficientnet_lite1")
    _set_params(path, params)
    _repro(path, {"features@efficientnet_lite1", "train", "predict", "evaluate", "submit"})  # finetune untouched
    assert "up to date" in _run(path, "dvc", "status")
    assert not list((path / ".dvc" / "cache").rglob("*.jpg"))  # the symlink tree is not cached
