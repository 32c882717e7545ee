"""The schema tooling params.yaml and a model's settings.json are checked with (pydantic, light: no YAML, no
TensorFlow): sections that refuse unknown keys and type conversions, and each problem as one line naming the key,
what is allowed and the value given."""

from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationError


class Section(BaseModel):
    """A checked mapping: no unknown keys, no type conversions (30 is not "30", 1 is not true), no NaN or infinity."""

    model_config = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False)


def problems(schema: type[BaseModel], document: Any, whole: str) -> list[str]:
    """Every problem found in the document, one line each; whole is the line when the document is not a mapping."""
    try:
        schema.model_validate(document)
    except ValidationError as err:
        return [describe(error, whole) for error in err.errors()]
    return []


def describe(error: dict, whole: str) -> str:
    """One pydantic error as a line: the dotted key, what is allowed, the value given (whole, then the value, when
    the error is about the document itself)."""
    key = ".".join(str(part) for part in error["loc"])
    if not key:
        return f"{whole}, got {error['input']!r}"
    if error["type"] == "missing":
        return f"missing key {key}"
    if error["type"] == "extra_forbidden":
        return f"unknown key {key}"
    message = error["msg"].removeprefix("Value error, ").removeprefix("Input should be ")
    allowed = message
    if error["type"] in ("string_too_short", "too_short"):  # pydantic says "should have at least 1 item after ..."
        least = error["ctx"]["min_length"]
        kind = "string" if error["type"] == "string_too_short" else type(error["input"]).__name__
        allowed = f"a non-empty {kind}" if least == 1 else f"a {kind} of at least {least} items"
    if error["type"] == "literal_error":
        allowed = allowed.replace("None", "null")  # as YAML and JSON spell it
    return f"{key} must be {allowed}, got {error['input']!r}"
