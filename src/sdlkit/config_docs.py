"""A run config for people: every field with its type, default and doc, and the example configs that ship with
the package (`sdlkit config show`, `sdlkit config example`).

The fields are read from the config classes themselves (each field's doc is its attribute docstring, which
`STRICT_CONFIG` turns into the pydantic `description`), with the `data:` section of the chosen kind (the
`SOURCES` registry) and the `model.method:` section of the chosen method (`METHODS`): nothing here lists a
field by hand. The examples are the YAML files in `sdlkit/configs/`, installed with the package.
"""

from __future__ import annotations

import re
import types
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import annotated_types
from pydantic import BaseModel
from pydantic.fields import FieldInfo
from pydantic_core import to_jsonable_python

from sdlkit.config import RunConfig
from sdlkit.core.method import METHODS
from sdlkit.data.source import SOURCES
from sdlkit.errors import ConfigError, model_in

EXAMPLES = Path(__file__).parent / "configs"
"""The shipped example configs, one `NAME.yaml` each (package data, so a pip-installed sdlkit has them)."""


@dataclass(frozen=True)
class FieldDoc:
    """One field of a run config: its dotted `path` (as `--set` takes it), its `type` in words (`section` for a
    nested mapping), its `default` as JSON (None when `required`), and its `doc`."""

    path: str
    type: str
    default: Any
    required: bool
    doc: str
    about: str | None = None
    """For a section: its class's docstring (what the section is); None for a value."""


def run_config_fields(method: str = "topk", kind: str = "lrb") -> list[FieldDoc]:
    """Every field of a run config whose `data:` has this `kind` and whose `model.method` is this `method`, in
    the classes' order, each section followed by its own fields (ConfigError naming the known names when
    either is unknown)."""
    if method not in METHODS:
        raise ConfigError(f"unknown method {method!r}; known methods: {', '.join(sorted(METHODS))}")
    if kind not in SOURCES:
        raise ConfigError(f"unknown data kind {kind!r}; known kinds: {', '.join(SOURCES)}")
    return list(_fields(RunConfig, "", {"data": SOURCES[kind][0], "model.method": METHODS[method]}))


def _fields(cls: type[BaseModel], prefix: str, chosen: dict[str, type[BaseModel]]) -> typing.Iterator[FieldDoc]:
    for name, info in cls.model_fields.items():
        path = prefix + name
        section = chosen.get(path) or model_in(info.annotation)
        yield FieldDoc(
            path=path,
            type=type_name(info, section is not None),
            default=None if info.is_required() else _default(info),
            required=info.is_required(),
            doc=_one_paragraph(info.description),
            about=None if section is None else _one_paragraph(section.__doc__),
        )
        if section is not None:
            yield from _fields(section, path + ".", chosen)


def _one_paragraph(doc: str | None) -> str:
    return " ".join((doc or "").split())


def type_name(info: FieldInfo, section: bool = False) -> str:
    """A field's type in words: `int > 0`, `float in [0, 1)`, `soft|hard` (one of these values), `list[int] | null`,
    `section`."""
    args = typing.get_args(info.annotation) if _is_union(info.annotation) else (info.annotation,)
    optional = type(None) in args
    base = "section" if section else " | ".join(_name(a) for a in args if a is not type(None))
    bounds = _bounds(info.metadata)
    return f"{base}{' ' + bounds if bounds else ''}{' | null' if optional else ''}"


def _is_union(annotation: Any) -> bool:
    return typing.get_origin(annotation) in (typing.Union, types.UnionType)


def _name(annotation: Any) -> str:
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is Literal:
        return "|".join(str(a) for a in args)
    if origin is tuple:
        return "[" + ", ".join(_name(a) for a in args) + "]"
    if origin is list:
        return f"list[{_name(args[0])}]"
    if _is_union(annotation):
        return " | ".join(_name(a) for a in args)
    return "section" if hasattr(annotation, "model_fields") else getattr(annotation, "__name__", str(annotation))


def _bounds(metadata: list[Any]) -> str:
    """`> 0`, `>= 1`, `in [0, 1)` from a field's gt/ge/lt/le."""
    low = next((("(", m.gt) for m in metadata if isinstance(m, annotated_types.Gt)), None)
    low = low or next((("[", m.ge) for m in metadata if isinstance(m, annotated_types.Ge)), None)
    high = next(((")", m.lt) for m in metadata if isinstance(m, annotated_types.Lt)), None)
    high = high or next((("]", m.le) for m in metadata if isinstance(m, annotated_types.Le)), None)
    if low and high:
        return f"in {low[0]}{low[1]:g}, {high[1]:g}{high[0]}"
    if low:
        return f"{'>' if low[0] == '(' else '>='} {low[1]:g}"
    if high:
        return f"{'<' if high[0] == ')' else '<='} {high[1]:g}"
    return ""


def _default(info: FieldInfo) -> Any:
    """The default as JSON; a section's as the mapping that builds it (its tags, e.g. a method's name, and
    the values that differ from its fields' own defaults)."""
    value = info.get_default(call_default_factory=True)
    if not isinstance(value, BaseModel):
        return to_jsonable_python(value)
    fields = type(value).model_fields
    tags = {k: v for k, v in value.model_dump(mode="json").items() if _is_tag(fields[k])}
    return {**tags, **value.model_dump(mode="json", exclude_defaults=True)}


def _is_tag(info: FieldInfo) -> bool:
    """A field with a single allowed value, such as a method's `name` or a data section's `kind`."""
    return typing.get_origin(info.annotation) is Literal and len(typing.get_args(info.annotation)) == 1


# ----- the examples ------------------------------------------------------------------------------------
def example_names() -> list[str]:
    """The shipped examples, by name (the file name without `.yaml`)."""
    return sorted(path.stem for path in EXAMPLES.glob("*.yaml"))


def example_text(name: str) -> str:
    """The commented YAML of example `name` (ConfigError naming the examples when there is none)."""
    path = EXAMPLES / f"{name}.yaml"
    if not re.fullmatch(r"[\w.-]+", name) or not path.is_file():
        raise ConfigError(f"no example config {name!r}; examples: {', '.join(example_names())}")
    return path.read_text(encoding="utf-8")
