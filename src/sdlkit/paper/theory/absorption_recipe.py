"""Thm 3.8: feature absorption from hierarchy, by the paper's constructive recipe.

Threshold-style σ: σ(z)_i = z_i · 1[z_i > θ_i] (JumpReLU; θ = 0 is ReLU). Not positively homogeneous
for θ > 0, so Thm 3.1's L̃ is not the S → 1 loss for it; the theorem is about patterns only.

The recipe (parent latent i*, its sub-concepts F_{i*} with activations a_d = ⟨W_E[i*], w_p^d⟩ > c):
d* = argmin a_d (value a_min); shrink the parent row by λ = (c + a_min)/(2 a_min); threshold
c'' = (c + a_min)/2 + ε; add a row α·w_p^{d*} with α = 2c''/(1 + M), M the signed max interference.
Then λ a_{d*} = (c + a_min)/2 < c'' (d* leaves the parent), features outside F_{i*} stay below
(λ c < c''), the new latent fires for d* (α > c'' ⇔ M < 1) and for nothing else (α M < c'').

Where the recipe as stated fails (the function still applies it and reports `realised = False`):
1. Ties: every other sub-concept needs λ a_d > c'', i.e. ε < λ (a_d − a_min). A second sub-concept
   with a_d = a_min (or ε at least λ times the gap) leaves the parent too and is lost.
2. One shared threshold: "set the threshold to c''" raises it for EVERY latent if σ has a single
   threshold; features of other latents with activations in (c, c''] then stop firing. The recipe
   works when only the parent and the new latent get c'' (per-latent θ_i, as JumpReLU has): the
   default `per_latent=True`.
3. It needs unit-norm w_p (α ⟨w_p^{d*}, w_p^{d*}⟩ = α) and −1 < M < 1 (ConfigError otherwise).
"""

from __future__ import annotations

from typing import Any

import torch

from sdlkit.errors import ConfigError, check_matrix
from sdlkit.paper.theory._util import Sigma, check_features, check_unit_columns
from sdlkit.paper.theory.patterns import activation_pattern

_TIE = 1e-9
"""Gaps between the two smallest parent activations below this (relative) count as a tie."""


def threshold_sigma(thresholds: float | torch.Tensor) -> Sigma:
    """σ(z)_i = z_i · 1[z_i > θ_i] for z [batch, n_q]; θ a scalar or [n_q] (JumpReLU's forward)."""
    theta = torch.as_tensor(thresholds, dtype=torch.float64)

    def sigma(z: torch.Tensor) -> torch.Tensor:
        return z * (z > theta.to(z.device, z.dtype))

    return sigma


def absorption_configuration(
    W_E: torch.Tensor,
    W_p: torch.Tensor,
    thresholds: float | torch.Tensor,
    parent: int,
    *,
    per_latent: bool = True,
    eps: float | None = None,
) -> dict[str, Any]:
    """Apply Thm 3.8's recipe to latent `parent` of a dictionary with threshold σ (see module docstring).

    W_E [n_q, n_p] realises a pattern P under `threshold_sigma(thresholds)`; the parent latent must fire
    for at least two features. eps: the ε of c''; default half the admissible room λ (a_(2) − a_min),
    or 1e-9·max(1, a_min) when the room is below that (a tie up to rounding, where the recipe fails).
    per_latent: give c'' to the parent and the new latent only (True), or to every latent, the literal
    single-threshold reading (False).

    Returns a dict: W_E [n_q + 1, n_p] (float64; parent row scaled by λ, the new row α w_p^{d*}
    appended as latent n_q), thresholds [n_q + 1], pattern [n_q + 1, n] (realised under them),
    expected_pattern (P' of the theorem), realised (pattern == P'), absorbed_feature d*, new_latent,
    a_min, lambda, c_new (c''), alpha, M, eps, tie (the two smallest activations are equal).
    """
    check_features(W_p)
    check_unit_columns("W_p", W_p)
    check_matrix("W_E", W_E, cols=W_p.shape[0])
    n_q = W_E.shape[0]
    if not 0 <= parent < n_q:
        raise ConfigError(f"parent = {parent} must index a latent in [0, {n_q})")
    theta = _threshold_vector(thresholds, n_q, W_E.device)
    W_E64, W_p64 = W_E.detach().to(torch.float64), W_p.detach().to(torch.float64)
    pattern = activation_pattern(W_E64, W_p64, threshold_sigma(theta))
    block = pattern[parent].nonzero().flatten()
    if len(block) < 2:
        raise ConfigError(f"latent {parent} fires for {len(block)} feature(s); Thm 3.8 needs a parent with >= 2")
    c = theta[parent].item()
    if c < 0:
        raise ConfigError(f"the parent's threshold c = {c} must be >= 0")
    M = _max_interference(W_p64)
    recipe = _recipe(W_E64[parent] @ W_p64[:, block], block, c, M, eps)
    d_star, c_new = recipe["absorbed_feature"], recipe["c_new"]
    new_W_E = torch.cat([W_E64, recipe["alpha"] * W_p64[:, d_star][None, :]])
    new_W_E[parent] *= recipe["lambda"]
    new_theta = _new_thresholds(theta, parent, c_new, per_latent)
    new_pattern = activation_pattern(new_W_E, W_p64, threshold_sigma(new_theta))
    expected = _expected_pattern(pattern, parent, d_star)
    return {
        "W_E": new_W_E,
        "thresholds": new_theta,
        "pattern": new_pattern,
        "expected_pattern": expected,
        "realised": bool(torch.equal(new_pattern, expected)),
        "absorbed_feature": d_star,
        "new_latent": n_q,
        **{key: recipe[key] for key in ("a_min", "lambda", "c_new", "alpha", "M", "eps", "tie")},
    }


def _threshold_vector(thresholds: float | torch.Tensor, n_q: int, device: torch.device) -> torch.Tensor:
    """θ [n_q] (float64, a copy) from a scalar or [n_q]."""
    theta = torch.as_tensor(thresholds, dtype=torch.float64, device=device)
    theta = theta.expand(n_q).clone() if theta.ndim == 0 else theta.clone()
    if theta.shape != (n_q,):
        raise ConfigError(f"thresholds must be a scalar or [{n_q}], got shape {tuple(theta.shape)}")
    return theta


def _new_thresholds(theta: torch.Tensor, parent: int, c_new: float, per_latent: bool) -> torch.Tensor:
    """[n_q + 1]: c'' for the parent and the new latent, the others unchanged (per_latent), or c'' for all."""
    if not per_latent:
        return torch.full((len(theta) + 1,), c_new, dtype=torch.float64, device=theta.device)
    new_theta = torch.cat([theta, theta.new_tensor([c_new])])
    new_theta[parent] = c_new
    return new_theta


def _max_interference(W_p64: torch.Tensor) -> float:
    """M: the largest signed off-diagonal ⟨w_p^i, w_p^j⟩; ConfigError unless −1 < M < 1."""
    G = W_p64.T @ W_p64
    M = G.masked_fill(torch.eye(G.shape[0], dtype=torch.bool, device=G.device), float("-inf")).max().item()
    if not -1 < M < 1:
        raise ConfigError(f"the recipe needs -1 < M < 1 (α = 2c''/(1 + M) and α M < c''), got M = {M}")
    return M


def _recipe(acts: torch.Tensor, block: torch.Tensor, c: float, M: float, eps: float | None) -> dict[str, Any]:
    """The recipe's numbers from the parent's activations `acts` [k] on its features `block` [k]: d*, a_min,
    λ, ε (the default when None), c'', α, and whether the two smallest activations tie."""
    order = acts.argsort()
    a_min = acts[order[0]].item()
    lam = (c + a_min) / (2 * a_min)
    room = lam * (acts[order[1]].item() - a_min)
    tie = room <= _TIE * max(1.0, a_min)
    if eps is None:  # half the room; on a tie (up to rounding) there is none and the recipe fails
        eps = _TIE * max(1.0, a_min) if tie else room / 2
    c_new = (c + a_min) / 2 + eps
    alpha = 2 * c_new / (1 + M)
    d_star = int(block[order[0]])
    return {
        "absorbed_feature": d_star,
        "a_min": a_min,
        "lambda": lam,
        "c_new": c_new,
        "alpha": alpha,
        "M": M,
        "eps": eps,
        "tie": tie,
    }


def _expected_pattern(pattern: torch.Tensor, parent: int, d_star: int) -> torch.Tensor:
    """P' of Thm 3.8 [n_q + 1, n]: P with d* moved from the parent to a new last latent."""
    n_q, n = pattern.shape
    expected = torch.cat([pattern, torch.zeros(1, n, dtype=torch.bool, device=pattern.device)])
    expected[parent, d_star] = False
    expected[n_q, d_star] = True
    return expected
