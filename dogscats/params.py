"""Access to params.yaml, the single source of every tunable of the pipeline, checked before any work starts."""

from pathlib import Path

import yaml

PARAMS_FILE = Path("params.yaml")
AUTO = "auto"
MIN_INPUT_SIZE = {"inception_v3": 75, "xception": 71}  # the smallest sides keras.applications accepts; others 32

# The expected type of every key: int, float (an int is accepted), bool, str, list, None (null allowed), AUTO (the
# string "auto" allowed), or a nested section.
SCHEMA: dict = {
    "data": {"raw": str},
    "demo": {"train_per_class": int, "test_count": int, "seed": int},
    "prepare": {"val_fraction": float, "max_bad_fraction": float, "seed": int},
    "backbones": list,
    "features": {
        "weights": (str, None),
        "batch_size": int,
        "resize": str,
        "decode": str,
        "tta": bool,
        "precision": str,
        "pooling": str,
        "input_size": (int, None),
    },
    "train": {
        "hidden": int,
        "dropout": float,
        "optimizer": str,
        "learning_rate": float,
        "epochs": int,
        "batch_size": int,
        "folds": int,
        "seed": int,
    },
    "finetune": {
        "backbone": str,
        "trainable_blocks": int,
        "head_epochs": int,
        "head_learning_rate": float,
        "hidden": int,
        "dropout": float,
        "optimizer": str,
        "learning_rate": float,
        "momentum": float,
        "epochs": int,
        "patience": int,
        "batch_size": int,
        "augment": {"flip": bool, "rotation": float, "zoom": float, "shift": float, "shear": float},
        "seed": int,
    },
    "predict": {"blend": (float, AUTO), "finetune_tta": bool, "calibrate": bool, "clip": (list, AUTO)},
    "evaluate": {"worst_mistakes": int},
    "submit": {"labels": (str, None)},
}
TYPE_NAMES = {int: "an integer", float: "a number", bool: "true or false", str: "a string", list: "a list"}


def load_params(path: Path | str = PARAMS_FILE) -> dict:
    """All params as a dict, after checking them; a problem stops the run with one line per problem."""
    with open(path) as f:
        params = yaml.safe_load(f)
    problems = check_params(params)
    if problems:
        raise ValueError(f"{path}: " + "; ".join(problems))
    return params


def check_params(params: dict) -> list[str]:
    """Every problem found in the params: unknown or missing keys, wrong types, values out of range."""
    problems = _check_types(params, SCHEMA, "")
    return problems or _check_values(params)


def _check_types(values: dict, schema: dict, prefix: str) -> list[str]:
    """Unknown keys, missing keys and wrong types, recursively, named by their dotted path."""
    if not isinstance(values, dict):
        return [f"{prefix.rstrip('.') or 'params'} must be a section of keys"]
    problems = [f"unknown key {prefix}{key}" for key in values if key not in schema]
    for key, expected in schema.items():
        name = f"{prefix}{key}"
        if key not in values:
            problems.append(f"missing key {name}")
        elif isinstance(expected, dict):
            problems += _check_types(values[key], expected, f"{name}.")
        elif not _has_type(values[key], expected):
            problems.append(f"{name} must be {_describe(expected)}, got {values[key]!r}")
    return problems


def _has_type(value: object, expected: type | tuple | None | str) -> bool:
    """Whether a value matches an expected type (see SCHEMA)."""
    if isinstance(expected, tuple):
        return any(_has_type(value, e) for e in expected)
    if expected is None or expected == AUTO:
        return value == expected
    if expected is float:
        return isinstance(value, int | float) and not isinstance(value, bool)
    if expected is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, expected)


def _describe(expected: type | tuple | None | str) -> str:
    """An expected type in words."""
    if isinstance(expected, tuple):
        return " or ".join(_describe(e) for e in expected)
    return "null" if expected is None else f'"{expected}"' if expected == AUTO else TYPE_NAMES[expected]


def _check_values(params: dict) -> list[str]:
    """Ranges and choices that types alone do not catch."""
    from dogscats.backbones import POOLINGS, registry  # imported here: it loads Keras

    known = registry()
    problems = []
    if not 0 < params["prepare"]["val_fraction"] < 1:
        problems.append(f"prepare.val_fraction must be between 0 and 1, got {params['prepare']['val_fraction']}")
    if not 0 <= params["prepare"]["max_bad_fraction"] <= 1:
        problems.append(
            f"prepare.max_bad_fraction must be between 0 and 1, got {params['prepare']['max_bad_fraction']}"
        )
    if not params["backbones"]:
        problems.append("backbones must name at least one backbone")
    unknown = [name for name in [*params["backbones"], params["finetune"]["backbone"]] if name not in known]
    problems += [f"unknown backbone {name!r}; known backbones: {', '.join(sorted(known))}" for name in unknown]
    if not unknown and params["finetune"]["backbone"] not in params["backbones"]:
        problems.append(f"finetune.backbone {params['finetune']['backbone']!r} must be one of backbones")
    blend = params["predict"]["blend"]
    if blend != AUTO and not 0 <= blend <= 1:
        problems.append(f"predict.blend must be auto or between 0 and 1, got {blend}")
    clip = params["predict"]["clip"]
    if clip != AUTO and not (len(clip) == 2 and all(_has_type(c, float) for c in clip) and 0 <= clip[0] < clip[1] <= 1):
        problems.append(f"predict.clip must be auto or [low, high] with 0 <= low < high <= 1, got {clip}")
    for section, key in [("demo", "train_per_class"), ("features", "batch_size"), ("train", "epochs"),
                         ("train", "batch_size"), ("train", "folds"), ("finetune", "batch_size")]:  # fmt: skip
        if params[section][key] < 1:
            problems.append(f"{section}.{key} must be at least 1, got {params[section][key]}")
    for section, key in [("train", "hidden"), ("finetune", "hidden"), ("finetune", "head_epochs"),
                         ("finetune", "epochs")]:  # fmt: skip
        if params[section][key] < 0:
            problems.append(f"{section}.{key} must be 0 or more, got {params[section][key]}")
    if params["features"]["pooling"] not in POOLINGS:
        problems.append(f"features.pooling must be one of {', '.join(POOLINGS)}, got {params['features']['pooling']!r}")
    size = params["features"]["input_size"]
    if size is not None and size < 32:
        problems.append(f"features.input_size must be null (the backbone's own) or at least 32, got {size}")
    elif size is not None:
        for name in sorted(set(params["backbones"]) & set(MIN_INPUT_SIZE)):
            if size < MIN_INPUT_SIZE[name]:
                problems.append(f"features.input_size: {name} needs at least {MIN_INPUT_SIZE[name]}, got {size}")
    return problems
