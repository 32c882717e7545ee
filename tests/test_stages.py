"""The stage entry points, run in order on a tiny generated dataset (random backbone weights, for speed)."""

import hashlib
import json
import os
import shutil
from pathlib import Path

import h5py
import keras
import numpy as np
import pandas as pd
import pytest
import yaml
from PIL import Image

from dogscats.base.params import ParamsError
from dogscats.base.scoring import log_loss
from stages import evaluate, export, features, finetune, predict, prepare, submit, train

from .conftest import (
    EVALUATE_ARGS,
    EXPORT_ARGS,
    PREDICT_ARGS,
    PREPARE_ARGS,
    SUBMIT_ARGS,
    TRAIN_ARGS,
    finetune_args,
    write_image,
)

BACKBONE = "efficientnet_lite0"
TRAIN_JSON = "metrics/train.json"


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[:200])


@pytest.fixture
def prepared(kaggle_raw, in_project):
    """A project whose prepare stage ran, with one truncated training and one truncated test image."""
    _truncate(kaggle_raw / "train" / "cat.3.jpg")
    _truncate(kaggle_raw / "test" / "2.jpg")
    (kaggle_raw / "answers.csv").write_text("id,label\n" + "".join(f"{i},{1 - i % 2}\n" for i in range(1, 7)))
    in_project(
        data={"raw": str(kaggle_raw)},
        prepare={"max_bad_fraction": 0.1},
        backbones=[BACKBONE],
        train={"epochs": 2},
        finetune={"backbone": BACKBONE, "epochs": 2, "head_epochs": 2, "batch_size": 8, "learning_rate": 0.01},
        predict={"blend": "auto", "calibrate": False, "clip": [0.005, 0.995]},
        submit={"labels": str(kaggle_raw / "answers.csv")},
    )
    prepare.main(*PREPARE_ARGS)
    return kaggle_raw


def test_prepare_links_splits_and_reports(prepared):
    manifest = pd.read_csv("data/split.csv", dtype=str, keep_default_na=False)
    assert "cat.3" not in set(manifest.id)  # left out of training
    assert (manifest[manifest.split == "test"].id == "2").sum() == 1  # a test image is never dropped
    labelled = manifest[manifest.split == "train"]
    assert labelled.fold.astype(int).value_counts().sort_index().tolist() == [4, 4, 4, 4, 3]  # 19 images, 5 folds
    per_class = labelled.groupby(["label", "fold"]).size()
    assert per_class["cat"].tolist() == [2, 2, 2, 2, 1] and per_class["dog"].tolist() == [2] * 5  # stratified
    assert (manifest[manifest.split == "test"].fold == "0").all()
    link = Path(manifest.set_index("id").loc["dog.1", "file"])
    assert link.is_symlink() and not os.path.isabs(os.readlink(link))
    assert link.resolve() == (prepared / "train" / "dog.1.jpg").resolve()
    md5 = manifest.set_index("id").md5  # the stages that read images depend on them through these hashes
    assert md5["dog.1"] == hashlib.md5((prepared / "train" / "dog.1.jpg").read_bytes()).hexdigest()
    assert md5.str.fullmatch("[0-9a-f]{32}").all() and md5.is_unique
    report = pd.read_csv("data/prepare_report.csv")
    assert sorted(Path(f).name for f in report.file) == ["2.jpg", "cat.3.jpg"]
    metrics = json.loads(Path("metrics/prepare.json").read_text())
    assert metrics == {
        **{"n_bad": 2, "n_bad_train": 1, "n_classes": 2, "n_test": 6, "n_train": 19, "folds": 5},
        **{"n_excluded": 0, "n_relabelled": 0, "n_kept": 0},
    }


def test_the_same_photos_in_another_folder_give_the_same_prepare_outputs(prepared, tmp_path):
    outputs = ("data/split.csv", "data/answer_key.csv", "data/prepare_report.csv", "metrics/prepare.json")
    before = {name: Path(name).read_bytes() for name in outputs}
    copy = shutil.copytree(prepared, tmp_path / "moved" / "photos")
    _set_param("data", "raw", str(copy))
    _set_param("submit", "labels", str(copy / "answers.csv"))
    prepare.main(*PREPARE_ARGS)
    assert {name: Path(name).read_bytes() for name in outputs} == before  # nothing downstream reruns
    assert Path("data/prepared/train/dog/dog.1.jpg").resolve() == (copy / "train" / "dog.1.jpg").resolve()


def test_prepare_warns_of_a_class_smaller_than_the_folds_and_stops_on_more_folds_than_images(
    kaggle_raw, in_project, capsys
):
    in_project(data={"raw": str(kaggle_raw)}, prepare={"folds": 12})  # 10 cats and 10 dogs
    prepare.main(*PREPARE_ARGS)
    warning = capsys.readouterr().err
    assert "class cat has 10 image(s) for 12 folds: 2 fold(s) hold none of it" in warning and "class dog" in warning
    folds = pd.read_csv("data/split.csv").query("split == 'train'").fold
    assert sorted(folds.unique()) == list(range(1, 13))
    _set_param("prepare", "folds", 21)
    with pytest.raises(ValueError, match="prepare.folds is 21, but .* has 20 usable labelled images"):
        prepare.main(*PREPARE_ARGS)


def test_prepare_stops_when_too_many_training_images_are_bad(kaggle_raw, in_project):
    for n in (1, 2, 3):
        _truncate(kaggle_raw / "train" / f"dog.{n}.jpg")
    in_project(data={"raw": str(kaggle_raw)}, prepare={"max_bad_fraction": 0.1})
    with pytest.raises(ValueError, match=r"3 of 20 training images cannot be used, more than prepare.max_bad_fraction"):
        prepare.main(*PREPARE_ARGS)
    report = pd.read_csv("data/prepare_report.csv")
    assert sorted(Path(f).name for f in report.file) == ["dog.1.jpg", "dog.2.jpg", "dog.3.jpg"]
    assert not Path("data/split.csv").exists()


def test_prepare_leaves_out_each_kind_of_bad_training_image_and_keeps_odd_but_whole_ones(kaggle_raw, in_project):
    train, test = kaggle_raw / "train", kaggle_raw / "test"
    (train / "cat.1.jpg").write_bytes(b"")
    _truncate(train / "cat.2.jpg")
    (train / "dog.1.jpg").write_text("<html>not found</html>")
    (train / "puppy.jpg").write_bytes((train / "dog.2.jpg").read_bytes())
    Image.open(train / "cat.4.jpg").save(train / "cat.4.jpg", format="PNG")  # a PNG named .jpg: kept
    Image.open(train / "dog.4.jpg").convert("CMYK").save(train / "Dog.44.JPG")  # CMYK, upper case: kept
    (test / "3.jpg").write_bytes(b"")
    in_project(data={"raw": str(kaggle_raw)}, prepare={"max_bad_fraction": 0.25})
    prepare.main(*PREPARE_ARGS)
    reasons = {Path(f).name: r for f, r in pd.read_csv("data/prepare_report.csv").itertuples(index=False)}
    assert set(reasons) == {"cat.1.jpg", "cat.2.jpg", "dog.1.jpg", "puppy.jpg", "3.jpg"}
    assert "cannot identify image file" in reasons["cat.1.jpg"] and "truncated" in reasons["cat.2.jpg"].lower()
    assert "cannot identify image file" in reasons["dog.1.jpg"] and "does not match" in reasons["puppy.jpg"]
    assert "test image kept, predicted with the prior" in reasons["3.jpg"]
    manifest = pd.read_csv("data/split.csv", dtype=str, keep_default_na=False).set_index("id")
    assert {"cat.1", "cat.2", "dog.1"}.isdisjoint(manifest.index) and {"cat.4", "dog.44"} <= set(manifest.index)
    assert manifest.loc["3", "problem"] != "" and manifest.loc["dog.44", "problem"] == ""
    metrics = json.loads(Path("metrics/prepare.json").read_text())
    assert metrics["n_bad"] == 5 and metrics["n_bad_train"] == 3 and metrics["n_test"] == 6


def test_prepare_stops_on_a_duplicate_id_before_writing_anything(kaggle_raw, in_project):
    (kaggle_raw / "test" / "0002.jpg").write_bytes((kaggle_raw / "test" / "2.jpg").read_bytes())
    in_project(data={"raw": str(kaggle_raw)})
    with pytest.raises(ValueError, match=r"test id 2: \S*test/0002\.jpg and \S*test/2\.jpg"):
        prepare.main(*PREPARE_ARGS)
    assert not Path("data").exists() and not Path("metrics").exists()


@pytest.mark.parametrize(
    ("key", "inside", "message"),
    [
        ("id,label\n1,0\n2,1\n3,0\n4,1\n5,0\n6,1\n", False, "lies outside data.raw"),
        ("id,label\n1,0\n2,1\n3,0\n4,1\n5,0\n", True, r"test ids missing \['6'\]"),
        ("id,label\n1,0\n2,1\n3,0\n4,1\n5,0\n6,1\n7,1\n", True, r"ids not in test/ \['7'\]"),
        ("id,label\n1,0\n2,1\n3,0\n4,1\n5,0\n6,puppy\n", True, r"labels \['puppy'\] are neither"),
        ("id,truth\n1,0\n", True, "needs the columns id,label"),
    ],
)
def test_prepare_checks_the_answer_key_before_any_work(kaggle_raw, in_project, tmp_path, key, inside, message):
    path = (kaggle_raw if inside else tmp_path) / "key.csv"
    path.write_text(key)
    in_project(data={"raw": str(kaggle_raw)}, submit={"labels": str(path)})
    with pytest.raises(ValueError, match=message):
        prepare.main(*PREPARE_ARGS)
    assert not Path("data").exists()


def test_a_missing_raw_folder_is_named_with_the_fix(in_project, tmp_path):
    in_project(data={"raw": "../nowhere/catsdogs"})
    with pytest.raises(
        FileNotFoundError, match=r"data.raw: .*nowhere/catsdogs is not a folder.*-S data.raw=\$\(realpath"
    ):
        prepare.main(*PREPARE_ARGS)


@pytest.mark.slow  # 40 s (fine-tuning five folds traces each fold model anew); each stage has its fast tests
def test_features_train_finetune_predict_evaluate_submit(prepared):
    out = f"data/features/{BACKBONE}.h5"
    features.main(BACKBONE, "data/split.csv", out, f"metrics/features/{BACKBONE}.json")
    with h5py.File(out) as h5:
        assert h5["train/features"].shape == (19, 1280) and h5["test/features"].shape == (6, 1280)
        assert h5["test/ids"].asstr()[:].tolist() == ["1", "2", "3", "4", "5", "6"]
        assert h5["test/usable"][:].tolist() == [True, False, True, True, True, True]
    assert json.loads(Path(f"metrics/features/{BACKBONE}.json").read_text()) == {
        "dim": 1280,
        "images": 25,
        "usable": 24,
    }
    assert not list(Path("data/features").glob(".*tmp*"))
    manifest = pd.read_csv("data/split.csv", dtype=str, keep_default_na=False)
    folds = manifest[manifest.split == "train"].set_index("id").fold.astype(int)

    train.main(*TRAIN_ARGS)
    curves = Path("metrics/live/train/plots/metrics")
    named = sorted(str(p.relative_to(curves)) for p in curves.rglob("*.tsv"))
    assert named == [f"fold_{k}/{c}.tsv" for k in range(1, 6) for c in ("loss", "oof_logloss")] + ["refit/loss.tsv"]
    fold_1 = pd.read_csv(curves / "fold_1/oof_logloss.tsv", sep="\t")
    assert list(fold_1) == ["step", "oof_logloss"] and fold_1.step.tolist() == [1, 2]  # no timestamp; epochs done
    assert json.loads(Path(TRAIN_JSON).read_text())["n_labelled"] == 19
    heads = sorted(p.name for p in Path("models/head").iterdir())
    assert heads == ["all.keras"] + [f"fold_{k}.keras" for k in range(1, 6)]  # and one refit on all labelled images
    head = pd.read_csv("data/head_predictions.csv", dtype={"id": str})
    assert head.epoch.value_counts().sort_index().to_dict() == {1: 25, 2: 25}  # each checkpoint epoch
    best = json.loads(Path(TRAIN_JSON).read_text())["best_epoch"]
    with h5py.File(f"data/features/{BACKBONE}.h5") as h5:
        test_features = h5["test/features"][:]
    refit_p = keras.saving.load_model("models/head/all.keras").predict(test_features, verbose=0)[:, 0]
    on_test = head[(head.split == "test") & (head.epoch == best)]
    assert np.allclose(on_test.p_dog, refit_p, atol=1e-6)  # the test images are the refit head's
    assert head[head.epoch == 2].split.value_counts().to_dict() == {"train": 19, "test": 6}
    labelled = head[head.split == "train"]
    assert (labelled.fold.to_numpy() == folds.loc[labelled.id].to_numpy()).all()
    assert json.loads(Path(TRAIN_JSON).read_text())["best_epoch"] in (1, 2)

    _finetune()
    tuned = pd.read_csv("data/finetune_predictions.csv", dtype={"id": str})
    assert list(tuned) == ["id", "split", "fold", "epoch", "p_cat", "p_dog", "p_cat_tta", "p_dog_tta"]
    assert tuned.epoch.value_counts().sort_index().to_dict() == {0: 25, 1: 25, 2: 25}  # before and after each epoch
    saved = sorted(p.name for p in Path("models/finetuned").iterdir())  # the frozen trunk once, each fold's top
    assert saved == ["finetuned.json", *[f"fold_{k}.keras" for k in range(1, 6)], "trunk.keras"]
    described = json.loads(Path("models/finetuned/finetuned.json").read_text())
    assert described["trainable_blocks"] == ["block14", "block15"] and described["fold_input"] == "trunk"
    assert described["folds"] == [1, 2, 3, 4, 5] and described["tta"] is True
    curve = pd.read_csv("metrics/live/finetune/plots/metrics/oof_logloss.tsv", sep="\t")
    assert curve.step.tolist() == [0, 1, 2]  # the starting heads, then each epoch
    loss = pd.read_csv("metrics/live/finetune/plots/metrics/loss.tsv", sep="\t")
    assert loss.step.tolist() == [0, 1, 2]  # epoch 0: the starting heads' training loss

    predict.main(*PREDICT_ARGS)
    scores = json.loads(Path("metrics/predict.json").read_text())
    w, epoch = scores["blend"], scores["epoch"]
    assert 0 <= w <= 1 and epoch in (0, 1, 2) and scores["temperature"] == 1  # calibrate: false
    assert epoch == described["epoch"]  # the folds were saved at the epoch predict chose
    pred = pd.read_csv("data/predictions.csv", dtype={"id": str}).set_index("id")
    assert pred.p_dog.between(0.005, 0.995).all() and np.allclose(pred.p_cat + pred.p_dog, 1)
    assert pred.loc["2", "p_dog"] == pytest.approx(10 / 19)  # undecodable: the prior, 10 of 19 dogs
    test_head = head[(head.split == "test") & (head.epoch == scores["head_epoch"])].set_index("id").p_dog
    test_tuned = tuned[(tuned.split == "test") & (tuned.epoch == epoch)].set_index("id").p_dog_tta
    expected = np.clip((1 - w) * test_head + w * test_tuned, 0.005, 0.995).drop("2")
    assert np.allclose(pred.p_dog.drop("2"), expected.loc[pred.index.drop("2")])  # the choices made on every fold
    oof = pd.read_csv("data/oof_predictions.csv", dtype={"id": str})
    assert len(oof) == 19 and oof.p_dog.between(0.005, 0.995).all()
    assert scores["cv_logloss"] == pytest.approx(log_loss(oof.label, oof.p_dog))
    assert scores["cv_logloss_head"] == pytest.approx(log_loss(oof.label, np.clip(oof.p_dog_head, 1e-12, 1 - 1e-12)))

    evaluate.main(*EVALUATE_ARGS)
    assert len(pd.read_csv("metrics/confusion.csv")) == 19  # one row per labelled image
    assert pd.read_csv("metrics/roc.csv").tpr.iloc[-1] == 1
    calibration = pd.read_csv("metrics/calibration.csv")
    assert list(calibration) == ["predicted", "observed", "ideal"] and calibration.observed.between(0, 1).all()
    errors = json.loads(Path("metrics/evaluate.json").read_text())["cv_errors"]
    per_class = json.loads(Path("metrics/evaluate.json").read_text())["per_class"]
    assert list(per_class) == ["cat", "dog"] and sum(f["n"] for f in per_class.values()) == 19
    mean_loss = sum(f["n"] * f["log_loss"] for f in per_class.values()) / 19
    assert mean_loss == pytest.approx(log_loss(oof.label, oof.p_dog))  # the per-class losses make up cv_logloss
    assert Path("metrics/worst_mistakes.html").read_text().count('<img src="data:image/jpeg;base64,') == errors

    submit.main(*SUBMIT_ARGS)
    submission = pd.read_csv("data/submission.csv")
    assert submission.id.tolist() == [1, 2, 3, 4, 5, 6] and list(submission) == ["id", "label"]
    scores = json.loads(Path("metrics/submit.json").read_text())
    assert scores["n_rows"] == 6 and 0 < scores["test_logloss"] < 6 and 0 <= scores["test_accuracy"] <= 1


def test_the_answer_key_changes_nothing_but_the_score(prepared):
    before = Path("data/split.csv").read_bytes()
    (prepared / "answers.csv").write_text("id,label\n" + "".join(f"{i},{i % 2}\n" for i in range(1, 7)))  # flipped
    prepare.main(*PREPARE_ARGS)
    assert Path("data/split.csv").read_bytes() == before  # what every model and choice reads
    stages = yaml.safe_load((Path(__file__).parents[1] / "dvc.yaml").read_text())["stages"]
    readers = sorted(name for name, stage in stages.items() if "data/answer_key.csv" in stage.get("deps", []))
    assert readers == ["submit"]


@pytest.mark.slow  # three fine-tuning runs with real weights: about a minute
def test_finetune_is_reproducible_and_depends_on_the_seed(prepared):
    _set_param("features", "weights", "imagenet")  # random weights give every image the same p(dog)
    features.main(BACKBONE, "data/split.csv", f"data/features/{BACKBONE}.h5", f"metrics/features/{BACKBONE}.json")
    runs = []
    for seed in (0, 0, 1):
        _set_param("finetune", "seed", seed)
        _finetune()
        runs.append(json.loads(Path("metrics/finetune.json").read_text()))
        runs[-1]["p"] = pd.read_csv("data/finetune_predictions.csv").p_dog.to_numpy()
    for key in ("head_oof_logloss", "oof_logloss_optimistic", "oof_logloss_tta_optimistic"):
        assert runs[0][key] == pytest.approx(runs[1][key], abs=5e-5), key
    assert np.allclose(runs[0]["p"], runs[1]["p"], atol=5e-5)
    assert np.abs(runs[0]["p"] - runs[2]["p"]).max() > 1e-3  # another seed: other shuffles and augmentations


def test_finetune_refuses_another_backbones_features(prepared):
    features.main(BACKBONE, "data/split.csv", f"data/features/{BACKBONE}.h5", f"metrics/features/{BACKBONE}.json")
    _set_param("finetune", "backbone", "x")
    with pytest.raises(ParamsError, match="finetune.backbone: unknown backbone 'x'"):
        _finetune()
    _set_param("finetune", "backbone", "efficientnet_lite1")
    _set_param("backbones", None, [BACKBONE, "efficientnet_lite1"])
    with pytest.raises(
        ValueError, match="holds efficientnet_lite0 features, but finetune.backbone is efficientnet_lite1"
    ):
        _finetune()


@pytest.mark.slow  # 6 s; beside the two-class run of every stage
def test_finetune_with_0_epochs_predicts_from_the_stored_features_without_running_the_network(prepared, monkeypatch):
    features.main(BACKBONE, "data/split.csv", f"data/features/{BACKBONE}.h5", f"metrics/features/{BACKBONE}.json")
    _set_param("finetune", "epochs", 0)

    def no_network(*args, **kwargs):
        raise AssertionError("the network ran")

    monkeypatch.setattr(finetune, "image_batches", no_network)
    monkeypatch.setattr(finetune, "engine_model", no_network)
    _finetune()
    table = pd.read_csv("data/finetune_predictions.csv")
    assert table.epoch.unique().tolist() == [0]
    assert np.array_equal(table.p_dog, table.p_dog_tta)  # the stored features are mirror-averaged already
    oof = table[table.split == "train"]
    assert oof.p_dog.nunique() > 1  # each fold's head predicts its own fold
    test_rows = table[table.split == "test"]
    manifest = pd.read_csv("data/split.csv", dtype=str, keep_default_na=False)
    assert test_rows.id.astype(str).tolist() == manifest[manifest.split == "test"].id.tolist()
    saved = sorted(p.name for p in Path("models/finetuned").iterdir())  # the starting heads alone, no backbone
    assert saved == ["finetuned.json", *[f"fold_{k}.keras" for k in range(1, 6)]]
    assert sum(p.stat().st_size for p in Path("models/finetuned").iterdir()) < 200_000
    described = json.loads(Path("models/finetuned/finetuned.json").read_text())
    assert described["fold_input"] == "features" and described["epoch"] == 0 and described["trainable_blocks"] == []
    assert json.loads(Path("metrics/finetune.json").read_text())["best_epoch"] == 0


@pytest.mark.slow  # 9 s
def test_finetune_with_0_epochs_and_blend_0_trains_nothing_and_predict_and_export_use_the_head(prepared, monkeypatch):
    features.main(BACKBONE, "data/split.csv", f"data/features/{BACKBONE}.h5", f"metrics/features/{BACKBONE}.json")
    train.main(*TRAIN_ARGS)
    _set_param("finetune", "epochs", 0)
    _set_param("predict", "blend", 0)

    def no_work(*args, **kwargs):
        raise AssertionError("finetune trained or ran a network that nothing reads")

    for name in ("fit_head", "load_feature_extractor", "stored_features"):
        monkeypatch.setattr(finetune, name, no_work)
    _finetune()
    assert sorted(p.name for p in Path("models/finetuned").iterdir()) == ["finetuned.json"]
    assert json.loads(Path("models/finetuned/finetuned.json").read_text())["fold_input"] == "none"
    assert pd.read_csv("data/finetune_predictions.csv").empty
    assert json.loads(Path("metrics/finetune.json").read_text())["fine_tuned"] == 0
    curves = sorted(Path("metrics/live/finetune/plots/metrics").iterdir())  # dvc.yaml's plots find their files
    assert [p.name for p in curves] == sorted(f"{name}.tsv" for name in finetune.CURVES)
    assert all(p.read_text() == f"step\t{p.stem}\n" for p in curves)
    predict.main(*PREDICT_ARGS)
    scores = json.loads(Path("metrics/predict.json").read_text())
    assert scores["blend"] == 0 and scores["epoch"] == 0
    assert "cv_logloss_head" in scores and "cv_logloss_finetuned" not in scores
    assert scores["cv_logloss"] > 0
    export.main(*EXPORT_ARGS)
    assert json.loads(Path("models/classifier/settings.json").read_text())["blend"] == 0
    _set_param("predict", "blend", "auto")  # without a rerun of finetune, predict says what to do
    with pytest.raises(ParamsError, match="finetune_predictions.csv is empty; rerun dvc repro"):
        predict.main(*PREDICT_ARGS)


def test_train_follows_the_manifests_folds(prepared):
    _set_param("prepare", "folds", 3)
    _set_param("train", "refit", False)  # the test images: the fold heads' mean
    prepare.main(*PREPARE_ARGS)
    features.main(BACKBONE, "data/split.csv", f"data/features/{BACKBONE}.h5", f"metrics/features/{BACKBONE}.json")
    train.main(*TRAIN_ARGS)
    saved = sorted(p.name for p in Path("models/head").iterdir())
    assert saved == ["fold_1.keras", "fold_2.keras", "fold_3.keras"]
    with h5py.File(f"data/features/{BACKBONE}.h5") as h5:
        test_features = h5["test/features"][:]
    mean = np.mean([keras.saving.load_model(f"models/head/{n}").predict(test_features, verbose=0) for n in saved], 0)
    best = json.loads(Path(TRAIN_JSON).read_text())["best_epoch"]
    head = pd.read_csv("data/head_predictions.csv")
    assert np.allclose(head[(head.split == "test") & (head.epoch == best)].p_dog, mean[:, 0], atol=1e-6)
    assert head.split.value_counts().to_dict() == {"train": 38, "test": 12}  # at epochs 1 and 2
    assert sorted(set(head.fold[head.split == "train"])) == [1, 2, 3]
    metrics = json.loads(Path(TRAIN_JSON).read_text())
    assert metrics["folds"] == 3 and 0 <= metrics["oof_accuracy_optimistic"] <= 1
    assert metrics["oof_logloss_optimistic"] > 0
    curves = Path("metrics/live/train/plots/metrics")
    assert sorted(p.name for p in curves.iterdir()) == ["fold_1", "fold_2", "fold_3"]  # no refit, no curve
    assert len(pd.read_csv(curves / "fold_3/loss.tsv", sep="\t")) == 2


def _set_param(section: str, key: str | None, value) -> None:
    params = yaml.safe_load(Path("params.yaml").read_text())
    if key is None:
        params[section] = value
    else:
        params[section][key] = value
    Path("params.yaml").write_text(yaml.safe_dump(params))


def _finetune(backbone: str = BACKBONE) -> None:
    finetune.main(*finetune_args(backbone))


@pytest.mark.slow  # 16 s: every stage with a softmax head (beside the two-class run)
def test_three_classes_in_folders_run_through_every_stage(tmp_path, in_project):
    raw = tmp_path / "raw3"
    colours = {"bird": (40, 200, 60), "cat": (200, 60, 40), "dog": (40, 60, 200)}
    for label, colour in colours.items():
        for n in range(6):
            write_image(raw / "train" / label / f"{label}{n}.jpg", colour)
    test_ids = ["NA", "None", "null", "pic3"]  # ids that pandas reads as missing, unless told otherwise
    for name, colour in zip(test_ids, [*colours.values(), (1, 2, 3)], strict=True):
        write_image(raw / "test" / f"{name}.jpg", colour)
    _truncate(raw / "test" / "pic3.jpg")  # undecodable: predicted with the class shares
    (raw / "answers.csv").write_text("id,label\nNA,bird\nNone,1\nnull,dog\npic3,dog\n")  # a name or an index
    in_project(
        data={"raw": str(raw)},
        prepare={"folds": 3},
        backbones=[BACKBONE],
        train={"epochs": 2, "class_weight": "balanced"},
        finetune={"backbone": BACKBONE, "epochs": 1, "head_epochs": 2, "batch_size": 8},
        predict={"blend": "auto", "calibrate": True, "clip": [0.005, 0.995]},
        submit={"labels": str(raw / "answers.csv")},
    )
    prepare.main(*PREPARE_ARGS)
    assert json.loads(Path("metrics/prepare.json").read_text())["n_classes"] == 3
    assert Path("data/answer_key.csv").read_text() == "id,label\nNA,bird\nNone,cat\nnull,dog\npic3,dog\n"
    assert sorted(p.name for p in Path("data/prepared/train").iterdir()) == ["bird", "cat", "dog"]
    features.main(BACKBONE, "data/split.csv", f"data/features/{BACKBONE}.h5", f"metrics/features/{BACKBONE}.json")
    with h5py.File(f"data/features/{BACKBONE}.h5") as h5:
        assert h5.attrs["classes"].tolist() == ["bird", "cat", "dog"]
        assert sorted(h5["train/labels"][:].tolist()) == [0] * 6 + [1] * 6 + [2] * 6
    train.main(*TRAIN_ARGS)
    head = pd.read_csv("data/head_predictions.csv")
    assert {"p_bird", "p_cat", "p_dog"} <= set(head) and np.allclose(head[["p_bird", "p_cat", "p_dog"]].sum(1), 1)
    _finetune()
    assert {"p_bird_tta", "p_dog"} <= set(pd.read_csv("data/finetune_predictions.csv"))
    predict.main(*PREDICT_ARGS)
    evaluate.main(*EVALUATE_ARGS)
    confusion = pd.read_csv("metrics/confusion.csv")
    assert set(confusion.actual) == {"bird", "cat", "dog"} and set(confusion.predicted) <= {"bird", "cat", "dog"}
    assert 0 <= json.loads(Path("metrics/evaluate.json").read_text())["cv_auc"] <= 1
    per_class = json.loads(Path("metrics/evaluate.json").read_text())["per_class"]
    assert list(per_class) == ["bird", "cat", "dog"] and [f["n"] for f in per_class.values()] == [6, 6, 6]
    table = pd.read_csv("metrics/per_class.csv")
    assert list(table) == ["class", "n", "precision", "recall", "log_loss"] and table["class"].tolist() == list(
        per_class
    )
    submit.main(*SUBMIT_ARGS)
    submission = pd.read_csv("data/submission.csv", keep_default_na=False)
    assert list(submission) == ["id", "bird", "cat", "dog"] and submission.id.tolist() == test_ids
    predicted = pd.read_csv("data/predictions.csv", keep_default_na=False).set_index("id").loc[submission.id]
    for name in ("bird", "cat", "dog"):  # each column is its class's probability
        assert np.allclose(submission[name], predicted[f"p_{name}"], atol=1e-6)
    assert np.allclose(submission[["bird", "cat", "dog"]].sum(1), 1, atol=1e-5)
    assert submission.iloc[3, 1:].tolist() == pytest.approx([1 / 3] * 3, abs=1e-5)  # the prior: 6 images each
    scores = json.loads(Path("metrics/submit.json").read_text())
    assert scores["n_rows"] == 4 and 0 < scores["test_logloss"] < 10 and 0 <= scores["test_accuracy"] <= 1


@pytest.mark.slow  # 15 s; the recipes' own tests (tests/test_recipes.py) are slow too
def test_the_from_scratch_recipe_runs_through_the_finetune_stage(prepared):
    _set_param("backbones", None, ["small_cnn"])
    _set_param("features", "pooling", "flatten")
    _set_param("train", "hidden", 16)
    params = yaml.safe_load(Path("params.yaml").read_text())
    params["finetune"].update(backbone="small_cnn", trainable_blocks=4, head_epochs=0, hidden=16)
    params["finetune"].update(optimizer="rmsprop", learning_rate=1e-4)
    params["finetune"]["augment"].update(rotation=40, zoom=0.2, shift=0.2, shear=0.2)
    Path("params.yaml").write_text(yaml.safe_dump(params))
    features.main("small_cnn", "data/split.csv", "data/features/small_cnn.h5", "metrics/features/small_cnn.json")
    with h5py.File("data/features/small_cnn.h5") as h5:
        assert h5["train/features"].shape == (19, 7 * 7 * 128) and h5.attrs["pooling"] == "flatten"
    _finetune("small_cnn")
    metrics = json.loads(Path("metrics/finetune.json").read_text())
    weights = 896 + 18_496 + 73_856 + 147_584 + (6272 * 16 + 16) + 17  # every conv layer, the hidden and output
    assert metrics["trainable_weights"] == weights and 0 < metrics["oof_logloss_optimistic"] < 5
    assert not Path("models/finetuned/trunk.keras").exists()  # every block trains: the folds take the images
    assert len(pd.read_csv("data/finetune_predictions.csv")) == 25 * (params["finetune"]["epochs"] + 1)


@pytest.mark.slow  # 10 s with 0 epochs, 40 s with 1 (fine-tuning the trunk)
@pytest.mark.parametrize("epochs", [0, 1])
def test_a_table_without_photos_to_predict_runs_through_every_stage_and_submits_nothing(tmp_path, in_project, epochs):
    photos = tmp_path / "table" / "photos"
    lines = ["path,label"]
    for n in range(6):  # two sub-folders holding the same file names: the symlink tree keeps them apart
        for label, colour in {"cat": (200, 60, 40), "dog": (40, 60, 200)}.items():
            folder = "a" if n % 2 else "b"
            write_image(photos / folder / f"{label}{n // 2}.jpg", colour)
            lines.append(f"photos/{folder}/{label}{n // 2}.jpg,{label}")
    (tmp_path / "table" / "labels.csv").write_text("\n".join(lines) + "\n")
    in_project(
        data={"raw": str(tmp_path / "table" / "labels.csv")},
        prepare={"folds": 3},
        backbones=[BACKBONE],
        train={"epochs": 1},
        finetune={"backbone": BACKBONE, "epochs": epochs, "head_epochs": 1, "batch_size": 8},
        predict={"blend": "auto" if epochs else 0},
    )
    prepare.main(*PREPARE_ARGS)
    manifest = pd.read_csv("data/split.csv", dtype=str, keep_default_na=False)
    assert len(manifest) == 12 and set(manifest.split) == {"train"} and (manifest.md5 != "").all()
    assert "photos/a/cat0.jpg" in set(manifest.source)  # relative to the table's folder
    assert len({Path(f).name for f in manifest.file}) == 12  # a/cat0.jpg and b/cat0.jpg both linked
    features.main(BACKBONE, "data/split.csv", f"data/features/{BACKBONE}.h5", f"metrics/features/{BACKBONE}.json")
    with h5py.File(f"data/features/{BACKBONE}.h5") as h5:
        assert h5["train/features"].shape[0] == 12 and h5["test/features"].shape[0] == 0
    train.main(*TRAIN_ARGS)
    _finetune()
    predict.main(*PREDICT_ARGS)
    assert len(pd.read_csv("data/predictions.csv")) == 0 and len(pd.read_csv("data/oof_predictions.csv")) == 12
    export.main(*EXPORT_ARGS)
    assert Path("models/classifier").is_dir()
    evaluate.main(*EVALUATE_ARGS)
    assert len(pd.read_csv("metrics/confusion.csv")) == 12
    submit.main(*SUBMIT_ARGS)
    assert Path("data/submission.csv").read_text() == "id,label\n"  # the header: DVC's output exists
    assert json.loads(Path("metrics/submit.json").read_text()) == {
        "n_rows": 0,
        "n_test": 0,
        "note": "no photos to predict (no test/ folder, or no empty labels in the table): nothing to submit",
    }
