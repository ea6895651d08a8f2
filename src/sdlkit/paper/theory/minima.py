"""Thm 3.6: spurious partial minima of L̃ with a polysemantic partition pattern.

What the paper states: take ANY W_E that realises a polysemantic partition pattern P = (F_1, …, F_N)
and the weighted least-squares decoder W_D^{*,i} = Σ_{d∈F_i} M_d (z_d)_i w_r^d / Σ_{d∈F_i} M_d (z_d)_i²
(dead columns 0); then both gradients vanish. What holds (checked numerically in the tests):

* The DECODER gradient vanishes for every realising W_E (that is what least squares means).
* The ENCODER gradient of row i is −2 Σ_{d∈F_i} M_d ⟨W_D^i, ρ_d⟩ w_p^d (ρ_d the residual of feature d);
  with independent w_p^d it vanishes only if a_d := (z_d)_i = ⟨u, w_r^d⟩/‖u‖² for u = W_D^i and every
  d ∈ F_i. The least-squares decoder only gives the weighted sum Σ_d M_d a_d ⟨u, ρ_d⟩ = 0. So a generic
  realising W_E (e.g. random positive c_d) is NOT stationary unless the w_r^d of each block are
  orthonormal with equal M_d (as in Example 3.5).
* Both gradients vanish iff, per block, √M_F ⊙ a is (a multiple of) an eigenvector v of
  H = diag(√M_F) W_Fᵀ W_F diag(√M_F) (W_F: the block's w_r columns), i.e. (a, u) is a stationary point
  of the weighted rank-one fit of the block. Realisability needs a_d > 0, so v must have entries of
  one sign. Such a v does not always exist: e.g. three unit w_r with Gram [[1, .1, 0], [.1, 1, 0],
  [0, 0, 1]] and equal M_d have none, and then L̃ has NO stationary point inside that pattern's
  region (its infimum there is on the boundary, where a feature leaves the block). Thm 3.6's "for
  every realisable polysemantic partition" is false in general; it holds for blocks of two features
  with equal M_d (v = (1, 1)·) and for blocks whose Gram is entrywise positive (Perron).

`spurious_minimum(..., encoder="stationary")` (default) builds the stationary point when it exists
and raises ConfigError when it does not; `encoder="paper"` builds the paper's literal recipe.
"""

from __future__ import annotations

from dataclasses import dataclass
from itertools import pairwise
from typing import Any, Literal

import torch
from scipy.optimize import linprog

from sdlkit.errors import ConfigError
from sdlkit.overrides import with_overrides
from sdlkit.paper.theory._util import Sigma, check_features, moments_vector, realise_preactivations
from sdlkit.paper.theory.patterns import activation_pattern, pattern_from_partition


def random_partition(n: int, n_blocks: int, generator: torch.Generator | None = None) -> list[list[int]]:
    """A uniformly shuffled partition of range(n) into `n_blocks` non-empty blocks (sorted lists).

    Needs 1 ≤ n_blocks < n, so at least one block has two or more features (a polysemantic pattern).
    """
    if n < 2 or not 1 <= n_blocks < n:
        raise ConfigError(f"n_blocks = {n_blocks} must be in [1, n) for a polysemantic partition of n = {n} features")
    perm = torch.randperm(n, generator=generator)
    cuts = (torch.randperm(n - 1, generator=generator)[: n_blocks - 1] + 1).sort().values.tolist()
    bounds = [0, *cuts, n]
    return [sorted(perm[a:b].tolist()) for a, b in pairwise(bounds)]


def check_partition(partition: list[list[int]], n: int, n_q: int) -> None:
    """ConfigError unless `partition` is a partition of range(n) into at most n_q non-empty blocks."""
    flat = [d for block in partition for d in block]
    if any(len(block) == 0 for block in partition) or sorted(flat) != list(range(n)):
        raise ConfigError(f"partition must split range({n}) into disjoint non-empty blocks, got {partition}")
    if len(partition) > n_q:
        raise ConfigError(f"{len(partition)} blocks need n_q >= {len(partition)} latents, got n_q = {n_q}")


def _one_sign_vector(V: torch.Tensor, tol: float) -> torch.Tensor | None:
    """A vector in the column span of V [k, m] with all entries > 0, or None (an LP when m > 1)."""
    if V.shape[1] == 1:
        v = V[:, 0] * (1.0 if V[:, 0].sum() >= 0 else -1.0)
        return v if v.min() > tol * v.abs().max() else None
    m = V.shape[1]
    res = linprog(c=[0.0] * m, A_ub=(-V).numpy(), b_ub=[-1.0] * V.shape[0], bounds=[(None, None)] * m, method="highs")
    return (V @ torch.as_tensor(res.x, dtype=V.dtype)) if res.status == 0 else None


def stationary_block_codes(W_F: torch.Tensor, M_F: torch.Tensor, tol: float = 1e-9) -> tuple[torch.Tensor, float]:
    """Positive latent values a [k] for one block such that (a, least-squares u) is stationary.

    W_F [n_r, k]: the block's w_r columns; M_F [k]. Searches the eigenspaces of
    H = diag(√M) W_Fᵀ W_F diag(√M), largest eigenvalue (lowest block loss) first, for an eigenvector v
    with entries of one sign; then u = W_F (√M ⊙ v) and a_d = ⟨u, w_r^d⟩ / ‖u‖² ∝ v_d / √M_d > 0.
    Returns (a, λ); the block's loss at the point is Σ_d M_d ‖w_r^d‖² − λ. ConfigError when no such
    eigenvector exists (then L̃ has no stationary point in this pattern's region).
    """
    W_F = W_F.detach().to(torch.float64).cpu()
    root = M_F.detach().to(torch.float64).cpu().sqrt()
    H = root[:, None] * (W_F.T @ W_F) * root[None, :]
    evals, evecs = torch.linalg.eigh(H)
    scale = max(1.0, evals.abs().max().item())
    j = len(evals) - 1
    while j >= 0:
        start = j
        while start > 0 and evals[j] - evals[start - 1] <= tol * scale:
            start -= 1
        lam = evals[j].item()
        if lam > tol * scale:
            v = _one_sign_vector(evecs[:, start : j + 1], tol)
            if v is not None:
                u = W_F @ (root * v)
                return (W_F.T @ u) / u.dot(u), lam
        j = start - 1
    raise ConfigError(
        "no partial minimum with this block exists: H = diag(√M) W_rᵀ W_r diag(√M) over the block has no "
        "eigenvector with entries of one sign, so Thm 3.6 fails for this partition"
    )


@dataclass(frozen=True)
class MinimumOptions:
    """How `spurious_minimum` builds its configuration."""

    encoder: Literal["stationary", "paper"] = "stationary"
    """The block codes that make both gradients vanish ("stationary"), or the literal recipe, random c_d ("paper")."""
    margin: float = 0.1
    """Pre-activation −margin for every (latent, feature) outside the pattern (>= 0)."""
    generator: torch.Generator | None = None
    """Draws the random factors."""


def spurious_minimum(
    partition: list[list[int]],
    W_p: torch.Tensor,
    W_r: torch.Tensor,
    M: object,
    n_q: int,
    sigma: Sigma,
    options: MinimumOptions | None = None,
    **overrides: Any,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Thm 3.6's configuration for a partition pattern: latent i fires exactly for partition[i].

    Returns (W_E [n_q, n_p], W_D [n_r, n_q]) in float64; latents past the blocks are dead (decoder 0).
    The encoder sets the pre-activations (W_E w_p^d)_i = a_d for d ∈ F_i and −margin for every other
    (latent, feature), by the biorthogonal rows of W_p⁺ (`realise_preactivations`; needs n ≤ n_p, else
    ConfigError: the pattern may not be realisable). margin > 0 keeps the pattern independent of
    rounding (with margin = 0, the paper's exact c_d·1[d ∈ F_i], the zeros come out as ±1e-16) and does
    not change the gradients, since σ'(−margin) = 0. `options` (or keyword overrides of its fields, e.g.
    `encoder="paper", generator=g`): see MinimumOptions.

    encoder = "stationary": per block, a = `stationary_block_codes` rescaled to max 1, times a random
    factor in [0.5, 1.5] (rescaling a block's a, with its decoder column inversely, keeps stationarity):
    both gradients vanish for σ with σ(z)_i = z_i on the firing latent (ReLU, TopK(1)). ConfigError if a
    block admits no stationary point (see the module docstring).
    encoder = "paper": a_d = c_d random in [0.5, 1.5], the literal recipe; only ∇_{W_D} vanishes in general.
    The decoder is the weighted least-squares fit computed from σ's codes, dead columns 0. ConfigError
    if σ does not realise the partition with these pre-activations.
    """
    options = with_overrides(MinimumOptions, options, overrides, "spurious_minimum")
    n = check_features(W_p, W_r)
    check_partition(partition, n, n_q)
    if options.margin < 0:
        raise ConfigError(f"margin = {options.margin} must be >= 0")
    M_vec = moments_vector(M, n, torch.empty(0, dtype=torch.float64))
    if (M_vec <= 0).any():
        raise ConfigError("every M_d must be > 0")
    a = _latent_values(partition, W_r, M_vec, options)
    block_of = torch.empty(n, dtype=torch.long)
    for i, block in enumerate(partition):
        block_of[block] = i
    Z = torch.full((n_q, n), -float(options.margin), dtype=torch.float64)
    Z[block_of, torch.arange(n)] = a
    W_E = realise_preactivations(Z.to(W_p.device), W_p)
    want = pattern_from_partition(partition, n_q, n).to(W_p.device)
    if not torch.equal(activation_pattern(W_E, W_p, sigma), want):
        raise ConfigError("σ does not realise the partition with these pre-activations (try a larger margin)")
    return W_E, _least_squares_decoder(W_E, W_p, W_r, M_vec, sigma)


def _latent_values(
    partition: list[list[int]], W_r: torch.Tensor, M_vec: torch.Tensor, options: MinimumOptions
) -> torch.Tensor:
    """a [n] (float64): the value of feature d's latent on w_p^d, per `options.encoder`."""
    n, generator = len(M_vec), options.generator
    if options.encoder == "paper":
        return 0.5 + torch.rand(n, generator=generator, dtype=torch.float64)
    if options.encoder != "stationary":
        raise ConfigError(f"encoder = {options.encoder!r} must be 'stationary' or 'paper'")
    factors = 0.5 + torch.rand(len(partition), generator=generator, dtype=torch.float64)
    a = torch.empty(n, dtype=torch.float64)
    W_r64 = W_r.detach().to(torch.float64).cpu()
    for i, block in enumerate(partition):
        if len(block) == 1:  # a single feature: any positive value is stationary
            a[block] = factors[i]
            continue
        codes, _ = stationary_block_codes(W_r64[:, block], M_vec[block])
        a[block] = codes / codes.max() * factors[i]
    return a


def _least_squares_decoder(
    W_E: torch.Tensor, W_p: torch.Tensor, W_r: torch.Tensor, M_vec: torch.Tensor, sigma: Sigma
) -> torch.Tensor:
    """W_D [n_r, n_q]: the M-weighted least-squares fit of the w_r from σ's codes of the isolated features
    (W_D^i = Σ_d M_d q_di w_r^d / Σ_d M_d q_di²); columns of latents that never fire are 0."""
    W_p64, W_r64 = W_p.detach().to(torch.float64), W_r.detach().to(torch.float64)
    with torch.no_grad():
        Q = sigma(W_p64.T @ W_E.T)  # [n, n_q]
    weights = M_vec.to(W_p.device)[:, None] * Q
    den = (weights * Q).sum(dim=0)
    return torch.where(den > 0, (W_r64 @ weights) / den.clamp_min(torch.finfo(torch.float64).tiny), 0.0)
