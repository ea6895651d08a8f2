"""Forward hooks that read module tensors (harvest) or replace a module's output (splice).

A module's output is its first tensor when it returns a tuple or a ModelOutput; its input is its first
positional argument (or, when called with keywords only, its first tensor keyword). Recording can stop
the forward pass as soon as every requested tensor is in, so layers after the last one never run.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from typing import Any

import torch
from torch import nn

from sdlkit.errors import ConfigError
from sdlkit.harvest.models import ModuleSpec


class _StopForward(Exception):
    """Raised by a hook once every requested tensor is recorded; caught by `Recorder.run`."""


def first_tensor(value: Any, where: str) -> torch.Tensor:
    """The tensor a module gives: itself, the first element of a tuple/list, or a ModelOutput's first field."""
    if hasattr(value, "to_tuple"):
        value = value.to_tuple()
    if isinstance(value, tuple | list) and value:
        value = value[0]
    if not isinstance(value, torch.Tensor):
        raise ConfigError(f"{where} is a {type(value).__name__}, not a tensor; pick a module that gives a tensor")
    return value


def input_tensor(args: tuple, kwargs: dict[str, Any], where: str) -> torch.Tensor:
    """The first positional input, or the first tensor keyword when the module is called with keywords only."""
    if args:
        return first_tensor(args[0], where)
    for value in kwargs.values():
        if isinstance(value, torch.Tensor):
            return value
    raise ConfigError(f"{where} receives no tensor input; pick a module that is called with a tensor")


def _with_first(value: Any, new: torch.Tensor) -> Any:
    """`value` with its first tensor replaced by `new` (same container type)."""
    if isinstance(value, torch.Tensor):
        return new
    if hasattr(value, "to_tuple"):
        value[next(iter(value.keys()))] = new
        return value
    if isinstance(value, tuple):
        return (new, *value[1:])
    return [new, *value[1:]]


class Recorder:
    """Record the tensors of `specs` (all of one model) during one forward pass.

    with Recorder(model, specs) as rec:
        tensors = rec.run(lambda: model(**inputs))      # {spec.key: tensor as the module gave it}
    """

    def __init__(self, model: nn.Module, specs: list[ModuleSpec], stop_early: bool = True):
        self.model, self.specs, self.stop_early = model, specs, stop_early
        self.records: dict[str, torch.Tensor] = {}
        self._handles: list[Any] = []

    def __enter__(self) -> Recorder:
        modules = dict(self.model.named_modules())
        for spec in self.specs:
            module = modules[spec.module]
            if spec.role == "input":
                self._handles.append(module.register_forward_pre_hook(self._pre_hook(spec), with_kwargs=True))
            else:
                self._handles.append(module.register_forward_hook(self._hook(spec)))
        return self

    def __exit__(self, *exc: object) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()

    def run(self, forward: Callable[[], Any]) -> dict[str, torch.Tensor]:
        """Call `forward` and return every recorded tensor; a module that never ran is an error."""
        self.records = {}
        with suppress(_StopForward):
            forward()
        missing = [spec.key for spec in self.specs if spec.key not in self.records]
        if missing:
            raise ConfigError(
                f"module {missing[0]!r} did not run in the forward pass (for CLIP, only the vision tower runs); "
                "pick a module the forward pass uses"
            )
        records, self.records = self.records, {}
        return records

    def _store(self, spec: ModuleSpec, tensor: torch.Tensor) -> None:
        if spec.key in self.records:
            raise ConfigError(f"module {spec.key!r} runs more than once per forward pass; pick a module that runs once")
        self.records[spec.key] = tensor.detach()
        if self.stop_early and len(self.records) == len(self.specs):
            raise _StopForward

    def _hook(self, spec: ModuleSpec) -> Callable[..., None]:
        def hook(module: nn.Module, args: tuple, output: Any) -> None:
            self._store(spec, first_tensor(output, f"the output of {spec.module!r}"))

        return hook

    def _pre_hook(self, spec: ModuleSpec) -> Callable[..., None]:
        def hook(module: nn.Module, args: tuple, kwargs: dict[str, Any]) -> None:
            self._store(spec, input_tensor(args, kwargs, f"module {spec.module!r}"))

        return hook


@contextmanager
def capture(model: nn.Module, module: str, role: str = "output") -> Iterator[dict[str, torch.Tensor]]:
    """Keep the latest output (or input) of `module` under key "x" of the yielded dict."""
    seen: dict[str, torch.Tensor] = {}
    target = dict(model.named_modules())[module]
    if role == "input":

        def pre_hook(mod: nn.Module, args: tuple, kwargs: dict[str, Any]) -> None:
            seen["x"] = input_tensor(args, kwargs, f"module {module!r}")

        handle = target.register_forward_pre_hook(pre_hook, with_kwargs=True)
    else:

        def hook(mod: nn.Module, args: tuple, output: Any) -> None:
            seen["x"] = first_tensor(output, f"the output of {module!r}")

        handle = target.register_forward_hook(hook)
    try:
        yield seen
    finally:
        handle.remove()


@contextmanager
def replace_output(model: nn.Module, module: str, replace: Callable[[torch.Tensor], torch.Tensor]) -> Iterator[None]:
    """While active, `module`'s output (its first tensor) is replaced by `replace(output)`."""
    target = dict(model.named_modules())[module]

    def hook(mod: nn.Module, args: tuple, output: Any) -> Any:
        return _with_first(output, replace(first_tensor(output, f"the output of {module!r}")))

    handle = target.register_forward_hook(hook)
    try:
        yield
    finally:
        handle.remove()
