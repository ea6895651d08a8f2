"""Each method's form in a format, as its config declares it (`exchange`, sdlkit.core.exchange): which
form an export writes, which form reads a format's architecture on import, and `Foreign`, the dictionary
being read that a form's `read` completes. The format modules know the files; the forms know σ."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from sdlkit.core.exchange import Exchange
from sdlkit.core.model import SparseDictionary
from sdlkit.errors import ConfigError
from sdlkit.interop.dictionary import build_dictionary
from sdlkit.interop.files import refuse_extra, take
from sdlkit.methods import METHODS, MethodConfig


def export_form(method: MethodConfig, fmt: str) -> tuple[MethodConfig, Exchange | None, list[str]]:
    """(the method whose σ is exported, its form in `fmt` or None where it declares none, notes). A method
    that declares why `fmt` cannot hold it is refused here with that reason."""
    inference = method.inference_form()
    form = type(inference).exchange.get(fmt)
    if isinstance(form, str):
        raise ConfigError(f"this {method.name} dictionary {form}")
    notes = []
    if inference is not method:
        notes.append(f"{method.name} exported as its inference σ, {inference.name}: the rest only shapes training")
    return inference, form, notes


def readers(fmt: str) -> dict[str, Exchange]:
    """Every architecture name of `fmt` that sdlkit reads (transcoder names included) -> the form that reads
    it, from the registered methods' declarations."""
    table: dict[str, Exchange] = {}
    for cls in METHODS.values():
        form = cls.exchange.get(fmt)
        if isinstance(form, Exchange) and form.read is not None:
            table |= dict.fromkeys((name for name in (form.architecture, form.transcoder) if name), form)
    return table


@dataclass
class Foreign:
    """A dictionary being read (the `Reading` of sdlkit.core.exchange): the format module sets the linear
    part in sdlkit's layout (float64), the form's `read` the rest, then `build` makes the SparseDictionary."""

    config: dict[str, Any]
    config_path: Path
    weights_path: Path
    tensors: dict[str, torch.Tensor]
    why: str
    """The config fields that fix the tensor shapes, for error messages."""
    integer: Callable[[str], int]
    """Config field -> an integer in [1, n_latents], under the format's rules."""
    W_E: torch.Tensor
    W_D: torch.Tensor
    b_D: torch.Tensor
    shift: torch.Tensor
    method: dict[str, Any] | None = None
    b_E: torch.Tensor | None = None
    extras: dict[str, torch.Tensor] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    taken: set[str] = field(default_factory=set)

    def has(self, name: str) -> bool:
        return name in self.tensors

    def take(self, name: str) -> torch.Tensor:
        self.taken.add(name)
        return take(self.tensors, name, (self.W_E.shape[0],), self.weights_path, self.why)

    def finish(self, form: Exchange, dtype: str, known: set[str]) -> SparseDictionary:
        """Let `form` read its part, refuse the tensors nobody took (`known`: those the format took), and
        build the dictionary in `dtype`."""
        if form.read is not None:
            form.read(self)
        if self.method is None or self.b_E is None:
            raise TypeError(f"the {form.architecture} form's read must set method and b_E")
        refuse_extra(self.tensors, known | self.taken, self.weights_path)
        return build_dictionary(self.W_E, self.b_E, self.W_D, self.b_D, self.method, dtype, self.extras)
