"""Feature matrices with bounded interference (paper App. C.1).

`make_feature_matrix` returns W [n_dims, n_features]: unit-norm columns (the ground-truth feature
directions w^1..w^n) whose largest *signed* pairwise inner product, the "interference"
max_{i != j} <w_i, w_j>, is at most M. The Linear Representation Bench builds W_p (and W_r for
transcoders) with it; `max_interference` is the check used by tests and other modules.

Algorithm, exactly as App. C.1: i.i.d. Gaussian draw, normalise the columns, then projected
gradient descent on

    L_int(W) = sum_{i != j} max(0, G_ij - (M - eps))^2 + lam * sum_{i != j} max(0, G_ij)^2,  G = W^T W

with the step W <- W - eta * grad L_int followed by renormalising the columns, stopping as soon as
max_{i != j} G_ij <= M. The gradient is 4 W D with D_ij = max(0, G_ij - (M - eps)) + lam max(0, G_ij)
off the diagonal (D is symmetric): one Gram matrix and one [d, n] x [n, n] product per iteration.

The frame option (`tightness` t in [0, 1]) inserts one step between the draw and the PGD:
W <- (W Wᵀ)^{-t/2} W, then unit columns. t = 0 is App. C as written; t = 1 maps the draw to the
nearest tight frame (W Wᵀ = (n/d) I before the columns are renormalised), so the condition number
of W Wᵀ falls from the Gaussian draw's to near 1; values between interpolate on a log scale
(benchmarks/README.md, "The frame and the encoder rows"). The PGD then enforces the same M on either
frame.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from sdlkit.errors import ConfigError

__all__ = [
    "DEFAULT_EPS",
    "DEFAULT_LAM",
    "DEFAULT_LR",
    "DEFAULT_MAX_ITERS",
    "FRAMES",
    "PGDSettings",
    "check_interference_feasible",
    "dual_frame",
    "frame_properties",
    "make_feature_matrix",
    "max_interference",
    "tighten",
]

FRAMES = {"gaussian": 0.0, "tight": 1.0}
"""Named frames and their tightness t: App. C's Gaussian draw, and the nearest tight frame to it."""

DEFAULT_EPS = 0.005
"""Margin ε: PGD pushes overlaps below M − ε so that one step lands them under M (see make_feature_matrix)."""

DEFAULT_LAM = 0.01
"""Weight λ of the term that penalises every positive overlap (the paper's "negative interference")."""

DEFAULT_LR = 0.2
"""Base step size η (capped per iteration, see make_feature_matrix)."""

DEFAULT_MAX_ITERS = 500
"""Iteration limit before giving up with a ConfigError."""

_STEP_CAP = 0.5
"""Per-iteration cap on 4·η·max_i Σ_j D_ij, a bound on the spectral norm of the step's linear map 4ηD."""

_STALL_WINDOW = 100
_STALL_MIN_GAIN = 1e-4
"""Stop early when the best max interference improved by less than this over the last window."""


def max_interference(W: torch.Tensor, *, chunk_size: int = 4096, compute_dtype: torch.dtype = torch.float64) -> float:
    """Signed maximum off-diagonal entry of WᵀW, max_{i != j} <w_i, w_j>, for W [n_dims, n_features].

    Computed in `compute_dtype` (float64 by default, so it is an exact check of a float32 matrix),
    `chunk_size` columns at a time so memory stays O(chunk_size · n_features).
    Returns -inf when there are fewer than two columns (no pairs).
    """
    if W.dim() != 2:
        raise ValueError(f"max_interference expects a 2-D [n_dims, n_features] matrix, got shape {tuple(W.shape)}")
    n = W.shape[1]
    if n < 2:
        return float("-inf")
    Wc = W.to(compute_dtype)
    best = float("-inf")
    for start in range(0, n, chunk_size):
        stop = min(start + chunk_size, n)
        G = Wc[:, start:stop].T @ Wc  # [chunk, n]
        rows = torch.arange(stop - start, device=G.device)
        G[rows, rows + start] = float("-inf")
        best = max(best, G.max().item())
    return best


def tighten(W: torch.Tensor, tightness: float) -> torch.Tensor:
    """(W Wᵀ)^{-t/2} W with unit columns, for W [n_dims, n_features] and t = `tightness` in [0, 1].

    With W = U S Vᵀ this is U S^{1-t} Vᵀ: t = 1 is the nearest tight frame to W (all singular values
    equal; orthonormal columns when n_features <= n_dims), t = 0 returns W with unit columns.
    Computed in float64 (one SVD)."""
    if not 0.0 <= tightness <= 1.0:
        raise ConfigError(f"frame tightness {tightness} is not allowed: it must be in [0, 1]")
    W64 = W.to(torch.float64)
    if tightness > 0:
        U, S, Vh = torch.linalg.svd(W64, full_matrices=False)
        W64 = (U * S.pow(1 - tightness)) @ Vh
    return (W64 / W64.norm(dim=0, keepdim=True)).to(W.dtype)


@torch.no_grad()
def dual_frame(W: torch.Tensor) -> torch.Tensor:
    """The canonical dual frame (W Wᵀ)⁺ W [n_dims, n] of W [n_dims, n], in float64. Its columns are the
    rows of the least-squares linear encoder of codes c from x = W c (uncorrelated codes of equal
    variance); for a tight frame they are parallel to the columns of W."""
    W64 = W.detach().to(torch.float64)
    return torch.linalg.pinv(W64 @ W64.T, hermitian=True) @ W64


@torch.no_grad()
def frame_properties(W: torch.Tensor) -> dict[str, float]:
    """Measured geometry of a feature matrix W [n_dims, n_features] (float64):

    - condition_number: λ_max / λ_min of the frame operator W Wᵀ (1 for a tight frame; inf when the
      columns do not span the space);
    - max_interference: max_{i != j} <w_i, w_j> (signed, as M bounds it);
    - mean_abs_interference: the mean of |<w_i, w_j>| over pairs i != j;
    - dual_cosine: the mean over features of cos(w_i, d_i), where d_i are the columns of the canonical
      dual frame (W Wᵀ)^{-1} W, i.e. the rows of the least-squares linear encoder of codes from x;
      1 for a tight frame (d_i ∝ w_i).
    """
    W64 = W.to(torch.float64)
    n = W64.shape[1]
    frame_operator = W64 @ W64.T
    eigenvalues = torch.linalg.eigvalsh(frame_operator)
    low = eigenvalues.min().item()
    condition = eigenvalues.max().item() / low if low > 1e-12 * eigenvalues.max().item() else float("inf")
    G = W64.T @ W64
    off_diagonal = ~torch.eye(n, dtype=torch.bool)
    dual_cosine = _column_cosine(W64, dual_frame(W64)).mean().item() if math.isfinite(condition) else float("nan")
    return {
        "condition_number": condition,
        "max_interference": G[off_diagonal].max().item() if n > 1 else float("-inf"),
        "mean_abs_interference": G[off_diagonal].abs().mean().item() if n > 1 else 0.0,
        "dual_cosine": dual_cosine,
    }


def _column_cosine(A: torch.Tensor, B: torch.Tensor) -> torch.Tensor:
    """Cosine between matching columns of A and B [n_dims, n_features] -> [n_features]."""
    return (A * B).sum(0) / (A.norm(dim=0) * B.norm(dim=0)).clamp_min(1e-300)


def check_interference_feasible(n_dims: int, n_features: int, M: float) -> None:
    """Raise ConfigError when no n_features unit vectors in R^n_dims can have max interference <= M.

    Provable bounds only (cheap, no iteration):
    - Gram sum: 0 <= ||Σ w_i||² = n + Σ_{i != j} G_ij <= n + n(n−1)·max, so max >= −1/(n−1).
    - Rankin / obtuse sets: at most n_dims + 1 vectors can have pairwise *negative* inner products
      (so M < 0 needs n <= n_dims + 1), and at most 2·n_dims pairwise *non-positive* ones (so M <= 0
      needs n <= 2·n_dims).
    """
    if not math.isfinite(M):
        raise ConfigError(f"M = {M} is not allowed: the maximum interference M must be a finite number")
    n, d = n_features, n_dims
    if n < 2 or M >= 1:
        return
    lower = -1.0 / (n - 1)
    if lower > M:
        raise ConfigError(
            f"M = {M} is impossible for {n} features: any {n} unit vectors have max interference "
            f">= -1/(n-1) = {lower:.6g}; raise M to at least {lower:.6g}"
        )
    if M < 0 and n > d + 1:
        raise ConfigError(
            f"M = {M} < 0 is impossible for {n} features in {d} dims: at most n_dims+1 = {d + 1} vectors "
            f"can have pairwise negative inner products; raise M to >= 0 or n_dims to >= {n - 1}"
        )
    if M <= 0 and n > 2 * d:
        raise ConfigError(
            f"M = {M} <= 0 is impossible for {n} features in {d} dims: at most 2*n_dims = {2 * d} vectors "
            "can have pairwise non-positive inner products (Rankin); "
            f"raise M above 0 or n_dims to >= {math.ceil(n / 2)}"
        )


@dataclass(frozen=True)
class PGDSettings:
    """The interference PGD's settings (App. C.1 gives none). The defaults were chosen on a grid of problems
    (benchmarks/README.md, "The interference PGD's settings"):
    - eps = 0.005: the margin only has to beat the overshoot of one step; larger margins move W further
      than needed and take more iterations.
    - lam = 0.01: small, as the paper says; a larger one lets the penalty on the ~n²/2 positive overlaps
      dominate for large n.
    - lr = 0.2 with a per-iteration cap: the step actually taken is
      eta_t = min(lr, 0.5 / (4 · max_i Σ_j D_ij)). A fixed eta has no value that works at every size: the
      map W -> W(I − 4 eta D) diverges (all columns collapse, interference -> 1) once 4 eta ||D||_2 gets
      near 2, and ||D||_2 grows with the number of violating pairs per feature. The max row sum of D
      bounds ||D||_2, so the cap keeps every step stable whatever n, n_dims and M are; lr = 0.2 is the
      fastest base step that never diverged on the grid (an isolated pair with excess e moves by about
      8·eta·e, i.e. most of the way to M − eps in one step).
    - max_iters = 500: far above what the paper's setting needs. PGD also stops early when the best max
      interference gains less than 1e-4 over 100 iterations (it is stuck).
    """

    eps: float = DEFAULT_EPS
    lam: float = DEFAULT_LAM
    lr: float = DEFAULT_LR
    max_iters: int = DEFAULT_MAX_ITERS

    def __post_init__(self) -> None:
        if not (self.eps > 0 and self.lam >= 0 and self.lr > 0 and self.max_iters >= 1):
            raise ConfigError(
                f"interference optimiser settings eps={self.eps}, lam={self.lam}, lr={self.lr}, "
                f"max_iters={self.max_iters} are not allowed: need eps > 0, lam >= 0, lr > 0, max_iters >= 1"
            )


def make_feature_matrix(
    n_dims: int,
    n_features: int,
    M: float,
    *,
    generator: torch.Generator,
    pgd: PGDSettings | None = None,
    device: str | torch.device | None = None,
    dtype: torch.dtype = torch.float32,
    tightness: float = 0.0,
) -> torch.Tensor:
    """W [n_dims, n_features] with unit-norm columns and max_{i != j} <w_i, w_j> <= M (signed).

    `tightness` t in [0, 1] moves the Gaussian draw towards its nearest tight frame before the PGD
    (`tighten`); 0 (the default) is App. C as written. `pgd`: the PGD's settings (default PGDSettings()).

    The Gaussian draw uses `generator` on the generator's own device (so the result is a function of
    the generator's state); the optimisation then runs on `device` (default: the generator's device),
    in float64 if `dtype` is float64 and float32 otherwise. The returned matrix, cast to `dtype`, is
    checked exactly (`max_interference` in float64) before it is returned.

    Raises ConfigError at once when M is provably out of reach (`check_interference_feasible`), and
    after the iterations when PGD did not reach M, naming the best value reached.
    """
    if n_dims < 1 or n_features < 1:
        raise ConfigError(
            f"make_feature_matrix needs n_dims >= 1 and n_features >= 1, got n_dims={n_dims}, n_features={n_features}"
        )
    pgd = pgd or PGDSettings()
    check_interference_feasible(n_dims, n_features, M)
    work_dtype = torch.float64 if dtype == torch.float64 else torch.float32
    W = torch.randn(n_dims, n_features, generator=generator, device=generator.device, dtype=work_dtype)
    if device is not None:
        W = W.to(device)
    W = W / W.norm(dim=0, keepdim=True)
    if tightness > 0:
        W = tighten(W, tightness)
    if n_features == 1 or M >= 1:
        return W.to(dtype)
    return _pgd(W, M, pgd, dtype)


def _pgd(W: torch.Tensor, M: float, pgd: PGDSettings, dtype: torch.dtype) -> torch.Tensor:
    """App. C.1's projected gradient descent from W [d, n] until max interference <= M (cast to `dtype`)."""
    target = M - pgd.eps
    n_dims, n = W.shape
    diag = torch.arange(n, device=W.device)
    best = best_at_window_start = math.inf
    it, stalled = 0, False
    for it in range(pgd.max_iters + 1):
        G = W.T @ W
        G[diag, diag] = float("-inf")
        worst = G.max().item()
        if worst <= M:
            out = W.to(dtype)
            if max_interference(out) <= M:  # exact check of what we return (rounding of the cast/Gram)
                return out
        best = min(best, worst)
        if it % _STALL_WINDOW == 0:
            if it > 0 and best > best_at_window_start - _STALL_MIN_GAIN:
                stalled = True
                break
            best_at_window_start = best
        if it == pgd.max_iters:
            break
        D = (G - target).clamp_min_(0)
        if pgd.lam > 0:
            D.add_(G.clamp_min(0), alpha=pgd.lam)
        row_sum = D.sum(dim=1).max().item()
        step = min(pgd.lr, _STEP_CAP / (4.0 * row_sum)) if row_sum > 0 else pgd.lr
        W = W - (4.0 * step) * (W @ D)
        W = W / W.norm(dim=0, keepdim=True)

    how = f"stalled after {it} iterations" if stalled else f"stopped at max_iters = {pgd.max_iters}"
    raise ConfigError(
        f"M = {M} was not reached for {n} features in {n_dims} dims: projected gradient descent got max "
        f"interference down to {best:.6g} ({how}); raise M (above {best:.4g}) or n_dims"
        + ("" if stalled else ", or raise max_iters")
    )
