"""Activation patterns (Def 3.1) and what they say about each latent and each feature."""

from __future__ import annotations

from typing import Any

import torch

from sdlkit.errors import ShapeError, check_matrix
from sdlkit.paper.theory._util import Sigma, check_features


@torch.no_grad()
def activation_pattern(W_E: torch.Tensor, W_p: torch.Tensor, sigma: Sigma) -> torch.Tensor:
    """Def 3.1: P [n_q, n] bool, P[i, d] = σ(W_E w_p^d)_i > 0, every feature tested in isolation.

    Row i is F_i, the set of features that activate latent i. W_E [n_q, n_p], W_p [n_p, n].
    """
    check_features(W_p)
    check_matrix("W_E", W_E, cols=W_p.shape[0])
    dtype = torch.promote_types(W_E.dtype, W_p.dtype)
    return (sigma(W_p.to(dtype).T @ W_E.to(dtype).T) > 0).T.contiguous()


def pattern_from_partition(blocks: list[list[int]], n_q: int, n: int) -> torch.Tensor:
    """The pattern [n_q, n] whose latent i fires exactly for blocks[i]; latents past the blocks are dead."""
    if len(blocks) > n_q:
        raise ShapeError(f"{len(blocks)} blocks need at least as many latents; n_q = {n_q}")
    pattern = torch.zeros(n_q, n, dtype=torch.bool)
    for i, block in enumerate(blocks):
        pattern[i, list(block)] = True
    return pattern


@torch.no_grad()
def classify(pattern: torch.Tensor, W_D: torch.Tensor | None = None, W_r: torch.Tensor | None = None) -> dict[str, Any]:
    """Read a pattern P [n_q, n] (bool, F_i = row i) as latent and feature classes.

    Latents: monosemantic |F_i| = 1, polysemantic |F_i| ≥ 2, dead |F_i| = 0.
    Features: "recovered" (some monosemantic latent fires for it alone), "absorbed" (it fires only
    polysemantic latents, which also fire for other features), "lost" (no latent fires for it).

    Keys: n_latents, n_features, latent_sizes [n_q] long; monosemantic, polysemantic, dead (index
    lists) and n_monosemantic, n_polysemantic, n_dead; feature_status (list of the three words);
    recovered, absorbed, lost (index lists) and their n_ counts; latent_features {i: F_i} for the
    polysemantic latents; absorbed_into {d: [(i, other features of F_i)]} for the absorbed features;
    is_partition (every feature fires exactly one latent). With W_D [n_r, n_q] and W_r [n_r, n] also
    decoder_cosine [n]: max |cos(W_D[:, i], w_r^d)| over the latents i that fire for d (0 if none).
    """
    if not isinstance(pattern, torch.Tensor) or pattern.ndim != 2:
        raise ShapeError("pattern must be a 2-D [n_latents, n_features] tensor")
    P = pattern.to(torch.bool).cpu()
    n_q, n = P.shape
    sizes = P.sum(dim=1)
    mono, poly, dead = sizes == 1, sizes >= 2, sizes == 0
    fired = P.any(dim=0)
    recovered = (P & mono[:, None]).any(dim=0)
    absorbed = fired & ~recovered
    lost = ~fired
    status = [("recovered" if r else "absorbed" if a else "lost") for r, a in zip(recovered, absorbed, strict=True)]
    latent_features = {int(i): P[i].nonzero().flatten().tolist() for i in poly.nonzero().flatten()}
    out: dict[str, Any] = {
        "n_latents": n_q,
        "n_features": n,
        "latent_sizes": sizes,
        "monosemantic": _indices(mono),
        "polysemantic": _indices(poly),
        "dead": _indices(dead),
        "n_monosemantic": int(mono.sum()),
        "n_polysemantic": int(poly.sum()),
        "n_dead": int(dead.sum()),
        "feature_status": status,
        "recovered": _indices(recovered),
        "absorbed": _indices(absorbed),
        "lost": _indices(lost),
        "n_recovered": int(recovered.sum()),
        "n_absorbed": int(absorbed.sum()),
        "n_lost": int(lost.sum()),
        "latent_features": latent_features,
        "absorbed_into": _absorbed_into(latent_features, _indices(absorbed)),
        "is_partition": bool((P.sum(dim=0) == 1).all()),
    }
    if W_D is not None and W_r is not None:
        out["decoder_cosine"] = _decoder_cosine(P, W_D, W_r)
    return out


def _indices(mask: torch.Tensor) -> list[int]:
    return mask.nonzero().flatten().tolist()


def _absorbed_into(
    latent_features: dict[int, list[int]], absorbed: list[int]
) -> dict[int, list[tuple[int, list[int]]]]:
    """For each absorbed feature d: the polysemantic latents i that fire for it, with the other features of F_i."""
    out: dict[int, list[tuple[int, list[int]]]] = {d: [] for d in absorbed}
    for i, feats in latent_features.items():
        for d in feats:
            if d in out:
                out[d].append((i, [f for f in feats if f != d]))
    return out


def _decoder_cosine(P: torch.Tensor, W_D: torch.Tensor, W_r: torch.Tensor) -> torch.Tensor:
    """[n]: max |cos(W_D[:, i], w_r^d)| over the latents i with P[i, d] (0 if none). P [n_q, n] bool."""
    n_q, n = P.shape
    check_matrix("W_D", W_D, cols=n_q)
    check_matrix("W_r", W_r, rows=W_D.shape[0], cols=n)
    D = W_D.detach().to(torch.float64).cpu()
    R = W_r.detach().to(torch.float64).cpu()
    cos = (D / D.norm(dim=0).clamp_min(1e-12)).T @ (R / R.norm(dim=0).clamp_min(1e-12))  # [n_q, n]
    return torch.where(P, cos.abs(), torch.zeros_like(cos)).amax(dim=0)
