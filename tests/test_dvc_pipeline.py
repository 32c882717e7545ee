"""The DVC pipeline itself: reruns limited to what a change touches, recovery from a killed stage, determinism, and
the CI regeneration of the models against a local DVC remote."""

import json
import os
import re
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pandas as pd
import pytest
import yaml

from .conftest import REPO, default_params, write_image

pytestmark = pytest.mark.slow
# The tests of the committed project share it, so one worker runs them all (pytest -n); the others spread.
ON_COMMITTED = pytest.mark.xdist_group("committed")


GIT_IDENTITY = {"GIT_AUTHOR_NAME": "test", "GIT_AUTHOR_EMAIL": "t@localhost", "GIT_COMMITTER_NAME": "test"}
ENV = {**os.environ, **GIT_IDENTITY, "GIT_COMMITTER_EMAIL": "t@localhost", "DVC_NO_ANALYTICS": "1"}
ENV["TQDM_MININTERVAL"] = "0"  # every progress step reaches the log, for the kill test
FEATURES = "features@efficientnet_lite0"


def _run(cwd: Path, *args: str, ok: bool = True) -> str:
    """Run a command; its output, after checking that it succeeded (or, with ok=False, that it failed)."""
    result = subprocess.run(args, cwd=cwd, capture_output=True, text=True, env=ENV)
    assert (result.returncode == 0) == ok, result.stdout + result.stderr
    return result.stdout + result.stderr


def _repro(project: Path, expected: set[str]) -> None:
    """Run `dvc repro` and check the names of the stages it ran, showing DVC's output if they differ."""
    output = _run(project, "dvc", "repro")
    assert set(re.findall(r"Running stage '([^']+)'", output)) == expected, output


def _set_params(project: Path, params: dict) -> None:
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))


def _new_project(path: Path) -> tuple[Path, dict]:
    """A copy of the pipeline on a tiny demo dataset with random-weight backbones, in a new git repository."""
    for name in ("stages", "dogscats"):
        shutil.copytree(REPO / name, path / name, ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("dvc.yaml", ".gitignore", ".ci/regenerate", ".ci/plot_images.py", "data/overrides.csv"):
        (path / name).parent.mkdir(exist_ok=True)
        shutil.copy(REPO / name, path / name)
    params = default_params()
    params["data"]["raw"], params["submit"]["labels"] = "data/demo", None
    params["demo"].update(train_per_class=6, test_count=4)
    params["prepare"]["folds"] = 2  # two models of each kind per run, not five
    params["features"]["weights"] = None
    params["backbones"] = ["efficientnet_lite0"]
    params["train"]["epochs"] = 2
    params["finetune"].update(backbone="efficientnet_lite0", epochs=1, head_epochs=2, batch_size=8)
    _set_params(path, params)
    _run(path, "git", "init", "-q", "-b", "main")
    _run(path, "dvc", "init", "-q")
    shutil.copy(REPO / ".dvcignore", path)
    return path, params


@pytest.fixture
def project(tmp_path: Path) -> tuple[Path, dict]:
    """A new project, nothing run yet."""
    return _new_project(tmp_path)


@pytest.fixture(scope="session")  # not module: a worker may run other tests among these, and the project stays
def committed(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    """A project whose pipeline ran and was committed: each test using it must leave it as it found it."""
    path, params = _new_project(tmp_path_factory.mktemp("committed"))
    _run(path, "dvc", "repro")
    _run(path, "git", "add", "-A")
    _run(path, "git", "commit", "-qm", "pipeline run")
    return path, params


def _readme_way_back() -> list[list[str]]:
    """README's commands back to the committed defaults after an experiment, split at &&."""
    (line,) = [ln for ln in (REPO / "README.md").read_text().splitlines() if "# back to the committed defaults" in ln]
    return [part.split() for part in line.split("#")[0].split("&&")]


@ON_COMMITTED
def test_a_backbones_experiment_then_readmes_way_back_reruns_nothing(committed):
    path, _ = committed
    _run(path, "dvc", "exp", "run", "-S", "backbones=[efficientnet_lite0,efficientnet_lite1]")
    assert "/efficientnet_lite1.h5" in (path / "data" / "features" / ".gitignore").read_text()
    for command in _readme_way_back():
        _run(path, *command)
    assert "Data and pipelines are up to date" in _run(path, "dvc", "status")
    assert "Running stage" not in _run(path, "dvc", "repro")


@ON_COMMITTED
def test_a_size_for_a_backbone_not_in_use_reruns_nothing(committed):
    path, params = committed
    sizes = params["features"]["input_size"]
    _set_params(path, {**params, "features": {**params["features"], "input_size": {**sizes, "resnet50": 192}}})
    try:
        _repro(path, set())  # no features stage reads it, and the export reads its sizes from the feature files
    finally:
        _set_params(path, params)
    assert "Data and pipelines are up to date" in _run(path, "dvc", "status")


@ON_COMMITTED
def test_two_queued_experiments_complete_and_are_listed(committed):
    path, _ = committed
    _run(path, "dvc", "exp", "run", "--queue", "-S", "evaluate.worst_mistakes=3,4")  # a sweep: two experiments,
    # each rerunning evaluate alone
    _run(path, "dvc", "queue", "start")
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:
        status = _run(path, "dvc", "queue", "status")
        if "Queued" not in status and "Running" not in status:
            break
        time.sleep(2)
    assert status.count("Success") == 2, status
    rows = json.loads(_run(path, "dvc", "exp", "show", "--json"))
    experiments = [exp for row in rows for run in row.get("experiments") or [] for exp in run["revs"]]
    shown = {exp["data"]["params"]["params.yaml"]["data"]["evaluate"]["worst_mistakes"]: exp for exp in experiments}
    assert {3, 4} <= set(shown)  # beside any earlier experiment of this project
    for exp in shown.values():
        assert "oof_logloss_optimistic" in exp["data"]["metrics"]["metrics/train.json"]["data"]


@ON_COMMITTED
def test_a_bad_param_stops_dvc_repro_at_once_with_one_line_naming_it(committed):
    path, params = committed
    _set_params(path, {**params, "features": {**params["features"], "resize": "crops"}})
    output = _run(path, "dvc", "repro", ok=False)
    _set_params(path, params)
    _run(path, "git", "checkout", "metrics")  # DVC removed the failed stage's outputs before running it: both the
    _run(path, "dvc", "checkout")  # uncached metrics (in git) and the cached features come back
    assert "Data and pipelines are up to date" in _run(path, "dvc", "status")
    assert [line for line in output.splitlines() if "features.resize" in line] == [
        "params.yaml: features.resize must be 'squash', 'crop' or 'pad', got 'crops'"
    ]
    assert "Traceback" not in output


@ON_COMMITTED
def test_the_same_photos_in_another_folder_rerun_prepare_alone_with_the_same_outputs(committed, tmp_path):
    path, _ = committed
    copy = shutil.copytree(path / "data" / "demo", tmp_path / "elsewhere" / "photos")
    before, metrics = yaml.safe_load((path / "dvc.lock").read_text())["stages"], _metrics(path)
    output = _run(path, "dvc", "exp", "run", "-S", f"data.raw={copy}")
    after = yaml.safe_load((path / "dvc.lock").read_text())["stages"]
    for command in _readme_way_back():
        _run(path, *command)
    assert re.findall(r"Running stage '([^']+)'", output) == ["prepare"], output
    assert after["prepare"]["params"]["params.yaml"]["data"]["raw"] == str(copy)  # prepare did see the new folder
    assert after["prepare"]["outs"] == before["prepare"]["outs"]  # the manifest byte for byte, and so
    assert {name: stage for name, stage in after.items() if name != "prepare"} == {  # every later stage as it was
        name: stage for name, stage in before.items() if name != "prepare"
    }
    assert _metrics(path) == metrics
    assert "Data and pipelines are up to date" in _run(path, "dvc", "status")


@ON_COMMITTED
def test_a_forced_repro_gives_the_same_lock_and_metrics(committed):
    path, _ = committed
    lock, metrics = (path / "dvc.lock").read_text(), _metrics(path)
    output = _run(path, "dvc", "repro", "--force")
    assert "Running stage 'features@efficientnet_lite0'" in output and "Running stage 'finetune'" in output
    assert _metrics(path) == metrics
    assert (path / "dvc.lock").read_text() == lock  # every hash: features, models, predictions


def test_repro_reruns_only_what_a_change_touches(project):
    path, params = project
    params["features"]["weights"] = "imagenet"  # random weights give every image p(dog) 0.5, whatever the head
    params["predict"].update(blend=0, calibrate=False)  # DVC skips a stage whose inputs come out unchanged, so the
    _set_params(path, params)  # head must reach the submission (blend 0: the head alone; auto might drop it)
    everything = {"demo", "prepare", "features@efficientnet_lite0", "train", "finetune", "predict", "evaluate", "audit"}
    _repro(path, everything | {"submit", "export"})
    _repro(path, set())

    params["train"]["dropout"] = 0.3
    _set_params(path, params)
    _repro(path, {"train", "predict", "evaluate", "audit", "submit", "export"})

    params["backbones"].append("efficientnet_lite1")
    _set_params(path, params)
    # not finetune:
    _repro(path, {"features@efficientnet_lite1", "train", "predict", "evaluate", "audit", "submit", "export"})

    params["features"]["input_size"]["efficientnet_lite1"] = 224  # one backbone's size: its stage alone upstream
    _set_params(path, params)
    _repro(path, {"features@efficientnet_lite1", "train", "predict", "evaluate", "audit", "submit", "export"})

    params["predict"]["blend"] = 0.37  # off the auto grid, so the blend surely changes; last, as the export then
    _set_params(path, params)  # holds the fine-tuned folds too; finetune, which trained nothing at blend 0, now does
    _repro(path, {"finetune", "predict", "evaluate", "audit", "submit", "export"})
    assert "up to date" in _run(path, "dvc", "status")
    demo_images = {p.read_bytes() for p in (path / "data" / "demo").rglob("*.jpg")}
    cached_images = [
        p for p in (path / ".dvc" / "cache").rglob("*") if p.is_file() and p.read_bytes()[:2] == b"\xff\xd8"
    ]
    assert len(cached_images) == len(demo_images)  # the demo's own output, once; the symlink tree adds nothing


def test_an_image_change_reruns_the_image_readers_an_unlabelled_file_only_prepare_a_key_edit_the_scoring(project):
    path, params = project
    _run(path, "dvc", "repro", "demo")
    shutil.copytree(path / "data" / "demo", path / "raw")  # raw data outside DVC's outputs, like a user's folder
    params["data"]["raw"], params["submit"]["labels"] = "raw", "raw/test_labels.csv"
    _set_params(path, params)
    _run(path, "dvc", "repro")
    scored = (path / "metrics" / "submit.json").read_text()
    key = path / "raw" / "test_labels.csv"
    header, first, *rest = key.read_text().splitlines()
    key.write_text("\n".join([header, first[:-1] + str(1 - int(first[-1])), *rest]) + "\n")
    _repro(path, {"prepare", "submit"})  # one label flipped: only the scoring reruns (p is 0.5 everywhere: a tie is a
    # dog, so the accuracy moves)
    assert (path / "metrics" / "submit.json").read_text() != scored
    cat = path / "raw" / "train" / "cat.1.jpg"
    cat.write_bytes((path / "raw" / "train" / "cat.2.jpg").read_bytes())
    everything = {FEATURES, "train", "finetune", "predict", "evaluate", "audit", "submit", "export"}
    _repro(path, {"prepare"} | everything)  # through data/split.csv, which holds each image's md5
    (path / "raw" / "train" / "notes.txt").write_text("not an image")
    _repro(path, {"prepare"})  # listed in the report; the manifest, and so every image reader, unchanged


def _wait_for_progress(log: Path, process: subprocess.Popen, done: int) -> None:
    """Wait until the features progress bar in the log has counted at least `done` images."""
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and process.poll() is None:
        text = log.read_bytes().decode(errors="replace")  # a progress bar may be half written
        counts = [int(n) for n in re.findall(rf"{FEATURES}:.*?\| *(\d+)/\d+", text)]
        if counts and max(counts) >= done:
            return
        time.sleep(0.05)
    raise AssertionError(f"no progress to {done} images:\n{log.read_text()}")


def test_a_killed_features_stage_is_recomputed_and_equals_an_uninterrupted_run(project):
    path, params = project
    params["demo"].update(train_per_class=24, test_count=12)  # 60 images in 15 batches: killed after 2 or 3
    params["features"]["batch_size"] = 4
    _set_params(path, params)
    _run(path, "dvc", "repro", "prepare")
    log = path / "killed.log"
    with log.open("w") as out:
        killed = subprocess.Popen(
            ["dvc", "repro", FEATURES], cwd=path, stdout=out, stderr=out, env=ENV, start_new_session=True
        )
        _wait_for_progress(log, killed, done=8)
        os.killpg(killed.pid, signal.SIGKILL)  # DVC and the stage's python, mid-write
        killed.wait()
    features = path / "data" / "features"
    h5 = features / "efficientnet_lite0.h5"
    assert not h5.exists() and [p.name for p in features.glob(".efficientnet_lite0.h5.*.tmp.h5")]

    assert f"Running stage '{FEATURES}'" in _run(path, "dvc", "repro", FEATURES)
    assert h5.exists() and not list(features.glob(".*.tmp*"))  # the leftover is gone
    recovered = h5.read_bytes()
    lock = (path / "dvc.lock").read_text()
    _run(path, "dvc", "repro", "--force", FEATURES)  # an uninterrupted run
    assert h5.read_bytes() == recovered
    assert (path / "dvc.lock").read_text() == lock


def _metrics(path: Path) -> dict[str, str]:
    return {str(p.relative_to(path)): p.read_text() for p in sorted((path / "metrics").rglob("*.json"))}


@ON_COMMITTED
def test_a_fresh_clone_pulls_the_models_and_reproduces_nothing(committed, tmp_path_factory):
    """Last of the tests on `committed`: it gives the project a DVC remote."""
    path, _ = committed
    remote, clone = tmp_path_factory.mktemp("remote"), tmp_path_factory.mktemp("clone") / "project"
    _run(path, "dvc", "remote", "add", "-d", "local", str(remote))
    _run(path, "git", "add", "-A")
    _run(path, "git", "commit", "-qm", "a remote")
    first = _run(path, "bash", ".ci/regenerate", "main")
    assert "Running stage" not in first and "pushed" in first
    report = (path / "report.md").read_text()
    assert "## Metrics: workspace vs main" in report and "## Params" in report and "## Plots" in report
    assert "**error**" not in report and "calibration" in report and "fold_1_oof_logloss" in report
    assert (path / "dvc_plots" / "index.html").exists()
    shown = json.loads(_run(path, "dvc", "plots", "show", "--json"))
    assert not shown.get("errors") and {"finetune_loss", "roc", "confusion", "calibration"} <= set(shown["data"])

    _run(path.parent, "git", "clone", "-q", str(path), str(clone))
    second = _run(clone, "bash", ".ci/regenerate", "main")
    assert "Running stage" not in second, second
    assert "Data and pipelines are up to date" in _run(clone, "dvc", "status")
    assert _run(clone, "git", "status", "--porcelain") == ""  # dvc.lock and metrics unchanged
    for model in ("models/finetuned/fold_1.keras", "models/head/fold_1.keras", "data/submission.csv"):
        assert (clone / model).read_bytes() == (path / model).read_bytes(), model

    # Without dvc.lock nothing says which outputs to pull, but the run-cache the first regeneration pushed knows the
    # stages' runs: a stage whose outputs are all cached (demo) is restored from the remote, not rerun. (DVC 3.67 does
    # not push the run-cache's copies of uncached outputs, the metrics, so the stages with metrics run again.)
    unlocked = tmp_path_factory.mktemp("unlocked") / "project"
    _run(path.parent, "git", "clone", "-q", str(path), str(unlocked))
    (unlocked / "dvc.lock").unlink()
    third = _run(unlocked, "bash", ".ci/regenerate", "main")
    assert "Stage 'demo' is cached - skipping run" in third and "Running stage 'demo'" not in third, third
    for output in ("models/classifier/classifier.onnx", "metrics/live/train/plots/metrics/refit/loss.tsv"):
        assert (unlocked / output).read_bytes() == (path / output).read_bytes(), output


def _inputs(root: Path) -> dict[str, Path]:
    """The four kinds of data.raw, without a test/ folder: the Kaggle layout, class folders under train/ and at the
    top (three classes; per-class numbering, as cameras and the repo's fixtures number photos), and a table with
    relative paths and some empty labels (photos to predict)."""
    colours = {"bird": (40, 200, 60), "cat": (200, 60, 40), "dog": (40, 60, 200)}
    for n in range(4):
        for label in ("cat", "dog"):
            write_image(root / "kaggle" / "train" / f"{label}.{n}.jpg", colours[label])
        for label, colour in colours.items():
            write_image(root / "train_folders" / "train" / label / f"{n}.jpg", colour)
            write_image(root / "folders" / label / f"{n}.jpg", colour, (36, 30))  # not train_folders' photos
    lines = ["path,label"]
    for n in range(6):
        for label in ("cat", "dog"):
            write_image(root / "table" / "photos" / f"{label}{n}.jpg", colours[label])
            lines.append(f"photos/{label}{n}.jpg,{label if n < 4 else ''}")
    (root / "table" / "labels.csv").write_text("\n".join(lines) + "\n")
    return {
        "kaggle": root / "kaggle",
        "train_folders": root / "train_folders",
        "folders": root / "folders",
        "table": root / "table" / "labels.csv",
    }


def test_each_input_kind_runs_end_to_end_its_classifier_classifies_and_its_labels_can_be_fixed(tmp_path):
    """Every kind of data.raw, then README's "Fixing labels" loop on it: prepared as it is (dvc repro prepare), one
    relabel and one exclude in data/overrides.csv, and dvc repro reruns prepare and runs everything after it on the
    fixed labels, with the counts in prepare.json; the exported classifier classifies a photo in the kind's classes.
    (That an edit of the overrides reruns exactly prepare and what follows in a pipeline that had run through is
    test_an_overrides_edit_reruns_prepare_and_what_follows_and_a_keep_only_the_audit: here each kind runs the
    pipeline once.)"""
    path, params = _new_project(tmp_path / "project")
    params["finetune"]["epochs"] = 0  # with predict.blend 0 nothing is fine-tuned: the stage writes its empty outputs
    _set_params(path, params)
    _run(path, "git", "add", "-A")
    _run(path, "git", "commit", "-qm", "the pipeline")
    _run(path, "dvc", "repro", "demo")  # in dvc.yaml whatever data.raw is: run once, before the kinds
    three = ["bird", "cat", "dog"]
    expected = {"kaggle": (["cat", "dog"], 0), "train_folders": (three, 0), "folders": (three, 0)}
    expected["table"] = (["cat", "dog"], 4)
    fixes = {  # (relabelled id, its new class, excluded id): in the folder kinds cat/0 takes bird/0's number
        "kaggle": ("dog.1", "cat", "cat.2"),
        "train_folders": ("cat/0", "bird", "dog/0"),
        "folders": ("cat/0", "bird", "dog/0"),
        "table": ("photos/dog1.jpg", "cat", "photos/cat2.jpg"),
    }
    everything = {FEATURES, "train", "finetune", "predict", "evaluate", "audit", "submit", "export"}
    for kind, raw in _inputs(tmp_path / "inputs").items():
        _run(path, "git", "checkout", "--", "data/overrides.csv")  # the last kind's fixes name its photos
        _set_params(path, {**params, "data": {**params["data"], "raw": str(raw)}})
        _run(path, "dvc", "repro", "prepare")
        classes, n_test = expected[kind]
        prepared = json.loads((path / "metrics/prepare.json").read_text())
        assert prepared["n_test"] == n_test and prepared["n_classes"] == len(classes), kind

        relabelled, target, excluded = fixes[kind]
        with (path / "data" / "overrides.csv").open("a") as overrides:
            overrides.write(f"{relabelled},relabel:{target}\n{excluded},exclude\n")
        output = _run(path, "dvc", "repro")
        assert set(re.findall(r"Running stage '([^']+)'", output)) == {"prepare"} | everything, (kind, output)
        fixed = json.loads((path / "metrics/prepare.json").read_text())
        assert (fixed["n_relabelled"], fixed["n_excluded"]) == (1, 1), kind
        assert fixed["n_train"] == prepared["n_train"] - 1 and fixed["n_test"] == n_test, kind
        manifest = pd.read_csv(path / "data" / "split.csv", dtype=str, keep_default_na=False).set_index("id")
        assert manifest.loc[relabelled, "label"] == target and excluded not in manifest.index, kind
        link = path / manifest.loc[relabelled, "file"]
        root = raw.parent if kind == "table" else raw
        assert link.resolve() == (root / manifest.loc[relabelled, "source"]).resolve(), kind

        submitted = json.loads((path / "metrics/submit.json").read_text())
        assert submitted["n_test"] == n_test and ("note" in submitted) == (n_test == 0), kind
        photo = next(raw.parent.rglob("*.jpg") if kind == "table" else raw.rglob("*.jpg"))
        out = _run(path, "python", "-m", "dogscats.product.cli", "classify", "--model", "models/classifier", str(photo))
        header, row = out.strip().splitlines()[-2:]
        assert header == ",".join(["path", *(f"p_{c}" for c in classes), "class"]), (kind, out)
        assert row.split(",")[0] == str(photo) and row.split(",")[-1] in classes, (kind, out)


def test_with_a_table_the_answer_key_is_the_table_so_an_edit_of_a_test_label_reruns_the_scoring(project, tmp_path):
    """With a table as data.raw DVC tracks the table alone: a separate answer key's edits went unseen (submit.json
    scored against a stale key). The key is now the table's own test rows; any other file is refused."""
    path, params = project
    rows = ["path,label,split"]
    for n in range(4):
        for label, colour in (("cat", (200, 60, 40)), ("dog", (40, 60, 200))):
            write_image(tmp_path / "table" / f"{label}{n}.jpg", colour)
            rows.append(f"{label}{n}.jpg,{label},{'test' if n == 3 else 'train'}")
    table = tmp_path / "table" / "labels.csv"
    table.write_text("\n".join(rows) + "\n")
    params["data"]["raw"], params["submit"]["labels"] = str(table), str(table)
    params["finetune"]["epochs"] = 0
    _set_params(path, params)
    _run(path, "dvc", "repro")
    scored = json.loads((path / "metrics" / "submit.json").read_text())
    assert scored["n_test"] == 2
    table.write_text(table.read_text().replace("cat3.jpg,cat,test", "cat3.jpg,dog,test"))  # the key's first label
    _repro(path, {"prepare", "submit"})  # the labelled photos are as they were: nothing else reruns
    assert json.loads((path / "metrics" / "submit.json").read_text()) != scored
    (tmp_path / "table" / "key.csv").write_text("id,label\ncat3.jpg,cat\ndog3.jpg,dog\n")
    params["submit"]["labels"] = str(tmp_path / "table" / "key.csv")
    _set_params(path, params)
    out = _run(path, "dvc", "repro", ok=False)
    assert "prepare: submit.labels:" in out and "the answer key is the table itself" in out


@ON_COMMITTED
def test_an_overrides_edit_reruns_prepare_and_what_follows_and_a_keep_only_the_audit(committed):
    path, _ = committed
    overrides = path / "data" / "overrides.csv"
    overrides.write_text("id,action\ncat.1,exclude\n")
    try:
        everything = {FEATURES, "train", "finetune", "predict", "evaluate", "audit", "submit", "export"}
        _repro(path, {"prepare"} | everything)
        assert json.loads((path / "metrics/prepare.json").read_text())["n_excluded"] == 1
    finally:
        _run(path, "git", "checkout", "--", ".")
        _run(path, "dvc", "checkout", "-q")
    _repro(path, set())
    overrides.write_text("id,action\ncat.1,keep\n")  # reviewed, the label stands (dogscats review writes it)
    try:
        _repro(path, {"prepare", "audit"})  # the manifest unchanged: only the audit, which marks what is reviewed
        assert json.loads((path / "metrics/prepare.json").read_text())["n_kept"] == 1
        audit = pd.read_csv(path / "data/audit.csv", dtype=str, keep_default_na=False)
        assert set(audit.decision[audit.id == "cat.1"]) <= {"keep"} and "reviewed" in audit
    finally:
        _run(path, "git", "checkout", "--", ".")
        _run(path, "dvc", "checkout", "-q")
    _repro(path, set())
