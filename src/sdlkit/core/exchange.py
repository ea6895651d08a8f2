"""How a method's dictionary is written in another SAE library's format, and read back from it.

A method config declares `exchange`: format name ('saelens', 'sparsify') -> its `Exchange` there, or a
string saying why that format cannot hold it. The declaration sits in the method's own file, as SAELens's
architecture files own their conversions (BatchTopK's threshold becomes a JumpReLU threshold in
methods/topk.py, not in a loader's if/elif). sdlkit.interop does each format's shared part (files, the
W_E / W_D layout, the decoder bias and input centring, dtypes) and calls these for what only the method
knows: its σ's parameters and config fields. Nothing here knows a format's files, and methods never import
interop: interop reads the declarations, so the import graph runs interop -> methods only. It sits in the
core beside MethodConfig, which declares `exchange`, so that the core need not import the methods.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch


@dataclass
class Written:
    """What a method adds to an exported dictionary: tensors under the format's names (float64 [n_latents];
    cast to the model's dtype when written), config fields, and notes on what changed on the way out."""

    tensors: dict[str, torch.Tensor]
    fields: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


class Reading(Protocol):
    """A dictionary being read from another library's files, as sdlkit.interop hands it to a method's `read`,
    in sdlkit's layout and float64. `read` sets `method` and `b_E`, puts σ's parameters in `extras` and what
    it changed in `notes`; it may fold a rescaling into W_E, b_E and W_D."""

    config: dict[str, Any]
    """The format's config file (SAELens: in its 6.x layout)."""
    config_path: Path
    weights_path: Path
    W_E: torch.Tensor
    """[n_latents, n_in]."""
    W_D: torch.Tensor
    """[n_out, n_latents]."""
    shift: torch.Tensor
    """[n_latents]: what the format's input centring adds to the pre-activations, so sdlkit's b_E is an
    encoder bias read from the files minus `shift`."""
    method: dict[str, Any] | None
    b_E: torch.Tensor | None
    extras: dict[str, torch.Tensor]
    notes: list[str]

    def has(self, name: str) -> bool:
        """Whether the files hold a tensor `name`."""
        ...

    def take(self, name: str) -> torch.Tensor:
        """The per-latent tensor `name` [n_latents], checked (shape, finite) and float64; tensors nobody
        takes are refused rather than dropped."""
        ...

    def integer(self, name: str) -> int:
        """Config field `name` as an integer in [1, n_latents], under the format's rules and messages."""
        ...


@dataclass(frozen=True)
class Exchange:
    """A method's form in one format."""

    architecture: str
    """The format's name for it: SAELens's `architecture`, sparsify's `activation`."""
    write: Callable[[Any, torch.nn.Module, torch.Tensor], Written]
    """(the method's config, its σ module, the encoder bias [n_latents] as the format defines it, float64)."""
    read: Callable[[Reading], None] | None = None
    """Fills a Reading of files in this form; None when another method reads them (BatchTopK's JumpReLU
    form is read back as JumpReLU)."""
    transcoder: str | None = None
    """The format's name for the transcoder form; None when the format has none."""
