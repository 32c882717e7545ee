"""Each recipe of the Recipes table in docs/recipes.md, its command's params applied as written, run through the real
stages on a tiny generated dataset with random weights (the ImageNet weights of recipes 2 to 5 cannot be downloaded
here). Each stage runs as DVC runs it, `python -m stages.<name>` in a process of its own: converting and training
VGG16, ResNet50, InceptionV3 and Xception in the test's own process held 15 GB at once."""

import json
import re
import shlex
from pathlib import Path

import h5py
import pandas as pd
import pytest
import yaml

from dogscats.base.params import check_params

from .conftest import PREDICT_ARGS, PREPARE_ARGS, TRAIN_ARGS, default_params, finetune_args, run_stage

RECIPES_PAGE = Path(__file__).parent.parent / "docs" / "recipes.md"
QUICK = {"train.epochs": 2, "finetune.epochs": 1, "finetune.head_epochs": 2}  # the most epochs the tests run


def recipe_commands() -> dict[int, str]:
    """Recipe number -> its command (the `dvc exp run -S ...` overrides) from the Recipes table of docs/recipes.md."""
    section = RECIPES_PAGE.read_text().split("## Recipes", 1)[1].split("\n## ", 1)[0]
    rows = re.findall(r"^\| (\d) \| [^|]+ \| ([^|]+) \|", section, re.MULTILINE)
    return {int(number): command.strip("` ") for number, command in rows}


def overrides(command: str) -> dict[str, object]:
    """The `-S key=value` pairs of a command, each value parsed as YAML (as DVC does)."""
    words = shlex.split(command)
    pairs = [words[i + 1] for i, word in enumerate(words) if word == "-S"]
    return {key: yaml.safe_load(value) for key, value in (pair.split("=", 1) for pair in pairs)}


def apply_overrides(params: dict, values: dict[str, object]) -> dict:
    """params with each dotted key set to its value."""
    for key, value in values.items():
        *sections, name = key.split(".")
        node = params
        for section in sections:
            node = node[section]
        node[name] = value
    return params


def test_readme_lists_six_recipes_and_each_command_sets_known_params():
    commands = recipe_commands()
    assert sorted(commands) == [1, 2, 3, 4, 5, 6]
    for number, command in commands.items():
        if number == 3:
            assert command == "the same experiment as recipe 2"  # its finetune stage
            continue
        problems = check_params(apply_overrides(default_params(), overrides(command)))  # unknown keys included
        assert problems == [], f"recipe {number}: {problems}"


RECIPES = {  # recipe -> the checks on what it built; recipe 3 is recipe 2's finetune stage, 6 is the default
    1: "small_cnn",
    2: "vgg16",
    4: "vgg16",
    5: "resnet50,inception_v3,xception",
}


@pytest.mark.slow  # VGG16, ResNet50, InceptionV3 and Xception built and run on 25 images: about 2 minutes
@pytest.mark.parametrize("number", sorted(RECIPES))
def test_each_recipe_runs_through_the_stages_with_random_weights(number, kaggle_raw, in_project):
    values = overrides(recipe_commands()[number])
    params = apply_overrides(in_project(data={"raw": str(kaggle_raw)}, finetune={"batch_size": 8}), values)
    for key, most in QUICK.items():
        section, name = key.split(".")
        params[section][name] = min(params[section][name], most)
    Path("params.yaml").write_text(yaml.safe_dump(params))
    assert ",".join(params["backbones"]) == RECIPES[number]

    run_stage("prepare", *PREPARE_ARGS)
    for name in params["backbones"]:
        run_stage("features", name, "data/split.csv", f"data/features/{name}.h5", f"metrics/features/{name}.json")
    run_stage("train", *TRAIN_ARGS)
    tuned_args = finetune_args(params["finetune"]["backbone"])
    run_stage("finetune", *tuned_args)
    run_stage("predict", *PREDICT_ARGS)

    dim = sum(json.loads(Path(f"metrics/features/{n}.json").read_text())["dim"] for n in params["backbones"])
    expected_dim = {1: 7 * 7 * 128, 2: 4 * 4 * 512, 4: 512, 5: 2048 + 2048 + 2048}[number]
    assert dim == expected_dim  # recipes 1 and 2 flatten the last feature map; 4 and 5 pool it
    with h5py.File(tuned_args[1]) as h5:
        assert h5.attrs["pooling"] == params["features"]["pooling"]
    tuned = json.loads(Path("metrics/finetune.json").read_text())
    head = json.loads(Path(TRAIN_ARGS[-1]).read_text())
    assert 0 < head["oof_logloss_optimistic"] < 5
    curve = pd.read_csv("metrics/live/finetune/plots/metrics/oof_logloss.tsv", sep="\t")
    if number == 5:  # 0 epochs and blend 0: nothing reads a fine-tuned model, so the stage trains nothing
        assert tuned["fine_tuned"] == 0 and tuned["epochs_run"] == 0 and curve.empty
        assert json.loads(Path("models/finetuned/finetuned.json").read_text())["fold_input"] == "none"
    else:
        assert 0 < tuned["oof_logloss_optimistic"] < 5
        assert len(curve) - 1 == tuned["epochs_run"] == params["finetune"]["epochs"]
    trainable = {  # recipe 2's finetune stage is recipe 3: VGG16's block5 (3 convs, 512 -> 512) and the head
        1: 896 + 18_496 + 73_856 + 147_584 + (6272 * 512 + 512) + 513,  # every layer
        2: 3 * (9 * 512 * 512 + 512) + (8192 * 256 + 256) + 257,
        4: (512 * 1024 + 1024) + 1025,  # the base frozen: Dense(1024) and the output
        5: None,  # not fine-tuned (above)
    }[number]
    assert tuned.get("trainable_weights") == trainable
    scores = json.loads(Path("metrics/predict.json").read_text())
    blend = params["predict"]["blend"]
    assert scores["blend"] == blend if blend != "auto" else 0 <= scores["blend"] <= 1
    assert scores["n_test"] == 6
