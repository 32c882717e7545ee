"""The exported classifier: the pipeline run on tiny generated photos with the real Lite0 weights, exported, then
Classifier.load and `dogscats classify` checked against the pipeline's own test predictions, and on bad files."""

import io
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from PIL import Image

from dogscats.classifier import Classifier
from dogscats.cli import main as cli
from stages import export, features, finetune, predict, prepare, train

from .conftest import PREDICT_ARGS, PREPARE_ARGS, REPO, TRAIN_ARGS, default_params, finetune_args, make_kaggle_layout

BACKBONE = "efficientnet_lite0"
EXPORT_ARGS = (
    "data/features",
    "models/head",
    "models/finetuned",
    "metrics/predict.json",
    "metrics/train.json",
    "models/classifier",
)


def run_pipeline() -> None:
    """prepare to export, in the current project."""
    prepare.main(*PREPARE_ARGS)
    features.main(BACKBONE, "data/split.csv", f"data/features/{BACKBONE}.h5", f"metrics/features/{BACKBONE}.json")
    train.main(*TRAIN_ARGS)
    finetune.main(*finetune_args(BACKBONE))
    predict.main(*PREDICT_ARGS)
    export.main(*EXPORT_ARGS)


pytestmark = pytest.mark.slow  # the pipeline and its export with real weights, once for the module: about 80 s


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """A project exported with the real Lite0 weights at 128 px, the head alone, calibrated; in it, the raw photos."""
    project = tmp_path_factory.mktemp("project")
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(project)
        raw = make_kaggle_layout(project / "raw")
        params = default_params()
        params["data"]["raw"] = str(raw)
        params["backbones"] = [BACKBONE]
        params["features"].update(weights="imagenet", input_size={BACKBONE: 128})
        params["train"]["epochs"] = 20
        params["finetune"].update(backbone=BACKBONE, epochs=0, head_epochs=2, batch_size=8)
        params["predict"].update(blend=0, calibrate=True, clip=[0.005, 0.995])
        Path("params.yaml").write_text(yaml.safe_dump(params))
        run_pipeline()
    return project


@pytest.fixture
def in_exported(exported, monkeypatch):
    """Run in the exported project; returns its raw photos."""
    monkeypatch.chdir(exported)
    return exported / "raw"


def test_the_classifier_reproduces_the_pipelines_test_predictions(in_exported):
    expected = pd.read_csv("data/predictions.csv", dtype={"id": str}).set_index("id")
    paths = sorted((in_exported / "test").glob("*.jpg"))
    model = Classifier.load("models/classifier")
    p, errors = model.predict(paths)
    assert errors == [""] * len(paths) and model.classes == ["cat", "dog"]
    np.testing.assert_allclose(p, expected.loc[[q.stem for q in paths], ["p_cat", "p_dog"]], atol=1e-5)
    assert p[:, 1].std() > 0.01  # real weights: the photos differ
    settings = json.loads(Path("models/classifier/settings.json").read_text())
    assert settings["sizes"] == {BACKBONE: 128} and settings["blend"] == 0
    assert Path("models/classifier/classifier.keras").is_file()

    assert cli(["classify", str(in_exported / "test"), "--out", "c.csv"]) == 0
    table = pd.read_csv("c.csv")
    assert list(table) == ["path", "p_cat", "p_dog", "class"]
    np.testing.assert_allclose(table[["p_cat", "p_dog"]], p, atol=1e-7)
    assert (table["class"] == np.where(p[:, 1] > 0.5, "dog", "cat")).all()


def test_an_export_in_a_new_process_is_byte_identical(in_exported, tmp_path):
    command = [sys.executable, "-m", "stages.export", *EXPORT_ARGS[:-1], str(tmp_path)]  # as DVC runs a stage; the
    subprocess.run(command, check=True, env={**os.environ, "PYTHONPATH": str(REPO)})  # first ran inside pytest
    for name in ("classifier.onnx", "classifier.keras", "settings.json"):
        assert (tmp_path / name).read_bytes() == (Path("models/classifier") / name).read_bytes(), name


def test_classify_gives_every_bad_file_a_row_with_its_reason(in_exported, tmp_path, capsys):
    folder = tmp_path / "mixed"
    (folder / "sub").mkdir(parents=True)
    good = (in_exported / "test" / "1.jpg").read_bytes()
    (folder / "good.jpg").write_bytes(good)
    (folder / "sub" / "truncated.jpg").write_bytes(good[: len(good) // 2])
    (folder / "text.jpg").write_text("not an image")
    Image.open(in_exported / "test" / "2.jpg").save(folder / "png_named.jpg", format="PNG")
    status = cli(["classify", str(folder)])
    table = pd.read_csv(io.StringIO(capsys.readouterr().out), keep_default_na=False)
    assert status == 1
    assert list(table) == ["path", "p_cat", "p_dog", "class", "error"]
    rows = table.set_index(table.path.map(lambda p: Path(p).name))
    assert sorted(rows.index) == ["good.jpg", "png_named.jpg", "text.jpg", "truncated.jpg"]
    assert rows.loc["good.jpg", "error"] == "" and rows.loc["png_named.jpg", "error"] == ""  # a PNG by any name
    assert "UnidentifiedImageError" in rows.loc["text.jpg", "error"] and rows.loc["text.jpg", "p_dog"] == ""
    assert "truncated" in rows.loc["truncated.jpg", "error"].lower() and rows.loc["truncated.jpg", "class"] == ""


def test_classify_stops_with_status_2_on_bad_arguments(in_exported, capsys):
    assert cli(["classify", "no/such/photo.jpg"]) == 2
    assert "not found: no/such/photo.jpg" in capsys.readouterr().err
    assert cli(["classify", str(in_exported / "test"), "--model", "nowhere"]) == 2
    with pytest.raises(SystemExit) as stop:
        cli(["classify"])
    assert stop.value.code == 2


def test_loading_and_classifying_do_not_import_tensorflow(in_exported):
    code = (
        "import sys; from dogscats import Classifier; "
        f"p, e = Classifier.load('models/classifier').predict(['{in_exported / 'test' / '1.jpg'}']); "
        "assert e == [''] and abs(p.sum() - 1) < 1e-9; "
        "assert 'tensorflow' not in sys.modules and 'keras' not in sys.modules, 'TensorFlow was imported'"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
