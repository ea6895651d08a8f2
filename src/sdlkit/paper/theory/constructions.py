"""Closed-form configurations of Sec. 3: Thm 3.3 (recovery), Thm 3.4 (non-identifiability), Example 3.5.

Conventions: W_E [n_q, n_p], W_D [n_r, n_q], W_p [n_p, n], W_r [n_r, n]; results in float64.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from sdlkit.errors import ConfigError, check_matrix
from sdlkit.methods.topk import TopK
from sdlkit.paper.theory._util import check_features, check_unit_columns, moments_vector, realise_preactivations
from sdlkit.paper.theory.loss import approx_loss


def recovering_configuration(W_p: torch.Tensor, W_r: torch.Tensor, n_q: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Thm 3.3's feature-recovering configuration W_E* = [W_pᵀ; 0], W_D* = [W_r, 0], zero-padded to n_q ≥ n.

    Returns (W_E [n_q, n_p], W_D [n_r, n_q]) in float64. Latents n..n_q−1 are dead (zero rows and
    columns). ConfigError when n_q < n: there are not enough latents for one per feature.
    """
    n = check_features(W_p, W_r)
    if n_q < n:
        raise ConfigError(f"n_q = {n_q} < n = {n}: the recovering configuration needs a latent per feature")
    W_E = torch.zeros(n_q, W_p.shape[0], dtype=torch.float64, device=W_p.device)
    W_D = torch.zeros(W_r.shape[0], n_q, dtype=torch.float64, device=W_p.device)
    W_E[:n] = W_p.detach().to(torch.float64).T
    W_D[:, :n] = W_r.detach().to(torch.float64)
    return W_E, W_D


def thm33_bounds(W_p: torch.Tensor, M_d: object) -> tuple[float, float]:
    """Thm 3.3's bounds on L̃ at `recovering_configuration`: (coarse, sharp).

    coarse = n² M² Σ_d M_d, sharp = M² Σ_d M_d (K_d − 1)², with M = max_{k≠d} ⟨w_p^k, w_p^d⟩ (signed)
    and K_d = #{k : ⟨w_p^k, w_p^d⟩ > 0} (d included). Valid for σ with σ(z)_i ∈ {0, z_i} that keeps
    the feature's own latent (ReLU; TopK), unit-norm w_p^d (checked) and unit-norm w_r^d (assumed:
    the residual of feature d is Σ_{k≠d, G_kd>0} G_kd w_r^k, of norm ≤ (K_d − 1) M only when ‖w_r^k‖ = 1).
    """
    n = check_features(W_p)
    check_unit_columns("W_p", W_p)
    M_vec = moments_vector(M_d, n, torch.empty(0, dtype=torch.float64))
    G = W_p.detach().to(torch.float64).cpu().T @ W_p.detach().to(torch.float64).cpu()
    off = G.masked_fill(torch.eye(n, dtype=torch.bool), float("-inf"))
    M = off.max().item() if n > 1 else 0.0
    K = (G > 0).sum(dim=0).to(torch.float64)
    coarse = n**2 * M**2 * M_vec.sum().item()
    sharp = M**2 * (M_vec * (K - 1) ** 2).sum().item()
    return coarse, sharp


def example_3_5() -> dict[str, Any]:
    """Example 3.5, the spurious partial minimum: n = n_p = n_q = n_r = 2, σ = TopK(1)∘ReLU, M = [1, 1].

    W_p = W_r = I₂, W_E* = [[1, 1], [0, 0]] (latent 0 fires for both features, latent 1 is dead),
    W_D* = [[½, 0], [½, 0]]. Each residual is (±½, ∓½), so L̃ = 1, and both gradients vanish. Inside
    the region where latent 0 wins TopK(1) for both features, L̃ ≥ 1 (a rank-one fit of I₂), so it is a
    minimum of that region. Keys: W_E, W_D, W_p, W_r, M, sigma, loss_fn (E, D) → L̃, loss (= 1).
    """
    f64 = torch.float64
    W_p = torch.eye(2, dtype=f64)
    W_r = torch.eye(2, dtype=f64)
    M = torch.ones(2, dtype=f64)
    sigma = TopK(1)  # keeps the largest entry, then ReLU: TopK(1)∘ReLU
    W_E = torch.tensor([[1.0, 1.0], [0.0, 0.0]], dtype=f64)
    W_D = torch.tensor([[0.5, 0.0], [0.5, 0.0]], dtype=f64)

    def loss_fn(E: torch.Tensor, D: torch.Tensor) -> torch.Tensor:
        return approx_loss(E, D, W_p, W_r, M, sigma)

    return {
        "W_E": W_E,
        "W_D": W_D,
        "W_p": W_p,
        "W_r": W_r,
        "M": M,
        "sigma": sigma,
        "loss_fn": loss_fn,
        "loss": float(loss_fn(W_E, W_D)),
    }


def spread_rotation(n: int) -> torch.Tensor:
    """An orthogonal [n, n] matrix with no large entry: Sylvester Hadamard / √n when n is a power of 2
    (every |entry| = 1/√n), else the orthonormal DCT-II (|entry| ≤ √(2/n))."""
    if n < 1:
        raise ConfigError(f"n = {n} must be positive")
    if n & (n - 1) == 0:
        H = torch.ones(1, 1, dtype=torch.float64)
        while H.shape[0] < n:
            H = torch.cat([torch.cat([H, H], dim=1), torch.cat([H, -H], dim=1)])
        return H / math.sqrt(n)
    k = torch.arange(n, dtype=torch.float64)
    R = torch.cos(math.pi / n * (k[None, :] + 0.5) * k[:, None]) * math.sqrt(2 / n)
    R[0] /= math.sqrt(2)
    return R


def zero_loss_non_identifiable(
    W_p: torch.Tensor, W_r: torch.Tensor, n_q: int, rotation: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Thm 3.4: a zero-loss dictionary (σ = ReLU) none of whose latents points along a feature.

    With an orthogonal R [n, n] (default `spread_rotation(n)`), latent pairs (i, n + i) get the
    pre-activations z_i = ⟨R[i], x⟩ and z_{n+i} = −⟨R[i], x⟩ for a code x (encoder rows ±R[i] W_p⁺,
    realised by `realise_preactivations`), and decoder columns ±W_r Rᵀ[:, i]. Since
    relu(t) − relu(−t) = t, the reconstruction is W_r Rᵀ R x = W_r x for EVERY code x: L̃ = 0 and even
    the exact loss L = 0. Encoder rows have |cos| with w_p^k of |R[i, k]| / ‖R[i] W_p⁺‖ ≤ |R[i, k]|·σ_max(W_p),
    so with spread R (entries 1/√n) and weak interference no row matches a feature. Latents 2n..n_q−1
    are dead (zero rows and columns). Needs n_q ≥ 2n and n ≤ n_p (ConfigError otherwise).
    Returns (W_E [n_q, n_p], W_D [n_r, n_q]) in float64.
    """
    n = check_features(W_p, W_r)
    if n_q < 2 * n:
        raise ConfigError(f"n_q = {n_q} < 2n = {2 * n}: this construction uses a pair of latents per direction")
    R = spread_rotation(n) if rotation is None else check_matrix("rotation", rotation, rows=n, cols=n).to(torch.float64)
    if not torch.allclose(R @ R.T, torch.eye(n, dtype=torch.float64), atol=1e-9):
        raise ConfigError("rotation must be an orthogonal [n, n] matrix")
    R = R.to(W_p.device)
    W_E = torch.zeros(n_q, W_p.shape[0], dtype=torch.float64, device=W_p.device)
    W_E[: 2 * n] = realise_preactivations(torch.cat([R, -R]), W_p)
    W_D = torch.zeros(W_r.shape[0], n_q, dtype=torch.float64, device=W_p.device)
    back = W_r.detach().to(torch.float64) @ R.T  # [n_r, n]: column i is W_r Rᵀ[:, i]
    W_D[:, :n] = back
    W_D[:, n : 2 * n] = -back
    return W_E, W_D
