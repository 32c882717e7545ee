import json
import subprocess
from pathlib import Path

import numpy as np
import pandas as pd

from dogscats.models.live import log_epoch, open_live


def _fit(live_dir: Path, epochs: int) -> list[int]:
    """Log a fold's curves epoch by epoch as the train stage does; the rows on disk after each epoch, as `dvc plots
    show` or the VS Code extension would read them during training."""
    live, counts = open_live(str(live_dir)), []
    losses = np.linspace(0.7, 0.3, epochs)
    for epoch, loss in enumerate(losses, start=1):
        log_epoch(live, epoch, {"loss": loss, "oof_logloss": loss + 0.1}, "fold_2")
        counts.append(len(pd.read_csv(live_dir / "plots/metrics/fold_2/oof_logloss.tsv", sep="\t")))
    live.end()
    return counts


def test_the_curve_grows_epoch_by_epoch_while_training(tmp_path):
    counts = _fit(tmp_path / "live", epochs=3)
    assert counts == [1, 2, 3]  # on disk after every epoch, not only at the end
    curve = pd.read_csv(tmp_path / "live/plots/metrics/fold_2/oof_logloss.tsv", sep="\t")
    assert list(curve) == ["step", "oof_logloss"] and curve.step.tolist() == [1, 2, 3]  # no timestamp column
    summary = json.loads((tmp_path / "live/metrics.json").read_text())
    assert summary["fold_2"]["oof_logloss"] == curve.oof_logloss.iloc[-1]


def test_the_curves_are_byte_reproducible_and_nothing_else_is_written(tmp_path):
    _fit(tmp_path / "a", epochs=2)
    _fit(tmp_path / "b", epochs=2)
    files = sorted(str(p.relative_to(tmp_path / "a")) for p in (tmp_path / "a").rglob("*") if p.is_file())
    assert files == ["metrics.json", "plots/metrics/fold_2/loss.tsv", "plots/metrics/fold_2/oof_logloss.tsv"]
    for name in files:
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()


def test_the_curves_are_written_in_a_git_repository_without_commits(tmp_path, monkeypatch):
    subprocess.run(["git", "init", "-q", str(tmp_path)], check=True)  # a new project's first `dvc repro`
    subprocess.run(["dvc", "init", "-q"], cwd=tmp_path, check=True)
    monkeypatch.chdir(tmp_path)
    live = open_live("metrics/live/train")
    log_epoch(live, 1, {"loss": 0.5}, "fold_1")
    live.end()
    curve = tmp_path / "metrics/live/train/plots/metrics/fold_1/loss.tsv"
    assert curve.read_text().splitlines() == ["step\tloss", "1\t0.5"]


def test_a_rerun_starts_the_curves_afresh(tmp_path):
    live = open_live(str(tmp_path))
    for step in range(4):
        log_epoch(live, step, {"oof_logloss": 1.0 / (step + 1)})
    live.end()
    live = open_live(str(tmp_path))  # the stage runs again: the old curve must not be appended to
    log_epoch(live, 0, {"oof_logloss": 0.5})
    live.end()
    curve = pd.read_csv(tmp_path / "plots/metrics/oof_logloss.tsv", sep="\t")
    assert curve.to_dict("list") == {"step": [0], "oof_logloss": [0.5]}
