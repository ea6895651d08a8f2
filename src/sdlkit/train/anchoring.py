"""Feature anchoring (paper section 4): pin the first k latents to known directions.

    L_SDL-FA = L_SDL + λ_anchor · L_anchor,
    L_anchor = ‖W_E[:k, :] − Ã‖²_F + ‖W_D[:, :k] − B̃‖²_F                         (eq. 25–26)

Ã [k, n_in] holds the anchors' input directions as rows, B̃ [n_out, k] their output directions as
columns. Anchors come from known ground truth (a seeded random subset of features, eq. 22) or from
labelled data (normalised class means, eq. 23–24). Soft anchoring is the paper's penalty (the rows
stay free, only pulled); hard anchoring copies the anchors in and keeps them fixed, for comparison.
Anchors are unit-normalised (for an SAE the ground-truth columns already are; for a crosscoder the
stacked columns have norm √m, and a unit-norm decoder could never match them otherwise).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from sdlkit.core.objective import TermContext, as_coefficient, scaled
from sdlkit.errors import ConfigError, ShapeError


@dataclass
class Anchors:
    """k anchor pairs: rows A [k, n_in] for W_E[:k], columns B [n_out, k] for W_D[:, :k].
    `indices` are the ground-truth features (or classes) they stand for."""

    A: torch.Tensor
    B: torch.Tensor
    indices: list[int]

    @property
    def k(self) -> int:
        return self.A.shape[0]

    def to(self, device: torch.device | str, dtype: torch.dtype) -> Anchors:
        return Anchors(self.A.to(device, dtype), self.B.to(device, dtype), self.indices)


def _unit_columns(W: torch.Tensor) -> torch.Tensor:
    return W / W.norm(dim=0, keepdim=True).clamp_min(1e-12)


def ground_truth_anchors(W_p: torch.Tensor, W_r: torch.Tensor, k: int, seed: int = 0) -> Anchors:
    """Eq. 22: a seeded random subset K of k features; Ã = W_p[:, K]ᵀ, B̃ = W_r[:, K] (normalised).
    W_p [n_in, n], W_r [n_out, n]."""
    n = W_p.shape[1]
    if W_r.shape[1] != n:
        raise ShapeError(f"W_p has {n} features but W_r has {W_r.shape[1]}")
    if not 1 <= k <= n:
        raise ConfigError(f"anchors count = {k} is not allowed: it must be in [1, n_features = {n}]")
    chosen = torch.randperm(n, generator=torch.Generator().manual_seed(seed))[:k].sort().values
    idx = chosen.to(W_p.device)
    return Anchors(_unit_columns(W_p[:, idx]).T.contiguous(), _unit_columns(W_r[:, idx]), chosen.tolist())


def class_mean_anchors(
    x_p: torch.Tensor, labels: torch.Tensor, x_r: torch.Tensor | None = None, classes: list[int] | None = None
) -> Anchors:
    """Eq. 23–24: per class c, the mean representation x̄^(c) normalised to unit length (no centering,
    as in the paper). x_p [N, n_in], labels [N] (integers), x_r [N, n_out] (default x_p). `classes`
    picks which classes become anchors, in that order (default: every label present, ascending)."""
    if x_p.ndim != 2 or labels.ndim != 1 or labels.shape[0] != x_p.shape[0]:
        raise ShapeError(f"need x_p [N, d] and labels [N]; got {tuple(x_p.shape)} and {tuple(labels.shape)}")
    if labels.dtype.is_floating_point:
        raise ShapeError(f"labels must be integers, got {labels.dtype}")
    if labels.numel() and int(labels.min()) < 0:
        raise ShapeError(f"labels must be >= 0, got {int(labels.min())}")
    x_r = x_p if x_r is None else x_r
    if x_r.shape[0] != x_p.shape[0]:
        raise ShapeError(f"x_r has {x_r.shape[0]} rows but x_p has {x_p.shape[0]}")
    present = torch.unique(labels)
    chosen = present if classes is None else torch.as_tensor(classes, device=labels.device)
    missing = sorted(set(chosen.tolist()) - set(present.tolist()))
    if missing:
        raise ConfigError(f"class {missing[0]} has no samples, so it has no mean to anchor to")
    # position of every sample's class among the chosen ones (-1: not chosen), then sums by index_add
    lookup = torch.full((int(present.max()) + 1,), -1, dtype=torch.long, device=labels.device)
    lookup[chosen] = torch.arange(len(chosen), device=labels.device)
    slot = lookup[labels]
    keep = slot >= 0

    def means(x: torch.Tensor) -> torch.Tensor:
        sums = torch.zeros(len(chosen), x.shape[1], dtype=torch.float64, device=x.device)
        sums.index_add_(0, slot[keep], x[keep].to(torch.float64))
        counts = torch.bincount(slot[keep], minlength=len(chosen)).to(torch.float64)
        return (sums / counts[:, None]).to(x.dtype)

    mean_p, mean_r = means(x_p), means(x_r)
    return Anchors(_unit_columns(mean_p.T).T.contiguous(), _unit_columns(mean_r.T), chosen.tolist())


class AnchorPenalty(torch.nn.Module):
    """λ_anchor · (‖W_E[:k] − Ã‖²_F + ‖W_D[:, :k] − B̃‖²_F) (eq. 26), a loss term like any other. The
    anchors and λ are buffers, so that an ensemble swaps in each member's."""

    name = "anchor"

    def __init__(self, anchors: Anchors, weight: float):
        super().__init__()
        self.k = anchors.k
        self.register_buffer("A", anchors.A)
        self.register_buffer("B", anchors.B)
        self.register_buffer("weight", as_coefficient(weight))

    def forward(self, ctx: TermContext) -> torch.Tensor:
        model = ctx.model
        encoder = (model.W_E[: self.k] - self.A).pow(2).sum()
        decoder = (model.W_D[:, : self.k] - self.B).pow(2).sum()
        return scaled(self.weight, encoder + decoder)


@torch.no_grad()
def apply_hard_anchors(model: torch.nn.Module, anchors: Anchors) -> None:
    """Copy the anchors into W_E[:k] and W_D[:, :k] (hard anchoring: call after every step)."""
    model.W_E[: anchors.k] = anchors.A
    model.W_D[:, : anchors.k] = anchors.B


@torch.no_grad()
def zero_anchor_grads(model: torch.nn.Module, k: int) -> None:
    """Hard anchoring: the anchored rows take no part in the step (nor in gradient clipping)."""
    if model.W_E.grad is not None:
        model.W_E.grad[:k] = 0
    if model.W_D.grad is not None:
        model.W_D.grad[:, :k] = 0
