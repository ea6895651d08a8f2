"""Feature anchoring (paper section 4): pin the first k latents to known directions.

    L_SDL-FA = L_SDL + λ_anchor · L_anchor,
    L_anchor = ‖W_E[:k, :] − Ã‖²_F + ‖W_D[:, :k] − B̃‖²_F                         (eq. 25–26)

Ã [k, n_in] holds the anchors' input directions as rows, B̃ [n_out, k] their output directions as
columns. Anchors come from known ground truth (a seeded random subset of features, eq. 22), from
labelled data (normalised class means, eq. 23–24), or from a safetensors file of directions
(`save_anchors`, `load_anchors`; `sdlkit anchors discover` writes one from the directions independent runs
agree on, see train.discovery). Soft anchoring is the paper's penalty (the rows stay free, only pulled); hard
anchoring copies the anchors in and keeps them fixed, for comparison.
Anchors are unit-normalised (for an SAE the ground-truth columns already are; for a crosscoder the
stacked columns have norm √m, and a unit-norm decoder could never match them otherwise).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open

from sdlkit.core.model import project_columns_
from sdlkit.core.objective import TermContext, as_coefficient, scaled
from sdlkit.errors import ConfigError, ShapeError
from sdlkit.eval.recovery import matched_scores
from sdlkit.io import save_tensors_atomically, sha256

ANCHORS_FORMAT = "sdlkit-anchors"
"""The `format` entry of an anchors file's metadata."""


@dataclass
class Anchors:
    """k anchor pairs: rows A [k, n_in] for W_E[:k], columns B [n_out, k] for W_D[:, :k].
    `indices` are the ground-truth features (or classes) they stand for; empty for anchors read from a
    file, which stand for no known feature."""

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
def anchor_pull(
    W_E: torch.Tensor,
    W_D: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    weight: torch.Tensor,
    unit_norm_decoder: bool,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The soft anchors' gradient in closed form: ∂/∂W_E[:k] and ∂/∂W_D[:, :k] of eq. 26 are 2λ(W − target),
    the decoder's projected onto the unit sphere's tangent where the decoder is kept at unit norm (as its
    whole gradient is). Training clips the gradient without it (sdlkit.train.constraints.ExemptAnchorPull):
    anchored rows start far from their anchors, and their large early pull would otherwise shrink every other
    gradient (benchmarks/README.md, "Why anchoring lowered the other features' recovery"). A penalty's buffers
    A [k, n_in], B [n_out, k], weight (0-dim) for W_E [L, n_in] and W_D [n_out, L], or an ensemble's stacks
    of them (a leading [E] on every argument). Returns (pull_E [..., k, n_in], pull_D [..., n_out, k])."""
    k = A.shape[-2]
    twice = (2 * weight.to(torch.float32 if W_E.dtype != torch.float64 else torch.float64)).to(W_E.dtype)
    twice = twice.view(*twice.shape, 1, 1)
    pull_E = twice * (W_E[..., :k, :] - A)
    pull_D = twice * (W_D[..., :, :k] - B)
    if unit_norm_decoder:
        project_columns_(pull_D, W_D[..., :, :k])
    return pull_E, pull_D


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


# ----- anchors files --------------------------------------------------------------------------------
def save_anchors(
    path: str | Path, anchors: Anchors, extra: dict[str, torch.Tensor], provenance: dict[str, Any]
) -> Path:
    """Write `anchors` as a safetensors file, atomically: `A` [k, n_in], `B` [n_out, k], the `extra`
    per-anchor tensors (e.g. agreement [k]), and `provenance` as JSON in the metadata (which runs, which
    rule), beside format = sdlkit-anchors."""
    path = Path(path)
    tensors = {"A": anchors.A.float().cpu(), "B": anchors.B.float().cpu(), **{k: v.cpu() for k, v in extra.items()}}
    metadata = {"format": ANCHORS_FORMAT, "version": "1", "provenance": json.dumps(provenance)}
    save_tensors_atomically(path, tensors, metadata)
    return path


def _read_anchor_tensors(path: Path) -> dict[str, torch.Tensor]:
    """Tensors A (if present) and B of an anchors file."""
    if not path.is_file():
        raise ConfigError(f"anchors file {path} does not exist (write one with `sdlkit anchors discover`)")
    try:
        with safe_open(str(path), "pt") as handle:
            return {name: handle.get_tensor(name) for name in ("A", "B") if name in handle.keys()}  # noqa: SIM118
    except (SafetensorError, OSError, ValueError) as err:
        raise ConfigError(f"anchors file {path} is not a readable safetensors file ({err})") from None


def load_anchors(path: str | Path, count: int | None = None, digest: str | None = None) -> Anchors:
    """The anchors in a safetensors file: `B` [n_out, k] (required) and `A` [k, n_in] (default Bᵀ, an
    SAE's anchors), unit-normalised; the first `count` of them (all by default: `sdlkit anchors discover`
    writes the most consistent first). `digest`: the file's expected SHA-256 (a resumed run refuses a file
    that changed). Any problem is a one-line ConfigError."""
    path = Path(path)
    tensors = _read_anchor_tensors(path)
    if digest is not None and sha256(path) != digest:
        raise ConfigError(f"anchors file {path} changed since this run started (its SHA-256 differs)")
    if "B" not in tensors:
        raise ConfigError(f"anchors file {path} holds no tensor 'B' [n_out, k] of anchor directions")
    B = tensors["B"]
    A = tensors.get("A", B.T if B.ndim == 2 else B)
    if A.ndim != 2 or B.ndim != 2 or A.shape[0] != B.shape[1] or A.shape[0] == 0:
        raise ConfigError(
            f"anchors file {path}: A {list(A.shape)} and B {list(B.shape)} must be [k, n_in] and [n_out, k], k >= 1"
        )
    A, B = A.float(), B.float()
    usable = all(torch.isfinite(W).all() and (W.norm(dim=dim) > 0).all() for W, dim in ((A, 1), (B, 0)))
    if not usable:
        raise ConfigError(f"anchors file {path} holds zero, NaN or inf directions")
    k = A.shape[0]
    if count is not None and not 1 <= count <= k:
        raise ConfigError(f"train.anchors.count = {count} but anchors file {path} holds {k} directions")
    k = k if count is None else count
    return Anchors(_unit_columns(A[:k].T).T.contiguous(), _unit_columns(B[:, :k]).contiguous(), [])


def matched_features(anchors: Anchors, W_r: torch.Tensor) -> list[int]:
    """The known features that anchors without `indices` (read from a file) stand for: each anchor's
    one-to-one (Hungarian) partner among the columns of W_r [n_out, n] by |cos| with B's columns, so they
    can be left out of recovery as ground-truth anchors are. Sorted; min(k, n) features."""
    _, feature = matched_scores(W_r.T, anchors.B.to(W_r.device, W_r.dtype), candidates_per_feature=W_r.shape[1])
    return sorted(feature[feature >= 0].tolist())
