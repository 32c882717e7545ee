"""params.yaml is checked before any work: one clear message per problem."""

import copy

import pytest
import yaml

from dogscats.params import check_params, load_params
from stages import prepare

from .conftest import default_params


def _problems(**changes) -> list[str]:
    """The problems found after setting dotted keys to values."""
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
        ({"train__epochs": "30"}, "train.epochs must be an integer, got '30'"),
        ({"train__epochs": True}, "train.epochs must be an integer, got True"),
        ({"features__tta": "yes"}, "features.tta must be true or false, got 'yes'"),
        ({"predict__blend": "half"}, "predict.blend must be a number or \"auto\", got 'half'"),
        ({"finetune__augment__zoom": None}, "finetune.augment.zoom must be a number, got None"),
        ({"prepare__val_fraction": 0}, "prepare.val_fraction must be between 0 and 1, got 0"),
        ({"features__pooling": "sum"}, "features.pooling must be one of avg, max, flatten, got 'sum'"),
        ({"features__input_size": 16}, "features.input_size must be null (the backbone's own) or at least 32, got 16"),
        ({"train__hidden": -1}, "train.hidden must be 0 or more, got -1"),
        ({"finetune__augment__shear": "x"}, "finetune.augment.shear must be a number, got 'x'"),
        ({"prepare__val_fraction": 1.5}, "prepare.val_fraction must be between 0 and 1, got 1.5"),
        ({"predict__clip": [0.995, 0.005]}, "predict.clip must be auto or [low, high] with 0 <= low < high <= 1"),
        ({"predict__clip": [0.005]}, "predict.clip must be auto or [low, high]"),
        ({"predict__blend": 1.5}, "predict.blend must be auto or between 0 and 1, got 1.5"),
        ({"backbones": ["resnet5O"]}, "unknown backbone 'resnet5O'; known backbones: "),
        ({"finetune__backbone": "efficientnet_lite3"}, "unknown backbone 'efficientnet_lite3'"),
        ({"backbones": ["efficientnet_lite0"]}, "finetune.backbone 'efficientnet_lite2' must be one of backbones"),
        ({"train__folds": 0}, "train.folds must be at least 1, got 0"),
        ({"finetune__epochs": -1}, "finetune.epochs must be 0 or more, got -1"),
        (
            {"backbones": ["xception", "efficientnet_lite2"], "features__input_size": 64},
            "features.input_size: xception needs at least 71, got 64",
        ),
        ({"prepare__max_bad_fraction": -0.1}, "prepare.max_bad_fraction must be between 0 and 1, got -0.1"),
    ],
)
def test_each_problem_has_a_clear_message(changes, message):
    problems = _problems(**changes)
    assert len(problems) == 1 and problems[0].startswith(message), problems


def test_a_missing_key_is_named():
    params = default_params()
    del params["train"]["seed"]
    assert check_params(params) == ["missing key train.seed"]


def test_a_stage_stops_before_any_work(in_project, kaggle_raw, tmp_path):
    params = in_project(data={"raw": str(kaggle_raw)}, prepare={"val_fraction": 2})
    assert params["prepare"]["val_fraction"] == 2
    with pytest.raises(ValueError, match="params.yaml: prepare.val_fraction must be between 0 and 1, got 2"):
        prepare.main("data/prepared", "data/split.csv", "data/prepare_report.csv", "metrics/prepare.json")
    assert not (tmp_path / "data").exists()


def test_load_params_returns_the_file(tmp_path):
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(default_params()))
    assert load_params(tmp_path / "params.yaml") == default_params()
