"""Errors that describe a problem in what the user gave, with the fix.

The CLI turns every `SdlkitError` into one line on standard error and exit status 2; anything else
is a bug in sdlkit and keeps its traceback.
"""

from __future__ import annotations

import re
import typing
from typing import Any

import torch
from pydantic import ConfigDict

STRICT_CONFIG = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False, use_attribute_docstrings=True)
"""The pydantic settings of every config section: an unknown option is an error, and so is a value of
another type (`k: true` is not k = 1, `steps: 1.5` is not 1) and an infinite or NaN float (`lr: .inf`).
The docstring under a field becomes its `description`, which `help()`, `model_json_schema()` and
`sdlkit config show` print."""


class SdlkitError(ValueError):
    """A problem in the user's input (config, tensors, files): the message names it and the fix."""


class ConfigError(SdlkitError):
    """A config field has a value that is not allowed."""


class ShapeError(SdlkitError):
    """A tensor has the wrong shape or dtype."""


class CheckpointError(SdlkitError):
    """A checkpoint is missing, corrupt, or from a different config."""


class StoreError(SdlkitError):
    """An activation store is missing, corrupt, incomplete, or does not match what was asked of it."""


class TrainingDiverged(SdlkitError):
    """A batch or the loss became NaN or inf: training stopped before it could save bad weights."""


def describe_validation_error(err: Any, root: str = "", model_cls: Any = None) -> str:
    """The first problem of a pydantic ValidationError as one line: field, value, what is allowed.

    `root` prefixes the field path (e.g. "data"); with `model_cls`, an unknown option lists the
    fields its section does allow.
    """
    first = err.errors()[0]
    loc = [str(part) for part in first["loc"]]
    location = ".".join(part for part in (root, *loc) if part)
    message = first["msg"].removeprefix("Value error, ").removeprefix("Assertion failed, ")
    if first["type"] == "extra_forbidden":
        allowed = _fields_at(model_cls, loc[:-1])
        hint = f"; allowed here: {', '.join(allowed)}" if allowed else ""
        return f"unknown option {location!r}{hint}"
    if first["type"] == "missing":
        return f"option {location!r} is required"
    if location and re.match(rf"^(unknown option ')?{re.escape(location)}[ .']", message):
        return message  # raised by a nested validator that already named the field
    if not loc:  # a whole-section check: say which field when the message starts with one
        return (
            f"{root}.{message}" if root and re.match(r"^\w+ = ", message) else ": ".join(filter(None, [root, message]))
        )
    value = first.get("input")
    shown = "" if isinstance(value, dict) else f" = {value!r}"
    return f"{location}{shown} is not allowed: {message}"


def _fields_at(model_cls: Any, path: list[str]) -> list[str]:
    """Field names of the (nested) pydantic model reached from `model_cls` along `path`, if known."""
    for part in path:
        if model_cls is None or part not in getattr(model_cls, "model_fields", {}):
            return []
        model_cls = model_in(model_cls.model_fields[part].annotation)
    return list(getattr(model_cls, "model_fields", {}))


def model_in(annotation: Any) -> Any:
    """The pydantic model class inside an annotation such as `X | None` or `Annotated[X, ...]`."""
    if hasattr(annotation, "model_fields"):
        return annotation
    for arg in typing.get_args(annotation):
        found = model_in(arg)
        if found is not None:
            return found
    return None


def check_matrix(name: str, W: object, rows: int | None = None, cols: int | None = None) -> torch.Tensor:
    """`W` as a floating-point 2-D tensor, with the given rows/cols when they are set (else ShapeError)."""
    if not isinstance(W, torch.Tensor):
        raise ShapeError(f"{name} must be a torch.Tensor, got {type(W).__name__}")
    if W.ndim != 2:
        raise ShapeError(f"{name} has shape {tuple(W.shape)}; a 2-D matrix is needed")
    if not W.is_floating_point():
        raise ShapeError(f"{name} has dtype {W.dtype}; a floating-point tensor is needed")
    if rows is not None and W.shape[0] != rows:
        raise ShapeError(f"{name} has shape {tuple(W.shape)}; it needs {rows} rows")
    if cols is not None and W.shape[1] != cols:
        raise ShapeError(f"{name} has shape {tuple(W.shape)}; it needs {cols} columns")
    return W
