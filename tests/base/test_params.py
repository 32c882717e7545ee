"""params.yaml is checked before any work: one clear line per problem, naming the key, what is allowed and the value;
and checking needs no TensorFlow."""

import copy
import re
import subprocess
import sys
from typing import get_args

import pytest
import yaml

from dogscats.base.backbone_sizes import NATIVE_SIZES
from dogscats.base.params import OPTIMIZERS, ParamsError, check_params, load_params
from stages import prepare

from ..conftest import PREDICT_ARGS, PREPARE_ARGS, REPO, default_params

SIZES = default_params()["features"]["input_size"]


def _problems(**changes) -> list[str]:
    """The problems found after setting dotted keys (written with __) to values."""
    params = copy.deepcopy(default_params())
    for dotted, value in changes.items():
        *sections, key = dotted.split("__")
        target = params
        for section in sections:
            target = target[section]
        target[key] = value
    return check_params(params)


def test_the_repository_params_are_valid():
    assert check_params(default_params()) == []


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"train__epoch": 3}, "unknown key train.epoch"),
        ({"colour": "red"}, "unknown key colour"),
        ({"train__epochs": "30"}, "train.epochs must be a valid integer, got '30'"),
        ({"train__epochs": True}, "train.epochs must be a valid integer, got True"),
        ({"train__epochs": 3.0}, "train.epochs must be a valid integer, got 3.0"),
        ({"features__tta": "yes"}, "features.tta must be a valid boolean, got 'yes'"),
        ({"predict__blend": "half"}, "predict.blend must be \"auto\" or a number from 0 to 1, got 'half'"),
        ({"predict__blend": 1.5}, 'predict.blend must be "auto" or a number from 0 to 1, got 1.5'),
        ({"finetune__augment__zoom": None}, "finetune.augment.zoom must be a valid number, got None"),
        ({"prepare__folds": 1}, "prepare.folds must be greater than or equal to 2, got 1"),
        ({"prepare__folds": 2.5}, "prepare.folds must be a valid integer, got 2.5"),
        ({"prepare__max_bad_fraction": -0.1}, "prepare.max_bad_fraction must be greater than or equal to 0, got -0.1"),
        ({"features__resize": "crops"}, "features.resize must be 'squash', 'crop' or 'pad', got 'crops'"),
        ({"train__class_weight": "balance"}, "train.class_weight must be 'none' or 'balanced', got 'balance'"),
        ({"train__class_weight": None}, "train.class_weight must be 'none' or 'balanced', got None"),  # YAML's null
        ({"features__decode": "reduce"}, "features.decode must be 'full' or 'reduced', got 'reduce'"),
        (
            {"features__precision": "fp16"},
            "features.precision must be 'float32', 'bfloat16', 'float16', 'int8' or 'auto', got 'fp16'",
        ),
        ({"features__pooling": "sum"}, "features.pooling must be 'avg', 'max' or 'flatten', got 'sum'"),
        (
            {"features__engine": "openvino"},
            "features.engine must be 'auto', 'tensorflow' or 'onnxruntime', got 'openvino'",
        ),
        (
            {"features__engine": "onnxruntime", "features__precision": "bfloat16"},
            "features.engine onnxruntime runs float32 or int8, not bfloat16",
        ),
        (
            {"features__engine": "tensorflow", "features__precision": "int8"},
            "features.precision int8 runs on the onnxruntime engine, not tensorflow",
        ),
        ({"features__executor": "spark"}, "features.executor must be 'local' or 'ray', got 'spark'"),
        (
            {"features__executor": "ray", "features__engine": "tensorflow"},
            "features.executor ray runs the onnxruntime engine, not tensorflow",
        ),
        (
            {"features__executor": "ray", "features__precision": "bfloat16"},
            "features.executor ray runs float32 or int8 (ONNX Runtime), not bfloat16",
        ),
        ({"features__weights": "imagenet21k"}, "features.weights must be 'imagenet' or null, got 'imagenet21k'"),
        ({"train__learning_rate": float("inf")}, "train.learning_rate must be a finite number, got inf"),
        (
            {"train__learning_rate": "1e-4"},
            "train.learning_rate must be a valid number, got '1e-4' (YAML reads 1e-4 as",
        ),
        ({"features__input_size": 320}, "features.input_size must be {backbone: side}, one entry per backbone, sides"),
        ({"features__input_size": {**SIZES, "efficientnet_lite2": 20}}, "features.input_size must be {backbone: side}"),
        (
            {"features__input_size": {"efficientnet_lite0": 224}},
            "features.input_size has no side for efficientnet_lite2; add efficientnet_lite2: 260 (its own)",
        ),
        (
            {"features__input_size": {**SIZES, "efficientnet_lite9": 320}},
            "features.input_size: unknown backbone 'efficientnet_lite9'; known: ",
        ),
        ({"features__batch_size": 0}, "features.batch_size must be greater than or equal to 1, got 0"),
        (
            {"features__workers": "2*1"},
            "features.workers must be \"auto\" or WxT (W worker processes of T threads each, e.g. 2x1), got '2*1'",
        ),
        ({"features__workers": 2}, 'features.workers must be "auto" or WxT'),
        ({"features__workers": "0x1"}, 'features.workers must be "auto" or WxT'),
        ({"train__optimizer": "adamm"}, "train.optimizer must be 'adadelta', 'adafactor', "),
        ({"finetune__optimizer": "SGD"}, "finetune.optimizer must be 'adadelta', 'adafactor', "),
        ({"train__dropout": 1.5}, "train.dropout must be less than 1, got 1.5"),
        ({"finetune__dropout": -0.5}, "finetune.dropout must be greater than or equal to 0, got -0.5"),
        ({"train__learning_rate": -0.001}, "train.learning_rate must be greater than 0, got -0.001"),
        ({"finetune__head_learning_rate": 0}, "finetune.head_learning_rate must be greater than 0, got 0"),
        ({"finetune__momentum": 1.0}, "finetune.momentum must be less than 1, got 1.0"),
        ({"finetune__trainable_blocks": -3}, "finetune.trainable_blocks must be greater than or equal to 0, got -3"),
        ({"finetune__augment__rotation": 400}, "finetune.augment.rotation must be less than or equal to 180, got 400"),
        ({"finetune__augment__shear": "x"}, "finetune.augment.shear must be a valid number, got 'x'"),
        ({"evaluate__worst_mistakes": -5}, "evaluate.worst_mistakes must be greater than or equal to 0, got -5"),
        ({"evaluate__worst_mistakes": 5000}, "evaluate.worst_mistakes must be less than or equal to 1000, got 5000"),
        ({"audit__show": 1001}, "audit.show must be less than or equal to 1000, got 1001"),
        ({"train__seed": -1}, "train.seed must be greater than or equal to 0, got -1"),
        ({"train__hidden": -1}, "train.hidden must be greater than or equal to 0, got -1"),
        ({"finetune__epochs": -1}, "finetune.epochs must be greater than or equal to 0, got -1"),
        ({"predict__clip": [0.995, 0.005]}, 'predict.clip must be "auto" or [low, high] with 0 <= low < 1/2 < high'),
        ({"predict__clip": [0.6, 0.9]}, 'predict.clip must be "auto" or [low, high] with 0 <= low < 1/2 < high <= 1'),
        ({"predict__clip": [0.1, 0.5]}, 'predict.clip must be "auto" or [low, high] with 0 <= low < 1/2 < high <= 1'),
        ({"predict__clip": [0.005]}, 'predict.clip must be "auto" or [low, high]'),
        ({"submit__labels": ""}, "submit.labels must be a non-empty string, got ''"),
        ({"data__raw": 5}, "data.raw must be a valid string, got 5"),
        ({"backbones": []}, "backbones must be a non-empty list, got []"),
        ({"backbones": ["resnet5O", "efficientnet_lite2"]}, "backbones: unknown backbone 'resnet5O'; known: "),
        (
            {"backbones": ["efficientnet_lite2", "efficientnet_lite2"]},
            "backbones: 'efficientnet_lite2' is listed twice",
        ),
        ({"finetune__backbone": "efficientnet_lite3"}, "finetune.backbone: unknown backbone 'efficientnet_lite3'"),
        ({"backbones": ["efficientnet_lite0"]}, "finetune.backbone 'efficientnet_lite2' must be one of backbones"),
        (
            {"backbones": ["xception", "efficientnet_lite2"], "features__input_size": {**SIZES, "xception": 64}},
            "features.input_size must be at least 71 for xception, got 64",
        ),
    ],
)
def test_each_problem_has_a_clear_message(changes, message):
    problems = _problems(**changes)
    assert len(problems) == 1 and problems[0].startswith(message), problems


def test_every_problem_is_reported_at_once():
    problems = _problems(features__resize="crops", train__dropout=1.5, evaluate__worst_mistakes=-5)
    assert [p.split(" ")[0] for p in problems] == ["features.resize", "train.dropout", "evaluate.worst_mistakes"]


def test_the_choices_allowed_are_the_ones_the_code_knows():
    from dogscats.base import params, vocabulary
    from dogscats.base.backbone_sizes import NATIVE_SIZES
    from dogscats.base.params import Features
    from dogscats.data.images import DECODE_POLICIES, RESIZE_POLICIES
    from dogscats.engine.conversion import ENGINES
    from dogscats.engine.extract import PRECISIONS
    from dogscats.networks.backbones import POOLINGS, registry

    assert set(NATIVE_SIZES) == set(registry())
    choices = {name: get_args(field.annotation) for name, field in Features.model_fields.items()}
    assert (choices["pooling"], choices["precision"]) == (POOLINGS, PRECISIONS)
    assert (choices["resize"], choices["decode"]) == (RESIZE_POLICIES, DECODE_POLICIES)
    assert choices["engine"] == ENGINES
    assert (POOLINGS, PRECISIONS, ENGINES) == (params.POOLINGS, params.PRECISIONS, params.ENGINES)  # one list each
    assert (RESIZE_POLICIES, DECODE_POLICIES) == (params.RESIZE_POLICIES, params.DECODE_POLICIES)
    lists = (
        r"^(AUTO|ENGINES|EXECUTORS|PRECISIONS|POOLINGS|WEIGHTS|OPTIMIZERS|RESIZE_POLICIES|DECODE_POLICIES|LAYOUT) = "
    )
    written = [p for p in (REPO / "dogscats").rglob("*.py") if re.search(lists, p.read_text(), re.MULTILINE)]
    assert written == [REPO / "dogscats" / "base" / "vocabulary.py"]  # each list written once, where all read it
    assert vocabulary.PRECISIONS is PRECISIONS


def test_a_params_file_that_is_not_a_mapping_is_named():
    assert check_params(None) == ["the params must be a mapping of sections, got None"]


def test_a_missing_key_is_named():
    params = default_params()
    del params["train"]["seed"]
    assert check_params(params) == ["missing key train.seed"]


def test_keras_knows_every_optimizer_the_params_allow():
    import keras

    for name in OPTIMIZERS:
        assert keras.optimizers.get({"class_name": name, "config": {"learning_rate": 0.01}}).learning_rate == 0.01


def test_a_stage_stops_before_any_work_with_one_line_per_problem(in_project, kaggle_raw, tmp_path):
    in_project(data={"raw": str(kaggle_raw)}, prepare={"folds": 0}, features={"resize": "crops"})
    with pytest.raises(ParamsError) as stop:
        prepare.main(*PREPARE_ARGS)
    assert str(stop.value).splitlines() == [
        "params.yaml: prepare.folds must be greater than or equal to 2, got 0",
        "params.yaml: features.resize must be 'squash', 'crop' or 'pad', got 'crops'",
    ]
    assert not (tmp_path / "data").exists()


def test_load_params_returns_the_file(tmp_path):
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(default_params()))
    assert load_params(tmp_path / "params.yaml") == default_params()


@pytest.mark.parametrize("stage", ["demo", "prepare", "predict", "evaluate", "audit", "submit"])
def test_stages_that_run_no_network_never_import_tensorflow(stage):
    check = f"import sys, stages.{stage}; from dogscats.base.params import load_params; load_params(); "
    check += "print(sorted({'tensorflow', 'keras'} & set(sys.modules)))"
    result = subprocess.run([sys.executable, "-c", check], cwd=REPO, capture_output=True, text=True)
    assert result.returncode == 0 and result.stdout.strip() == "[]", result.stdout + result.stderr


def test_the_params_give_every_backbone_a_side_its_own_but_lite2s():
    sizes = default_params()["features"]["input_size"]
    assert sizes == {**NATIVE_SIZES, "efficientnet_lite2": 320}  # each features stage tracks its own entry


def test_each_features_stage_tracks_every_features_param_but_the_other_backbones_sizes():
    stage = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]["features"]["do"]
    shared = {f"features.{key}" for key in default_params()["features"] if key != "input_size"}
    assert set(stage["params"]) == shared | {"features.input_size.${item}"}


# Where the photos lie, not what they are: the stages that open images (features, finetune, evaluate, audit) read
# data.raw to find them, but the manifest's md5 column pins each image's content, so they must not track it: moving
# the photos reruns prepare alone (which tracks data.raw), and every later stage comes from the run-cache.
LOCATORS = {"data.raw"}


def _params_read(module: str) -> set[str]:
    """The params a stage script reads by key from load_params() (section, or section.key), as dotted names."""
    source = (REPO / "stages" / f"{module}.py").read_text()
    names = ["load_params\\(\\)", *re.findall(r"(\w+) = load_params\(\)$", source, re.MULTILINE)]
    found = re.findall(rf'\b(?:{"|".join(names)})\["(\w+)"\](?:\["(\w+)"\])?', source)
    return {".".join(part for part in parts if part) for parts in found}


def test_each_stage_tracks_the_params_it_reads_but_data_raw_which_only_locates_the_images():
    stages = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]
    locating = set()
    for name, stage in stages.items():
        stage = stage.get("do", stage)
        declared = set(stage.get("params", []))
        read = _params_read(re.search(r"python -m stages\.(\w+)", stage["cmd"])[1])
        untracked = {
            key
            for key in read
            if not any(f"{key}.".startswith(f"{d}.") or d.startswith(f"{key}.") for d in declared)  # within, or part
        }
        assert untracked <= LOCATORS, (name, untracked)
        locating |= {name} if untracked else set()
    assert locating == {"features", "finetune", "evaluate", "audit"}  # the image readers find them through data.raw


def test_predict_clip_must_leave_every_class_above_its_low_bound():
    from dogscats.base.params import clip_problem

    assert clip_problem([0.4, 0.9], 2) is None and clip_problem("auto", 5) is None
    assert clip_problem([0.4, 0.9], 3) == (
        "predict.clip: low 0.4 must be below 1/3 for 3 classes; lower it, or use auto"
    )


def test_predict_stops_with_one_line_when_the_clip_low_bound_is_not_below_one_over_k(in_project, tmp_path):
    from stages import predict

    in_project(predict={**default_params()["predict"], "clip": [0.4, 0.9]})  # valid for two classes, not for three
    (tmp_path / "data").mkdir()
    rows = [f"{c}/{n},,{c},train,{n + 1},,,x" for c in ("bird", "cat", "dog") for n in range(2)] + ["t,,,test,0,,,x"]
    (tmp_path / "data" / "split.csv").write_text("id,file,label,split,fold,source,problem,md5\n" + "\n".join(rows))
    with pytest.raises(ParamsError) as stop:
        predict.main(*PREDICT_ARGS)
    assert (
        str(stop.value) == "params.yaml: predict.clip: low 0.4 must be below 1/3 for 3 classes; lower it, or use auto"
    )
