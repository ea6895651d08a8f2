"""Fold per-module normalisation scales into a dictionary's weights, so it runs on raw activations.

A dictionary trained with `normalize: true` saw x̃ = s·x per input block and reconstructed s·x per
output block. With W_E's input-block columns multiplied by s_in and W_D's rows and b_D's entries of
each output block divided by s_out, the folded weights give the same pre-activations z on raw x (so
thresholds and k stay valid, and the codes are identical) and a reconstruction in raw units.
Note that the folded decoder's columns are no longer unit-norm: fold for export/analysis, not training.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from sdlkit.errors import ShapeError


def _block_vector(blocks: Sequence[int], scales: Sequence[float], side: str) -> torch.Tensor:
    """The per-column scales [sum(blocks)] float64."""
    if len(blocks) != len(scales):
        raise ShapeError(f"{side}_blocks has {len(blocks)} blocks but {side}_scales has {len(scales)} scales")
    if any(not s > 0 for s in scales):
        raise ShapeError(f"{side}_scales must all be positive, got {list(scales)}")
    return torch.cat(
        [torch.full((int(b),), float(s), dtype=torch.float64) for b, s in zip(blocks, scales, strict=True)]
    )


def fold_scales(
    state: dict[str, torch.Tensor],
    in_blocks: Sequence[int],
    out_blocks: Sequence[int],
    in_scales: Sequence[float],
    out_scales: Sequence[float],
) -> dict[str, torch.Tensor]:
    """Weights for raw data from weights trained on scaled data.

    `state`: W_E [n_latents, n_in], b_E [n_latents], W_D [n_out, n_latents], b_D [n_out] (optional),
    anything else (thresholds, gate parameters) passed through unchanged. Returns a new dict; dtypes kept.
    """
    for name in ("W_E", "W_D"):
        if name not in state:
            raise ShapeError(f"fold_scales needs {name} in the state; it has {sorted(state)}")
    s_in = _block_vector(in_blocks, in_scales, "in")
    s_out = _block_vector(out_blocks, out_scales, "out")
    W_E, W_D = state["W_E"], state["W_D"]
    if W_E.ndim != 2 or W_E.shape[1] != s_in.numel():
        raise ShapeError(
            f"W_E has shape {tuple(W_E.shape)}; in_blocks {list(in_blocks)} need [n_latents, {s_in.numel()}]"
        )
    if W_D.ndim != 2 or W_D.shape[0] != s_out.numel():
        raise ShapeError(
            f"W_D has shape {tuple(W_D.shape)}; out_blocks {list(out_blocks)} need [{s_out.numel()}, n_latents]"
        )
    out = dict(state)
    out["W_E"] = (W_E.detach().to(torch.float64) * s_in.to(W_E.device)).to(W_E.dtype)
    out["W_D"] = (W_D.detach().to(torch.float64) / s_out.to(W_D.device)[:, None]).to(W_D.dtype)
    b_D = state.get("b_D")
    if b_D is not None:
        if b_D.shape != (s_out.numel(),):
            raise ShapeError(f"b_D has shape {tuple(b_D.shape)}; out_blocks {list(out_blocks)} need [{s_out.numel()}]")
        out["b_D"] = (b_D.detach().to(torch.float64) / s_out.to(b_D.device)).to(b_D.dtype)
    return out
