"""Access to params.yaml, the single source of every tunable of the pipeline, checked before any work starts.

The schema is a pydantic model (pydantic comes with DVC): types, choices and ranges declared once, every problem
reported at once. Checking needs no TensorFlow, so the stages that run no network start in well under a second."""

from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import Field, ValidationError, field_validator

from dogscats.base.backbone_sizes import MIN_SIZE, MIN_SIZES, NATIVE_SIZES
from dogscats.base.schema import Section, describe
from dogscats.base.vocabulary import (
    AUTO,
    CLASS_WEIGHTS,
    DECODE_POLICIES,
    ENGINES,
    EXECUTORS,
    LAYOUT,
    LAYOUT_HELP,
    ONNXRUNTIME_PRECISIONS,
    OPTIMIZERS,
    POOLINGS,
    PRECISIONS,
    RESIZE_POLICIES,
    WEIGHTS,
)

PARAMS_FILE = Path("params.yaml")
Seed = Annotated[int, Field(ge=0, le=2**32 - 1)]  # NumPy's range
AtLeastOne = Annotated[int, Field(ge=1)]
NonNegative = Annotated[int, Field(ge=0)]
Rate = Annotated[float, Field(gt=0)]
Fraction = Annotated[float, Field(ge=0, lt=1)]  # from 0, below 1: dropout, momentum, augmentation
Optimizer = Literal[OPTIMIZERS]


class ParamsError(SystemExit):
    """Bad params: the run ends with one line per problem, and no traceback."""


class Data(Section):
    raw: Annotated[str, Field(min_length=1)]


class Demo(Section):
    train_per_class: AtLeastOne
    test_count: AtLeastOne
    seed: Seed


class Prepare(Section):
    folds: Annotated[int, Field(ge=2)]
    max_bad_fraction: Annotated[float, Field(ge=0, le=1)]
    seed: Seed


class Features(Section):
    weights: Literal[WEIGHTS]
    batch_size: AtLeastOne
    resize: Literal[RESIZE_POLICIES]
    decode: Literal[DECODE_POLICIES]
    tta: bool
    crops: Literal[1, 5]
    precision: Literal[PRECISIONS]
    pooling: Literal[POOLINGS]
    input_size: dict[str, int]
    engine: Literal[ENGINES]
    executor: Literal[EXECUTORS]
    workers: Any

    @field_validator("workers", mode="plain")
    @classmethod
    def _workers(cls, value: Any) -> Any:
        if value != AUTO and not LAYOUT.fullmatch(str(value)):
            raise ValueError(LAYOUT_HELP)
        return value

    @field_validator("crops", mode="before")
    @classmethod
    def _crops(cls, value: Any) -> Any:
        if isinstance(value, bool):  # Literal[1, 5] alone would take true for 1
            raise ValueError("1 or 5")
        return value

    @field_validator("input_size", mode="plain")
    @classmethod
    def _input_size(cls, value: Any) -> Any:
        def side(v: Any) -> bool:
            return isinstance(v, int) and not isinstance(v, bool) and v >= MIN_SIZE

        if not (isinstance(value, dict) and all(isinstance(k, str) and side(v) for k, v in value.items())):
            raise ValueError(f"{{backbone: side}}, one entry per backbone, sides of at least {MIN_SIZE} pixels")
        return value


class Train(Section):
    hidden: NonNegative
    dropout: Fraction
    optimizer: Optimizer
    learning_rate: Rate
    epochs: AtLeastOne
    batch_size: AtLeastOne
    refit: bool
    class_weight: Literal[CLASS_WEIGHTS]
    seed: Seed


class Augment(Section):
    flip: bool
    rotation: Annotated[float, Field(ge=0, le=180)]
    zoom: Fraction
    shift: Fraction
    shear: Fraction


class Finetune(Section):
    backbone: str
    trainable_blocks: NonNegative
    head_epochs: NonNegative
    head_learning_rate: Rate
    hidden: NonNegative
    dropout: Fraction
    optimizer: Optimizer
    learning_rate: Rate
    momentum: Fraction
    epochs: NonNegative
    batch_size: AtLeastOne
    augment: Augment
    seed: Seed


class Predict(Section):
    blend: Any
    finetune_tta: bool
    calibrate: bool
    clip: Any

    @field_validator("blend", mode="plain")
    @classmethod
    def _blend(cls, value: Any) -> Any:
        if value != AUTO and not (_is_number(value) and 0 <= value <= 1):
            raise ValueError('"auto" or a number from 0 to 1')
        return value

    @field_validator("clip", mode="plain")
    @classmethod
    def _clip(cls, value: Any) -> Any:
        pair = isinstance(value, list) and len(value) == 2 and all(_is_number(v) for v in value)
        if value != AUTO and not (pair and 0 <= value[0] < 1 / 2 < value[1] <= 1):  # 1/K < 1/2 for K classes: predict
            raise ValueError('"auto" or [low, high] with 0 <= low < 1/2 < high <= 1')  # checks low < 1/K, knowing K
        return value


# Photos a page shows, per kind on the audit's (each a small JPEG inline, maps computed 16 at a time): a bound.
PagePhotos = Annotated[int, Field(ge=0, le=1000)]


class Evaluate(Section):
    worst_mistakes: PagePhotos


class Audit(Section):
    near_duplicate: Annotated[float, Field(gt=0, le=1)]
    outlier_neighbours: AtLeastOne
    outlier_fence: Annotated[float, Field(ge=0)]
    search: Literal["auto", "exact", "index"]
    show: PagePhotos


class Submit(Section):
    labels: Annotated[str, Field(min_length=1)] | None


class Params(Section):
    """params.yaml."""

    data: Data
    demo: Demo
    prepare: Prepare
    backbones: Annotated[list[str], Field(min_length=1)]
    features: Features
    train: Train
    finetune: Finetune
    predict: Predict
    evaluate: Evaluate
    audit: Audit
    submit: Submit


def load_params(path: Path | str = PARAMS_FILE) -> dict:
    """All params as a dict, after checking them; a problem stops the run with one line per problem."""
    with open(path) as f:
        params = yaml.load(f, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))  # libyaml's, where PyYAML has it
    problems = check_params(params)
    if problems:
        raise ParamsError("\n".join(f"{path}: {problem}" for problem in problems))
    return params


def check_params(params: Any) -> list[str]:
    """Every problem found in the params, one line each naming the key, the value and what is allowed."""
    try:
        Params.model_validate(params)
    except ValidationError as err:
        return [_describe(error) for error in err.errors()]
    return _check_backbones(params)


def _describe(error: dict) -> str:
    """One pydantic error as a line (dogscats.base.schema.describe), with a hint where YAML read a number as text."""
    hint = ""
    if error["type"] == "float_type" and isinstance(error["input"], str) and _reads_as_float(error["input"]):
        hint = f" (YAML reads {error['input']} as text: write it with a decimal point, e.g. 1.0e-4)"
    return describe(error, "the params must be a mapping of sections") + hint


def _reads_as_float(text: str) -> bool:
    """Whether Python would read the text as a number (YAML 1.1 reads 1e-4, without a dot, as a string)."""
    try:
        float(text)
    except ValueError:
        return False
    return True


def _check_backbones(params: dict) -> list[str]:
    """The rules that tie keys together: known and distinct backbones, the fine-tuned one among them, input sizes."""
    backbones, tuned = params["backbones"], params["finetune"]["backbone"]
    known = ", ".join(sorted(NATIVE_SIZES))
    problems = [
        f"backbones: unknown backbone {name!r}; known: {known}" for name in backbones if name not in NATIVE_SIZES
    ]
    problems += [f"backbones: {name!r} is listed twice" for name in sorted(set(backbones)) if backbones.count(name) > 1]
    if tuned not in NATIVE_SIZES:
        problems.append(f"finetune.backbone: unknown backbone {tuned!r}; known: {known}")
    elif tuned not in backbones:
        problems.append(f"finetune.backbone {tuned!r} must be one of backbones ({', '.join(backbones)})")
    precision = params["features"]["precision"]
    if params["features"]["engine"] == "onnxruntime" and precision not in ONNXRUNTIME_PRECISIONS:
        problems.append(f"features.engine onnxruntime runs float32 or int8, not {precision}")
    if params["features"]["engine"] == "tensorflow" and precision == "int8":
        problems.append("features.precision int8 runs on the onnxruntime engine, not tensorflow; set engine: auto")
    problems += _executor_problems(params["features"])
    sizes = params["features"]["input_size"]
    problems += [
        f"features.input_size: unknown backbone {name!r}; known: {known}" for name in sizes if name not in NATIVE_SIZES
    ]
    for name in dict.fromkeys([*backbones, tuned]):  # each features stage tracks its own entry
        if name in NATIVE_SIZES and name not in sizes:
            problems.append(f"features.input_size has no side for {name}; add {name}: {NATIVE_SIZES[name]} (its own)")
    for name in sorted(set(sizes) & set(MIN_SIZES)):
        if sizes[name] < MIN_SIZES[name]:
            problems.append(f"features.input_size must be at least {MIN_SIZES[name]} for {name}, got {sizes[name]}")
    return problems


def _executor_problems(features: dict) -> list[str]:
    """The Ray executor runs the ONNX Runtime engine, which runs float32 and int8."""
    if features["executor"] != "ray":
        return []
    problems = []
    if features["engine"] == "tensorflow":
        problems.append("features.executor ray runs the onnxruntime engine, not tensorflow; set features.engine: auto")
    if features["precision"] not in ONNXRUNTIME_PRECISIONS:
        problems.append(f"features.executor ray runs float32 or int8 (ONNX Runtime), not {features['precision']}")
    return problems


def clip_problem(clip: Any, n_classes: int) -> str | None:
    """Why predict.clip cannot clip probabilities of n_classes classes (None if it can): low must lie below 1/K, or
    every clipped row would sum to more than 1 (K > 2) or the bounds cross the middle (K = 2)."""
    if clip == AUTO or clip[0] < 1 / n_classes:
        return None
    return f"predict.clip: low {clip[0]} must be below 1/{n_classes} for {n_classes} classes; lower it, or use auto"


def _is_number(value: Any) -> bool:
    """An int or float, not a bool."""
    return isinstance(value, int | float) and not isinstance(value, bool)
