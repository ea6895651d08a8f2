"""The SDL loss of the theory (bias-free: x_q = σ(W_E x_p), x̂_r = W_D x_q) and its approximation.

Shapes: W_E [n_q, n_p], W_D [n_r, n_q], W_p [n_p, n], W_r [n_r, n], codes [N, n], M [n].
Everything is differentiable in W_E and W_D (no detach), so gradients come from autograd.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from sdlkit.data.lrb.config import LRBConfig
from sdlkit.errors import ConfigError, check_matrix
from sdlkit.paper.theory._util import Sigma, check_features, moments_vector

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
"""(W_E, W_D) → scalar loss, e.g. `lambda E, D: approx_loss(E, D, W_p, W_r, M, sigma)`."""


# ----- M_d --------------------------------------------------------------------------------------------
def feature_moments(S: float, c_min: float, beta: float, n: int) -> torch.Tensor:
    """M_d of Thm 3.1 for LRB codes: Pr(x = x_d e_d) · E[x_d² | x_d > 0], [n] float64.

    Features are independent, each active with probability 1 − S, so Pr(only d active) =
    (1 − S)·S^(n−1); an active magnitude is c_min + β·Exp(1), so E[x_d² | x_d > 0] = c_min² + 2 c_min β
    + 2β². All features share one distribution, hence one value.
    """
    if not 0 <= S < 1:
        raise ConfigError(f"S = {S!r} is not allowed: it must be in [0, 1)")
    if c_min < 0 or beta <= 0:
        raise ConfigError(f"c_min = {c_min!r} must be >= 0 and beta = {beta!r} > 0")
    if n < 1:
        raise ConfigError(f"n = {n!r} is not allowed: it must be a positive integer")
    single = (1 - S) * S ** (n - 1)
    second = c_min**2 + 2 * c_min * beta + 2 * beta**2
    return torch.full((n,), single * second, dtype=torch.float64)


def feature_moments_from(config: LRBConfig) -> torch.Tensor:
    """`feature_moments` for the codes of an LRB config (S, c_min, beta, n_features)."""
    return feature_moments(config.S, config.c_min, config.beta, config.n_features)


# ----- losses -----------------------------------------------------------------------------------------
def approx_loss(
    W_E: torch.Tensor, W_D: torch.Tensor, W_p: torch.Tensor, W_r: torch.Tensor, M: object, sigma: Sigma
) -> torch.Tensor:
    """L̃ = Σ_d M_d ‖w_r^d − W_D σ(W_E w_p^d)‖² (Thm 3.1), a scalar.

    σ sees all n features at once as one batch σ(W_pᵀ W_Eᵀ) [n, n_q]: each feature in isolation, the
    S → 1 limit of the loss. Computed in the promoted dtype of the inputs (use float64 for gradient
    checks). M: [n] or a scalar shared by every feature.
    """
    n = check_features(W_p, W_r)
    check_matrix("W_E", W_E, cols=W_p.shape[0])
    check_matrix("W_D", W_D, rows=W_r.shape[0], cols=W_E.shape[0])
    dtype = torch.promote_types(torch.promote_types(W_E.dtype, W_D.dtype), W_p.dtype)
    Z = W_p.to(dtype).T @ W_E.to(dtype).T  # [n, n_q]
    residual = W_r.to(dtype).T - sigma(Z) @ W_D.to(dtype).T  # [n, n_r]
    return (moments_vector(M, n, residual) * residual.pow(2).sum(dim=1)).sum()


def _residuals(W_E, W_D, codes, W_p, W_r, sigma) -> torch.Tensor:
    """Squared residuals ‖W_r x − W_D σ(W_E W_p x)‖² per sample [N]."""
    n = check_features(W_p, W_r)
    check_matrix("codes", codes, cols=n)
    check_matrix("W_E", W_E, cols=W_p.shape[0])
    check_matrix("W_D", W_D, rows=W_r.shape[0], cols=W_E.shape[0])
    dtype = torch.promote_types(torch.promote_types(W_E.dtype, W_D.dtype), codes.dtype)
    codes = codes.to(dtype)
    x_p = codes @ W_p.to(dtype).T
    x_r = codes @ W_r.to(dtype).T
    return (x_r - sigma(x_p @ W_E.to(dtype).T) @ W_D.to(dtype).T).pow(2).sum(dim=1)


def exact_loss(
    W_E: torch.Tensor, W_D: torch.Tensor, codes: torch.Tensor, W_p: torch.Tensor, W_r: torch.Tensor, sigma: Sigma
) -> torch.Tensor:
    """L = mean over samples of ‖W_r x − W_D σ(W_E W_p x)‖², codes x [N, n] drawn by the caller
    (e.g. `LRBSource.codes(0, N)`): the Monte Carlo estimate of the loss that Thm 3.1 approximates.
    Memory O(N · max(n_p, n_q, n_r)); pass chunks for very large N."""
    return _residuals(W_E, W_D, codes, W_p, W_r, sigma).mean()


def sup_residual(
    W_E: torch.Tensor, W_D: torch.Tensor, codes: torch.Tensor, W_p: torch.Tensor, W_r: torch.Tensor, sigma: Sigma
) -> torch.Tensor:
    """Empirical C of Thm 3.1: the largest squared residual over the given samples.

    Caveat: the theorem's C is the supremum over ALL samples. LRB magnitudes are c_min + Exp, which
    is unbounded, so the true C is infinite (the bound is vacuous) unless the residual vanishes on
    every ray; the empirical C makes the bound finite but is only a lower estimate of the real one.
    """
    return _residuals(W_E, W_D, codes, W_p, W_r, sigma).max()


def loss_gap_bound(n: int, S: float, C: float | torch.Tensor) -> float:
    """Thm 3.1's bound on |L − L̃|: n² C (1 − S)², stated for (1 − S) ≤ 1/n and positively homogeneous σ.

    Caveats: (i) the single-active term equals L̃ only if σ(t z) = t σ(z) for t > 0: true for ReLU and
    TopK, false for JumpReLU with θ > 0; (ii) the proof's union bound gives Pr(‖x‖₀ ≥ 2) ≤ C(n, 2)(1−S)²,
    so the bound holds with room, and for every S, not only (1 − S) ≤ 1/n; (iii) see `sup_residual`
    for C. The paper's bench (n = 1000, S = 0.99) has 1 − S = 10/n: outside the stated regime.
    """
    return float(n**2 * float(C) * (1 - S) ** 2)


# ----- gradients and descent ------------------------------------------------------------------------
def loss_and_grads(
    loss_fn: LossFn, W_E: torch.Tensor, W_D: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(loss, ∂loss/∂W_E, ∂loss/∂W_D) by autograd at detached copies of W_E, W_D."""
    E = W_E.detach().clone().requires_grad_(True)
    D = W_D.detach().clone().requires_grad_(True)
    loss = loss_fn(E, D)
    g_E, g_D = torch.autograd.grad(loss, (E, D), allow_unused=True)
    g_E = torch.zeros_like(E) if g_E is None else g_E
    g_D = torch.zeros_like(D) if g_D is None else g_D
    return loss.detach(), g_E, g_D


def grad_norm(loss_fn: LossFn, W_E: torch.Tensor, W_D: torch.Tensor) -> float:
    """‖∇L‖ over (W_E, W_D) together (Frobenius), by autograd."""
    _, g_E, g_D = loss_and_grads(loss_fn, W_E, W_D)
    return float(torch.sqrt(g_E.pow(2).sum() + g_D.pow(2).sum()))


def descend(
    W_E: torch.Tensor, W_D: torch.Tensor, loss_fn: LossFn, steps: int, lr: float, return_weights: bool = False
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Plain gradient descent W ← W − lr ∇loss on copies of (W_E, W_D) (the inputs are not changed).

    Returns the loss trajectory [steps + 1] (the start, then after every step), and with
    `return_weights` also the final (W_E, W_D). Used for "GD started near a partial minimum stays".
    """
    if steps < 0 or lr <= 0:
        raise ConfigError(f"steps = {steps!r} must be >= 0 and lr = {lr!r} > 0")
    E = W_E.detach().clone()
    D = W_D.detach().clone()
    losses = []
    for _ in range(steps):
        loss, g_E, g_D = loss_and_grads(loss_fn, E, D)
        losses.append(loss)
        E -= lr * g_E
        D -= lr * g_D
    with torch.no_grad():
        losses.append(loss_fn(E, D).detach())
    trajectory = torch.stack(losses)
    return (trajectory, E, D) if return_weights else trajectory
