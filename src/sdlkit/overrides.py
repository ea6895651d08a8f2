"""Keyword options of library functions: a frozen dataclass of settings plus keyword overrides of its fields.

A function with many settings takes `options: XOptions | None = None, **overrides`, so both
`f(x, options=XOptions(batch_size=8))` and `f(x, batch_size=8)` work and the signature stays short.
(The command line's options, its shared flags, are a different thing: sdlkit.cli.options.)
"""

from __future__ import annotations

from dataclasses import MISSING, fields, replace
from typing import Any, TypeVar

from sdlkit.errors import ConfigError

T = TypeVar("T")


def with_overrides(cls: type[T], options: T | None, overrides: dict[str, Any], what: str) -> T:
    """`options` (default: `cls()`) with the fields in `overrides` replaced; a one-line ConfigError names an
    unknown option, or a required one that is missing (`what` says whose options they are)."""
    known = {f.name: f for f in fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(overrides) - set(known))
    if unknown:
        raise ConfigError(f"unknown {what} option {unknown[0]!r}; known: {', '.join(sorted(known))}")
    if options is not None:
        return replace(options, **overrides)  # type: ignore[type-var]
    required = [
        name
        for name, f in known.items()
        if f.default is MISSING and f.default_factory is MISSING and name not in overrides
    ]
    if required:
        raise ConfigError(f"{what} needs the option {required[0]!r}")
    return cls(**overrides)
