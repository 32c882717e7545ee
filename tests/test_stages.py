"""The stage entry points, run in order on a tiny generated dataset (random backbone weights, for speed)."""

import json
import os
from pathlib import Path

import h5py
import pandas as pd
import pytest

from stages import features, predict, prepare, submit, train

BACKBONE = "efficientnet_lite0"


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[:200])


@pytest.fixture
def prepared(kaggle_raw, in_project):
    """A project whose prepare stage ran, with one truncated training and one truncated test image."""
    _truncate(kaggle_raw / "train" / "cat.3.jpg")
    _truncate(kaggle_raw / "test" / "2.jpg")
    in_project(data={"raw": str(kaggle_raw)}, backbones=[BACKBONE], train={"epochs": 2}, submit={"labels": None})
    prepare.main("data/prepared", "data/split.csv", "data/prepare_report.csv", "metrics/prepare.json")
    return kaggle_raw


def test_prepare_links_splits_and_reports(prepared):
    manifest = pd.read_csv("data/split.csv", dtype=str, keep_default_na=False)
    assert "cat.3" not in set(manifest.id)  # left out of training
    assert (manifest[manifest.split == "test"].id == "2").sum() == 1  # a test image is never dropped
    counts = manifest.groupby(["split", "label"]).size()
    assert counts[("val", "cat")] == 2 and counts[("val", "dog")] == 2 and counts[("train", "dog")] == 8
    link = Path(manifest.set_index("id").loc["dog.1", "file"])
    assert link.is_symlink() and not os.path.isabs(os.readlink(link))
    assert link.resolve() == (prepared / "train" / "dog.1.jpg").resolve()
    report = pd.read_csv("data/prepare_report.csv")
    assert sorted(Path(f).name for f in report.file) == ["2.jpg", "cat.3.jpg"]
    assert json.loads(Path("metrics/prepare.json").read_text()) == {"n_bad": 2, "n_test": 6, "n_train": 15, "n_val": 4}


def test_features_train_predict_submit(prepared):
    out = f"data/features/{BACKBONE}.h5"
    features.main(BACKBONE, "data/split.csv", out, f"metrics/features/{BACKBONE}.json")
    with h5py.File(out) as h5:
        assert h5["train/features"].shape == (15, 1280) and h5["test/features"].shape == (6, 1280)
        assert h5["test/ids"].asstr()[:].tolist() == ["1", "2", "3", "4", "5", "6"]
        assert h5["test/usable"][:].tolist() == [True, False, True, True, True, True]
    assert json.loads(Path(f"metrics/features/{BACKBONE}.json").read_text())["images_per_second"] > 0
    assert not list(Path("data/features").glob(".*tmp*"))

    train.main("data/features", "models/head.keras", "metrics/train_history.csv", "metrics/train.json")
    history = pd.read_csv("metrics/train_history.csv")
    assert history.epoch.tolist() == [0, 1] and {"loss", "val_loss", "accuracy", "val_accuracy"} <= set(history)
    assert set(json.loads(Path("metrics/train.json").read_text())) >= {"val_logloss", "val_accuracy"}

    predict.main("data/features", "models/head.keras", "data/predictions.csv", "metrics/predict.json")
    pred = pd.read_csv("data/predictions.csv")
    assert pred.label.between(0.005, 0.995).all()
    assert pred.set_index("id").loc[2, "label"] == pytest.approx(8 / 15)  # undecodable: the prior, 8 of 15 dogs

    Path("answers.csv").write_text("id,label\n" + "".join(f"{i},{1 - i % 2}\n" for i in range(1, 7)))
    Path("params.yaml").write_text(Path("params.yaml").read_text().replace("labels: null", "labels: answers.csv"))
    submit.main("data/split.csv", "data/predictions.csv", "data/submission.csv", "metrics/submit.json")
    submission = pd.read_csv("data/submission.csv")
    assert submission.id.tolist() == [1, 2, 3, 4, 5, 6] and list(submission) == ["id", "label"]
    scores = json.loads(Path("metrics/submit.json").read_text())
    assert scores["n_rows"] == 6 and 0 < scores["test_logloss"] < 6 and 0 <= scores["test_accuracy"] <= 1
