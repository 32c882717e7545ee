"""The exported classifier. Fast: hand-built ONNX graphs in the export's form (an image_<backbone> input per backbone,
outputs p_head and p_finetuned) check Classifier and `dogscats classify`: inputs fed by name, the model folder checked,
exit statuses, ties, which files are read. Slow: the pipeline run on tiny generated photos with the real Lite0 weights,
exported, then Classifier.load and `dogscats classify` checked against the pipeline's own test predictions."""

import io
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pandas as pd
import pytest
import yaml
from onnx import TensorProto, helper, numpy_helper
from PIL import Image

from dogscats.base.atomic import write_json
from dogscats.base.scoring import as_matrix, predicted_class
from dogscats.data.images import load_resized
from dogscats.models.calibration import final_p
from dogscats.product.classifier import Classifier, ModelError, image_files
from dogscats.product.cli import main as cli
from dogscats.product.cli import workers_for as cli_workers_for

from ..conftest import (
    EXPORT_ARGS,
    PREDICT_ARGS,
    PREPARE_ARGS,
    REPO,
    TRAIN_ARGS,
    default_params,
    finetune_args,
    make_kaggle_layout,
    write_image,
)

BACKBONE = "efficientnet_lite0"


def run_pipeline() -> None:
    """prepare to export, in the current project."""
    from stages import export, features, finetune, predict, prepare, train  # TensorFlow: not for the fast tests

    prepare.main(*PREPARE_ARGS)
    features.main(BACKBONE, "data/split.csv", f"data/features/{BACKBONE}.h5", f"metrics/features/{BACKBONE}.json")
    train.main(*TRAIN_ARGS)
    finetune.main(*finetune_args(BACKBONE))
    predict.main(*PREDICT_ARGS)
    export.main(*EXPORT_ARGS)


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """A project exported with the real Lite0 weights at 128 px, the head alone, calibrated; in it, the raw photos.
    The pipeline and its export with real weights, once for the module: about 80 s (the tests using it are slow)."""
    project = tmp_path_factory.mktemp("project")
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(project)
        export_project(project)
    return project


def export_project(project: Path, **features) -> None:
    """In the current folder, project: raw photos, params (the real Lite0 weights at 128 px, the head alone,
    calibrated; features updated by the given ones) and the pipeline run to its export."""
    params = default_params()
    params["data"]["raw"] = str(make_kaggle_layout(project / "raw"))
    params["backbones"] = [BACKBONE]
    params["features"].update(weights="imagenet", input_size={BACKBONE: 128}, **features)
    params["train"]["epochs"] = 20
    params["finetune"].update(backbone=BACKBONE, epochs=0, head_epochs=2, batch_size=8)
    params["predict"].update(blend=0, calibrate=True, clip=[0.005, 0.995])
    Path("params.yaml").write_text(yaml.safe_dump(params))
    run_pipeline()


@pytest.fixture
def in_exported(exported, monkeypatch):
    """Run in the exported project; returns its raw photos."""
    monkeypatch.chdir(exported)
    return exported / "raw"


@pytest.mark.slow
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
    assert (table["class"] == np.array(model.classes)[predicted_class(p)]).all()


@pytest.mark.slow
def test_an_export_in_a_new_process_is_byte_identical(in_exported, tmp_path):
    command = [sys.executable, "-m", "stages.export", *EXPORT_ARGS[:-1], str(tmp_path)]  # as DVC runs a stage; the
    subprocess.run(command, check=True, env={**os.environ, "PYTHONPATH": str(REPO)})  # first ran inside pytest
    for name in ("classifier.onnx", "classifier.keras", "settings.json", "cam.json"):
        assert (tmp_path / name).read_bytes() == (Path("models/classifier") / name).read_bytes(), name


@pytest.mark.slow
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


@pytest.mark.slow
def test_classify_stops_with_status_2_on_bad_arguments(in_exported, capsys):
    assert cli(["classify", "no/such/photo.jpg"]) == 2
    assert "not found: no/such/photo.jpg" in capsys.readouterr().err
    assert cli(["classify", str(in_exported / "test"), "--model", "nowhere"]) == 2
    with pytest.raises(SystemExit) as stop:
        cli(["classify"])
    assert stop.value.code == 2


@pytest.mark.slow
def test_with_real_weights_the_cams_mean_is_the_heads_logit_and_explain_writes_each_photo(in_exported, tmp_path):
    from dogscats.product.explain import explain

    paths = sorted((in_exported / "test").glob("*.jpg"))
    model = Classifier.load("models/classifier")
    images = np.stack([model.images(path)[0] for path in paths])
    (p_head,) = model.session.run(["p_head"], {f"image_{BACKBONE}": images})  # before blend and calibration
    z = np.log(p_head[:, 0].astype(np.float64) / (1 - p_head[:, 0]))
    maps = explain(model, paths, [1] * len(paths))
    np.testing.assert_allclose([e.cam.mean() for e in maps], z, atol=1e-3)
    assert maps[0].cam.shape == (4, 4) and maps[0].image.shape == (128, 128, 3)  # Lite0 at 128: a 4 x 4 map
    assert cli(["classify", str(in_exported / "test"), "--explain", str(tmp_path)]) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(f"{p.stem}.cam.png" for p in paths)


@pytest.mark.slow
def test_loading_and_classifying_do_not_import_tensorflow(in_exported):
    code = (
        "import sys; from dogscats import Classifier; "
        f"p, e = Classifier.load('models/classifier').predict(['{in_exported / 'test' / '1.jpg'}']); "
        "assert e == [''] and abs(p.sum() - 1) < 1e-9; "
        "assert 'tensorflow' not in sys.modules and 'keras' not in sys.modules, 'TensorFlow was imported'; "
        "assert 'scipy.optimize' not in sys.modules, 'SciPy optimize was imported'"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


@pytest.mark.slow  # a fresh virtual environment, the package's dependencies from the registry: about a minute
def test_pip_install_gives_a_classifier_that_imports_neither_tensorflow_nor_scipy(in_exported, tmp_path):
    source = tmp_path / "source"  # the package as `pip install .` sees it, without the pipeline beside it
    shutil.copytree(REPO / "dogscats", source / "dogscats", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(REPO / "pyproject.toml", source)
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", venv], check=True)
    python, model, photo = venv / "bin" / "python", in_exported.parent / "models" / "classifier", in_exported / "test"
    subprocess.run([python, "-m", "pip", "install", "-q", "--disable-pip-version-check", source], check=True)
    absent = "import importlib.util as u; print([m for m in ('tensorflow', 'keras', 'scipy') if u.find_spec(m)])"
    assert subprocess.run([python, "-c", absent], capture_output=True, text=True, cwd=tmp_path).stdout.strip() == "[]"

    command = subprocess.run(
        [venv / "bin" / "dogscats", "classify", "--model", model, photo], capture_output=True, text=True, cwd=tmp_path
    )
    assert command.returncode == 0 and command.stdout.startswith("path,p_cat,p_dog,class"), command.stderr
    code = (
        "import sys; from dogscats import Classifier; from dogscats.product.cli import main; "
        "p, e = Classifier.load(sys.argv[1]).predict(sorted(__import__('pathlib').Path(sys.argv[2]).glob('*.jpg'))); "
        "assert e == [''] * len(p) and main(['classify', '--model', sys.argv[1], sys.argv[2]]) == 0; "
        "print(sorted(sys.modules))"
    )
    result = subprocess.run([python, "-c", code, model, photo], capture_output=True, text=True, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    loaded = set(result.stdout.splitlines()[-1].split("'"))
    assert "onnxruntime" in loaded and "dogscats.product.classifier" in loaded
    assert not {"tensorflow", "keras", "tf2onnx", "scipy", "scipy.optimize", "yaml"} & loaded


# Fast: small hand-built graphs in the export's form, no TensorFlow.

SIZES = {"efficientnet_lite2": 40, "efficientnet_lite0": 32}  # the graph's order, not the alphabet's
WEIGHTS = {"p_head": (3.0, -2.0, -2.0), "p_finetuned": (-1.0, 2.0, 0.5)}  # per input, then a bias: differently
SCALE = 1 / (255 * 1000)  # the graph's factor on pixel sums
SETTINGS = {
    "classes": ["cat", "dog"],
    "sizes": SIZES,
    "resize": "squash",
    "decode": "full",
    "blend": 0.25,
    "temperature": 2.0,
    "clip_low": 0.01,
    "clip_high": 0.99,
    "head_epoch": 3,
    "epoch": 1,
}


def graph(sizes: dict[str, int], weights: dict[str, tuple[float, ...]]) -> onnx.ModelProto:
    """An ONNX graph in the export's form: inputs image_<backbone> (batch, side, side, 3) in the order of sizes; each
    output the sigmoid of a weighted sum of the inputs' pixel sums (times SCALE) plus a bias, one column (p of the
    second class). Sums, not means: an image at another side gives another sum, so a swap of inputs would show."""
    nodes = []
    initializers = [
        helper.make_tensor("column", TensorProto.INT64, [2], [-1, 1]),
        helper.make_tensor("axes", TensorProto.INT64, [3], [1, 2, 3]),
    ]
    for i, name in enumerate(sizes):
        nodes.append(helper.make_node("ReduceSum", [f"image_{name}", "axes"], [f"sum{i}"], keepdims=1))
        nodes.append(helper.make_node("Reshape", [f"sum{i}", "column"], [f"m{i}"]))
    for output, ws in weights.items():
        terms = []
        for i, w in enumerate(ws[:-1]):
            initializers.append(numpy_helper.from_array(np.array([w * SCALE], np.float32), f"{output}_w{i}"))
            nodes.append(helper.make_node("Mul", [f"m{i}", f"{output}_w{i}"], [f"{output}_t{i}"]))
            terms.append(f"{output}_t{i}")
        initializers.append(numpy_helper.from_array(np.array([ws[-1]], np.float32), f"{output}_bias"))
        terms.append(f"{output}_bias")
        nodes.append(helper.make_node("Sum", terms, [f"{output}_z"]))
        nodes.append(helper.make_node("Sigmoid", [f"{output}_z"], [output]))
    value = helper.make_tensor_value_info
    inputs = [value(f"image_{name}", TensorProto.FLOAT, ["batch", side, side, 3]) for name, side in sizes.items()]
    outputs = [value(output, TensorProto.FLOAT, ["batch", 1]) for output in weights]
    model = helper.make_model(
        helper.make_graph(nodes, "dogscats_classifier", inputs, outputs, initializers),
        opset_imports=[helper.make_opsetid("", 17)],
    )
    onnx.checker.check_model(model)
    return model


def write_model(folder: Path, settings: dict | None = None, sizes: dict = SIZES, weights: dict = WEIGHTS) -> Path:
    """A model folder as the export writes it: classifier.onnx, and settings.json with sorted keys."""
    folder.mkdir(parents=True, exist_ok=True)
    onnx.save_model(graph(sizes, weights), folder / "classifier.onnx")
    write_json(folder / "settings.json", SETTINGS if settings is None else settings)
    return folder


def expected_p(paths: list[Path], sides: tuple[int, ...] = tuple(SIZES.values())) -> np.ndarray:
    """p(dog) that the graph and predict's arithmetic give for the images (at those sides), computed in numpy."""
    sums = np.array([[load_resized(p, side).astype(np.float64).sum() * SCALE for side in sides] for p in paths])
    p_head, p_finetuned = (
        1 / (1 + np.exp(-(sums @ np.array(WEIGHTS[o][:-1]) + WEIGHTS[o][-1]))) for o in ("p_head", "p_finetuned")
    )
    s = SETTINGS
    return final_p(p_head, p_finetuned, s["blend"], s["temperature"], s["clip_low"], s["clip_high"])


@pytest.fixture
def photos(tmp_path: Path) -> list[Path]:
    """Three small photos of different brightness and shape."""
    return [
        write_image(tmp_path / "photos" / "red.jpg", (200, 60, 40), size=(50, 30)),
        write_image(tmp_path / "photos" / "blue.png", (40, 90, 250), size=(20, 40), fmt="PNG"),
        write_image(tmp_path / "photos" / "dark.jpg", (30, 30, 30), size=(64, 64)),
    ]


def test_each_backbone_gets_its_own_input_whatever_order_the_settings_list_them(tmp_path, photos):
    folder = write_model(tmp_path / "model")
    assert list(json.loads((folder / "settings.json").read_text())["sizes"]) == sorted(SIZES)  # not the graph's order
    model = Classifier.load(folder)
    p, errors = model.predict(photos, batch_size=2)
    assert errors == ["", "", ""]
    np.testing.assert_allclose(p, as_matrix(expected_p(photos)), atol=1e-6)
    assert p[:, 1].std() > 0.05  # the photos differ
    assert np.abs(expected_p(photos, tuple(SIZES.values())[::-1]) - p[:, 1]).min() > 0.02  # as a swap would give


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"temperature": 0}, "temperature must be greater than or equal to 0.01, got 0"),
        ({"temperature": -1.0}, "temperature must be greater than or equal to 0.01, got -1.0"),
        ({"temperature": 5e-324}, "temperature must be greater than or equal to 0.01, got 5e-324"),  # NaN rows
        ({"temperature": float("nan")}, "temperature must be a finite number"),
        ({"clip_low": 0.6, "clip_high": 0.9}, "clip_high must be above 1/K = 0.5 (2 classes), clip_low below"),
        ({"clip_low": 0.0, "clip_high": 0.5}, "clip_high must be above 1/K = 0.5 (2 classes), clip_low below"),
        ({"clip_high": 1.01}, "clip_high must be less than or equal to 1, got 1.01"),
        ({"clip_low": -0.1}, "clip_low must be greater than or equal to 0, got -0.1"),
        ({"blend": 1.5}, "blend must be less than or equal to 1, got 1.5"),
        ({"classes": ["cat", "cat"]}, "classes must be distinct class names"),
        ({"classes": ["cat"]}, "classes must be a list of at least 2 items"),
        ({"resize": "stretch"}, "resize must be 'squash', 'crop' or 'pad', got 'stretch'"),
        ({"epoch": -1}, "epoch must be greater than or equal to 0, got -1"),
        ({"sizes": {"efficientnet_lite2": 40, "efficientnet_lite0": 16}}, "sizes.efficientnet_lite0 must be"),
        ({"colour": "red"}, "unknown key colour"),
        ({"temperature": None}, "temperature must be a valid number, got None"),
    ],
)
def test_bad_settings_are_refused_in_one_line(tmp_path, capsys, change, message):
    folder = write_model(tmp_path / "model", {**SETTINGS, **change})
    with pytest.raises(ModelError) as refused:
        Classifier.load(folder)
    assert message in str(refused.value) and str(folder / "settings.json") in str(refused.value)
    assert "\n" not in str(refused.value)


@pytest.mark.parametrize(
    "sizes",
    [
        {"efficientnet_lite2": 40, "efficientnet_lite0": 36},  # a side the graph does not take
        {"efficientnet_lite2": 40, "efficientnet_lite1": 32},  # a backbone the graph does not have
        {"efficientnet_lite2": 40},  # one input missing
    ],
)
def test_settings_that_do_not_fit_the_graph_are_refused_naming_both(tmp_path, sizes):
    folder = write_model(tmp_path / "model", {**SETTINGS, "sizes": sizes})
    with pytest.raises(ModelError) as refused:
        Classifier.load(folder)
    line = str(refused.value)
    assert "the graph's inputs are image_efficientnet_lite2 ?x40x40x3, image_efficientnet_lite0 ?x32x32x3" in line
    assert "the settings' sizes are " + ", ".join(f"{n}: {s}" for n, s in sorted(sizes.items())) in line
    assert "\n" not in line


def test_the_two_outputs_are_read_by_name_and_a_graph_without_them_is_refused(tmp_path, photos):
    reversed_order = {"p_finetuned": WEIGHTS["p_finetuned"], "p_head": WEIGHTS["p_head"]}
    by_name = write_model(tmp_path / "by_name", weights=reversed_order)
    np.testing.assert_allclose(Classifier.load(by_name).predict(photos)[0][:, 1], expected_p(photos), atol=1e-6)
    as_tf2onnx_names_them = {"Identity:0": WEIGHTS["p_head"], "Identity_1:0": WEIGHTS["p_finetuned"]}
    folder = write_model(tmp_path / "unnamed", weights=as_tf2onnx_names_them)
    with pytest.raises(ModelError, match=r"the graph's outputs are Identity:0, Identity_1:0, not two \(p_head, p_fin"):
        Classifier.load(folder)
    folder = write_model(tmp_path / "one", weights={"p": WEIGHTS["p_head"]})
    with pytest.raises(ModelError, match=r"the graph's outputs are p, not two \(p_head, p_finetuned\)"):
        Classifier.load(folder)
    folder = write_model(tmp_path / "three", {**SETTINGS, "classes": ["cat", "dog", "fox"]})
    with pytest.raises(ModelError, match=r"p_head \?x1, p_finetuned \?x1; the settings have 3 classes"):
        Classifier.load(folder)


def test_a_model_with_external_data_files_is_refused_and_they_are_not_read(tmp_path, monkeypatch):
    folder = write_model(tmp_path / "model")
    model = graph(SIZES, WEIGHTS)
    onnx.save_model(model, folder / "classifier.onnx", save_as_external_data=True, location="w.bin", size_threshold=0)
    assert (folder / "w.bin").is_file()
    monkeypatch.chdir(folder)  # where ONNX Runtime looks for it by default when the model comes as bytes
    with pytest.raises(ModelError, match="classifier.onnx: uses external data files, which are not loaded"):
        Classifier.load(folder)


def _classify(capsys, *args: str) -> tuple[int, pd.DataFrame | None, str]:
    """Run `dogscats classify`; its status, its CSV (None if empty) and its stderr."""
    status = cli(["classify", *args])
    out, err = capsys.readouterr()
    table = pd.read_csv(io.StringIO(out), keep_default_na=False) if out else None
    return status, table, err


@pytest.mark.parametrize(
    "breakage",
    ["no settings", "no graph", "not a graph", "settings not JSON", "bad settings", "sizes not the graph's"],
)
def test_a_broken_model_folder_exits_2_with_one_line(tmp_path, capsys, photos, breakage):
    folder = write_model(tmp_path / "model")
    if breakage == "no settings":
        (folder / "settings.json").unlink()
    elif breakage == "no graph":
        (folder / "classifier.onnx").unlink()
    elif breakage == "not a graph":
        (folder / "classifier.onnx").write_bytes(b"\x00not an onnx model" * 10)
    elif breakage == "settings not JSON":
        (folder / "settings.json").write_text("{classes: [cat, dog]")
    elif breakage == "bad settings":
        write_json(folder / "settings.json", {**SETTINGS, "temperature": 0})
    else:
        write_json(
            folder / "settings.json", {**SETTINGS, "sizes": {"efficientnet_lite2": 32, "efficientnet_lite0": 40}}
        )
    status, table, err = _classify(capsys, str(photos[0]), "--model", str(folder))
    assert status == 2 and table is None
    assert err.startswith(f"dogscats classify: {folder}") and err.count("\n") == 1 and "Traceback" not in err


def test_a_graph_that_fails_as_it_runs_exits_2_with_one_line_and_writes_nothing(tmp_path, capsys, photos):
    folder = write_model(tmp_path / "model")
    model = onnx.load(folder / "classifier.onnx")
    (column,) = [t for t in model.graph.initializer if t.name == "column"]
    column.CopyFrom(helper.make_tensor("column", TensorProto.INT64, [2], [-1, 2]))  # 3 sums cannot make pairs
    onnx.save_model(model, folder / "classifier.onnx")
    out = tmp_path / "c.csv"
    status, _, err = _classify(capsys, *map(str, photos), "--model", str(folder), "--out", str(out))
    assert status == 2 and not out.exists()
    assert err.startswith("dogscats classify: the model failed to run") and err.count("\n") == 1


def test_classify_exits_0_when_every_file_is_read_and_1_when_one_is_not(tmp_path, capsys, photos):
    folder = write_model(tmp_path / "model")
    status, table, err = _classify(capsys, str(photos[0].parent), "--model", str(folder))
    assert status == 0 and err == ""
    assert list(table) == ["path", "p_cat", "p_dog", "class"]
    assert table.path.tolist() == [str(p) for p in sorted(photos)]
    p = expected_p(sorted(photos))
    np.testing.assert_allclose(table.p_dog, p, atol=1e-6)
    assert table["class"].tolist() == np.array(["cat", "dog"])[predicted_class(p)].tolist()
    assert set(table["class"]) == {"cat", "dog"}

    (tmp_path / "photos" / "notes.jpg").write_text("not an image")
    status, table, err = _classify(capsys, str(photos[0].parent), "--model", str(folder))
    assert status == 1 and "1 of 4 file(s) could not be read" in err
    row = table.set_index("path").loc[str(tmp_path / "photos" / "notes.jpg")]
    assert "UnidentifiedImageError" in row.error and row.p_dog == "" and row["class"] == ""


def test_classify_in_worker_processes_gives_the_same_rows_in_order_and_names_a_bad_file(
    tmp_path, capsys, photos, monkeypatch
):
    folder = write_model(tmp_path / "model")
    (tmp_path / "photos" / "notes.jpg").write_text("not an image")
    for i in range(5):
        write_image(tmp_path / "photos" / f"more{i}.jpg", (40 * i, 100, 200 - 30 * i), size=(30 + 7 * i, 40))
    monkeypatch.setattr("dogscats.product.cli.BATCH", 3)  # 9 files: 3 batches, spread over the workers
    assert cli_workers_for("2x1", 9) == (2, 1) and cli_workers_for("4x1", 2) == (1, 4)  # no more workers than batches
    results = {}
    for workers in ("1x1", "2x1", "3x1"):
        status, table, err = _classify(capsys, str(photos[0].parent), "--model", str(folder), "--workers", workers)
        assert status == 1 and "1 of 9 file(s) could not be read" in err
        results[workers] = table
    pd.testing.assert_frame_equal(results["2x1"], results["1x1"])
    pd.testing.assert_frame_equal(results["3x1"], results["1x1"])
    table = results["2x1"]
    assert table.path.tolist() == sorted(table.path.tolist())  # in order
    assert "UnidentifiedImageError" in table.set_index("path").loc[str(tmp_path / "photos" / "notes.jpg")].error
    readable = [Path(p) for p in table.path if not p.endswith("notes.jpg")]
    np.testing.assert_allclose(table.p_dog[table.error == ""].astype(float), expected_p(readable), atol=1e-6)


@pytest.mark.parametrize("workers", ["0x1", "two", "2x"])
def test_classify_refuses_a_bad_workers_value_with_status_2(tmp_path, capsys, photos, workers):
    folder = write_model(tmp_path / "model")
    with pytest.raises(SystemExit) as stopped:
        cli(["classify", str(photos[0]), "--model", str(folder), "--workers", workers])
    assert stopped.value.code == 2 and "WxT" in capsys.readouterr().err


def test_a_tie_at_one_half_goes_to_the_second_class_as_in_the_pipeline(tmp_path, capsys, photos):
    even = {"p_head": (0.0, 0.0), "p_finetuned": (0.0, 0.0)}  # sigmoid(0): p = 0.5 for every photo
    one = {"efficientnet_lite0": 32}  # one backbone: nothing else differs from the old code's way
    settings = {**SETTINGS, "sizes": one, "blend": 0.0, "temperature": 1.0, "clip_low": 0.0, "clip_high": 1.0}
    folder = write_model(tmp_path / "model", settings, one, even)
    status, table, _ = _classify(capsys, str(photos[0]), "--model", str(folder))
    assert status == 0 and table.p_dog.tolist() == [0.5] and table["class"].tolist() == ["dog"]
    assert predicted_class(np.array([0.5])).tolist() == [1]  # the pipeline's rule


def test_folders_skip_hidden_files_and_give_tiff_a_row_saying_it_is_not_read(tmp_path, capsys, photos):
    folder = write_model(tmp_path / "model")
    root = photos[0].parent
    (root / "._red.jpg").write_bytes(b"\x00\x05\x16\x07AppleDouble resource fork")  # macOS's copy of its metadata
    write_image(root / ".thumbnails" / "red.jpg", (200, 60, 40))
    write_image(root / "scan.TIF", (200, 60, 40), fmt="TIFF")
    assert image_files([root]) == sorted([*photos, root / "scan.TIF"])
    status, table, _ = _classify(capsys, str(root), "--model", str(folder))
    assert status == 1 and len(table) == 4
    row = table.set_index("path").loc[str(root / "scan.TIF")]
    assert row.error == "ImageFormatError: looks like TIFF, not an allowed image format (JPEG, PNG, GIF, WebP, BMP)"


EPS = "%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\n0 0 moveto 10 10 lineto stroke\nshowpage\n"


def test_an_eps_named_jpg_is_a_bad_image_and_ghostscript_never_runs(tmp_path):
    folder = write_model(tmp_path / "model")
    evil = tmp_path / "evil.jpg"
    evil.write_text(EPS)
    bin_dir, called = tmp_path / "bin", tmp_path / "gs_was_called"
    bin_dir.mkdir()
    (bin_dir / "gs").write_text(f"#!/bin/sh\ntouch {called}\nexit 1\n")
    (bin_dir / "gs").chmod(0o755)
    code = (
        "import sys; from dogscats.data.images import decode_problem; from dogscats.product.cli import main; "
        "print(decode_problem(sys.argv[1])); sys.exit(main(['classify', sys.argv[1], '--model', sys.argv[2]]))"
    )
    env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}"}  # a fresh process: PATH searched anew
    result = subprocess.run(
        [sys.executable, "-c", code, str(evil), str(folder)], capture_output=True, text=True, env=env, cwd=REPO
    )
    reason = "ImageFormatError: looks like EPS, not an allowed image format (JPEG, PNG, GIF, WebP, BMP)"
    assert not called.exists(), "Ghostscript was run"
    assert result.returncode == 1, result.stderr
    problem, header, row = result.stdout.splitlines()
    assert problem == reason and header == "path,p_cat,p_dog,class,error" and row == f'{evil},,,,"{reason}"'


def test_the_classifier_needs_neither_tensorflow_nor_scipys_optimiser():
    code = "import sys, dogscats; dogscats.Classifier; import dogscats.product.cli; print(sorted(sys.modules))"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, check=True)
    loaded = set(result.stdout.split("'"))
    assert "numpy" in loaded and not {"tensorflow", "keras", "tf2onnx", "scipy", "yaml"} & loaded


def test_worker_processes_refuse_a_model_folder_that_changed_since_the_run_began(tmp_path, photos):
    """Finding 10: each worker loaded the folder anew, so a re-export during a run mixed two models' probabilities."""
    folder = write_model(tmp_path / "model")
    model = Classifier.load(folder)
    (_, _, first), *_ = model.batches(photos, 1, (2, 1))  # the same model: the workers agree
    np.testing.assert_allclose(first[:, 1], expected_p(photos[:1]), atol=1e-6)
    write_model(folder, {**SETTINGS, "temperature": 1.0})  # a new export while the run goes on
    with pytest.raises(ModelError, match="changed while it was in use"):
        list(model.batches(photos, 1, (2, 1)))
    assert Classifier.load(folder).version != model.version  # the version is the content
