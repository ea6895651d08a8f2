"""The sdlkit side of a conversion: what kind of dictionary a checkpoint holds, its dtypes, and building a
SparseDictionary from converted weights."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from sdlkit.core.model import ModelConfig, SparseDictionary
from sdlkit.errors import CheckpointError
from sdlkit.io import load_weights
from sdlkit.methods import method_config

SDLKIT_DTYPES = {"float32": torch.float32, "float64": torch.float64, "bfloat16": torch.bfloat16}
"""The dtypes an sdlkit checkpoint may hold; float16 weights are widened to float32 on import (exact)."""


@dataclass
class Imported:
    """A dictionary read from another library's files, with what the conversion needs to record."""

    model: SparseDictionary
    kind: str
    """'sae' or 'transcoder': kept in config.json so a later export writes the same kind back."""
    source: dict[str, Any]
    """The original config file, as read."""
    notes: list[str] = field(default_factory=list)
    """Every transformation applied on the way in (folded biases, rescalings), in words."""


def dictionary_kind(model: SparseDictionary, config: dict[str, Any]) -> str:
    """'sae', 'transcoder' or 'crosscoder', from the model's shape and what its config.json says about
    the data (a transcoder may have n_in = n_out)."""
    if len(model.config.in_blocks or [0]) > 1 or len(model.config.out_blocks or [0]) > 1:
        return "crosscoder"
    run = config.get("run")
    data = run.get("data") if isinstance(run, dict) else None
    mode = data.get("mode") if isinstance(data, dict) else None
    imported = config.get("imported")
    if mode is None and isinstance(imported, dict):
        mode = imported.get("kind")
    if mode == "crosscoder":
        return "crosscoder"
    if model.n_in != model.n_out or mode == "transcoder":
        return "transcoder"
    return "sae"


def torch_dtype_name(dtype: torch.dtype) -> tuple[str, list[str]]:
    """The sdlkit dtype name for weights stored as `dtype`, and a note when it has to widen them."""
    for name, candidate in SDLKIT_DTYPES.items():
        if candidate == dtype:
            return name, []
    if dtype == torch.float16:
        return "float32", ["float16 weights widened to float32 (exact)"]
    raise CheckpointError(f"weights of dtype {dtype} cannot be imported; sdlkit holds {', '.join(SDLKIT_DTYPES)}")


def as_float64(tensor: torch.Tensor | None, size: int) -> torch.Tensor:
    """A bias as float64, or zeros of `size` for a dictionary trained without biases."""
    if tensor is None:
        return torch.zeros(size, dtype=torch.float64)
    return tensor.detach().to(torch.float64)


def build_dictionary(
    W_E: torch.Tensor,
    b_E: torch.Tensor,
    W_D: torch.Tensor,
    b_D: torch.Tensor,
    method: dict[str, Any],
    dtype: str,
    extras: dict[str, torch.Tensor] | None = None,
) -> SparseDictionary:
    """A SparseDictionary holding these weights (W_E [n_latents, n_in], W_D [n_out, n_latents]) in
    `dtype`. `unit_norm_decoder` is set only when every decoder column already has unit norm, so that
    training an imported dictionary further does not rescale its columns (and change its function)."""
    n_latents, n_in = W_E.shape
    unit = bool(torch.allclose(W_D.norm(dim=0), torch.ones((), dtype=W_D.dtype), atol=1e-3))
    config = ModelConfig(
        n_latents=n_latents,
        n_in=n_in,
        n_out=W_D.shape[0],
        bias=True,
        unit_norm_decoder=unit,
        dtype=dtype,
        method=method_config(method),
    )
    model = SparseDictionary.empty(config)
    target = SDLKIT_DTYPES[dtype]
    tensors = {"W_E": W_E, "b_E": b_E, "W_D": W_D, "b_D": b_D, **(extras or {})}
    load_weights(model, {k: v.to(target).contiguous() for k, v in tensors.items()}, Path("<converted>"))
    return model.eval()
