"""Shared checks and the one linear-algebra helper of the theory package."""

from __future__ import annotations

from collections.abc import Callable

import torch

from sdlkit.errors import ConfigError, ShapeError, check_matrix

Sigma = Callable[[torch.Tensor], torch.Tensor]
"""σ: pre-activations [batch, n_q] → codes [batch, n_q] (an sdlkit Activation or any function)."""


def check_features(W_p: torch.Tensor, W_r: torch.Tensor | None = None) -> int:
    """n, the number of ground-truth columns, after checking W_p [n_p, n] and W_r [n_r, n] agree."""
    check_matrix("W_p", W_p)
    if W_r is not None:
        check_matrix("W_r", W_r, cols=W_p.shape[1])
    return W_p.shape[1]


def check_unit_columns(name: str, W: torch.Tensor, tol: float = 1e-6) -> None:
    """The constructions of Thm 3.3 and 3.8 assume unit-norm feature directions."""
    norms = W.detach().to(torch.float64).norm(dim=0)
    if not torch.allclose(norms, torch.ones_like(norms), atol=tol, rtol=0):
        raise ConfigError(f"{name} needs unit-norm columns (the theorem assumes ‖w^d‖ = 1); normalise them first")


def moments_vector(M: object, n: int, like: torch.Tensor) -> torch.Tensor:
    """M_d as a [n] tensor in like's dtype and device (a scalar is broadcast to every feature)."""
    M = torch.as_tensor(M, dtype=like.dtype, device=like.device)
    if M.ndim == 0:
        M = M.expand(n)
    if M.shape != (n,):
        raise ShapeError(f"M has shape {tuple(M.shape)}; one moment per feature, [{n}], is needed")
    return M


def realise_preactivations(Z: torch.Tensor, W_p: torch.Tensor) -> torch.Tensor:
    """An encoder W_E [n_q, n_p] with W_E W_p = Z for any target Z [n_q, n] (float64).

    W_E = Z W_p⁺: the rows are combinations of the biorthogonal rows of the pseudo-inverse, so
    ⟨W_E[i], w_p^d⟩ = Z[i, d] up to rounding. Needs W_p to have full column rank, so n ≤ n_p; with
    n > n_p the n features are linearly dependent and an arbitrary Z is not reachable (ConfigError).
    """
    check_matrix("W_p", W_p)
    check_matrix("Z", Z, cols=W_p.shape[1])
    n_p, n = W_p.shape
    if n > n_p:
        raise ConfigError(
            f"n = {n} features in n_p = {n_p} dimensions: the pattern may not be realisable, and this "
            "construction (biorthogonal rows of W_p⁺) needs n ≤ n_p"
        )
    W = W_p.detach().to(torch.float64)
    if torch.linalg.matrix_rank(W).item() < n:
        raise ConfigError("W_p lacks full column rank: the biorthogonal construction needs independent features")
    return Z.to(torch.float64) @ torch.linalg.pinv(W)
