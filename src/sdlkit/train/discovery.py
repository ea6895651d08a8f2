"""Anchor discovery without labels: the directions that independent runs agree on.

R dictionaries trained on the same data with different seeds are matched pairwise (Hungarian on decoder
|cos|, eval.consistency). A latent l of a reference run r is a candidate anchor when

    support(l) = 1 + #{runs j != r : |cos(d_l^r, d_π_j(l)^j)| >= threshold}  >=  min_runs

(its matched partners agree in at least `min_runs` of the R runs, itself included). Its direction is the
sign-aligned mean of the agreeing partners' unit decoder columns (B) and unit encoder rows (A), normalised.
Candidates are ranked by support, then by agreement (the matched |cos| averaged over all other runs,
agreeing or not); a candidate within `threshold` |cos| of a better-ranked one is the same direction seen
from another reference and is dropped; the first `count` are kept.

With min_runs = R (the default) every agreed direction is present in every run, so one reference (run 0)
finds them all; with min_runs < R every run serves as a reference in turn.

Why this rule: a direction that seeds trained apart keep finding is unlikely to be an artefact of one
initialisation. Whether it is a true feature, and whether anchoring it helps, is what
benchmarks/anchor_discovery.py measures (benchmarks/README.md).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from sdlkit.errors import ConfigError, ShapeError
from sdlkit.eval.consistency import Consistency, consistency
from sdlkit.train.anchoring import Anchors

__all__ = ["Discovered", "discover_anchors"]


@dataclass
class Discovered:
    """Discovered anchors, most consistent first: `anchors` (A [k, n_in], B [n_out, k]); per anchor its
    `support` [k] (runs that agree), `agreement` [k] (mean matched |cos| over the other runs), and where it
    was found: `run` [k] and `latent` [k] of its reference latent. `consistency`: the pairwise matches."""

    anchors: Anchors
    support: torch.Tensor
    agreement: torch.Tensor
    run: torch.Tensor
    latent: torch.Tensor
    consistency: Consistency

    def extra(self) -> dict[str, torch.Tensor]:
        """The per-anchor tensors an anchors file keeps beside A and B."""
        return {"support": self.support, "agreement": self.agreement, "run": self.run, "latent": self.latent}


def _unit(W: torch.Tensor, dim: int) -> torch.Tensor:
    W = W.detach().float()
    return W / W.norm(dim=dim, keepdim=True).clamp_min(1e-12)


def _check(encoders: Sequence[torch.Tensor], decoders: Sequence[torch.Tensor], threshold: float, min_runs: int) -> None:
    R = len(decoders)
    if R < 2 or len(encoders) != R:
        raise ConfigError(f"anchor discovery needs at least two runs (each an encoder and a decoder), got {R}")
    for E, D in zip(encoders, decoders, strict=True):
        if E.ndim != 2 or D.ndim != 2 or E.shape[0] != D.shape[1]:
            raise ShapeError(
                f"encoder {list(E.shape)} and decoder {list(D.shape)} are not W_E [L, n_in], W_D [n_out, L]"
            )
        if (E.shape[1], D.shape[0]) != (encoders[0].shape[1], decoders[0].shape[0]):
            raise ShapeError("the runs read or write different dimensions: anchors need dictionaries of one shape")
    if not 0 < threshold <= 1:
        raise ConfigError(f"threshold = {threshold} is not allowed: it must be in (0, 1]")
    if not 1 <= min_runs <= R:
        raise ConfigError(f"min_runs = {min_runs} is not allowed: it must be in [1, {R}] (the number of runs)")


def _candidates(r: int, encoders, decoders, cons: Consistency, threshold: float, min_runs: int) -> dict:
    """Run r's latents that at least `min_runs` runs agree on, with their consensus directions."""
    others = [j for j in range(len(decoders)) if j != r]
    matches = [cons.matches[(r, j)] for j in others]
    scores = torch.stack([m.scores for m in matches]).float()  # [R-1, L_r]
    agree = scores >= threshold
    support = 1 + agree.sum(0)
    keep = (support >= min_runs).nonzero().squeeze(1)
    B = _unit(decoders[r], 0)[:, keep]
    A = _unit(encoders[r], 1)[keep]
    for j, m, ok in zip(others, matches, agree, strict=True):
        weight = (ok[keep] * m.signs[keep].float()).float()  # 0 where run j disagrees; ±1 aligns its sign
        partner = m.partner[keep].clamp_min(0)
        B = B + _unit(decoders[j], 0)[:, partner] * weight
        A = A + _unit(encoders[j], 1)[partner] * weight[:, None]
    return {
        "A": _unit(A, 1),
        "B": _unit(B, 0),
        "support": support[keep],
        "agreement": scores.mean(0)[keep],
        "run": torch.full_like(keep, r),
        "latent": keep,
    }


def _first_of_each_direction(B: torch.Tensor, threshold: float, chunk: int = 2048) -> torch.Tensor:
    """Mask [C] over ranked unit columns B [d, C]: False where a better-ranked column is within `threshold`
    |cos| (the same direction again). Computed in blocks of `chunk` columns, never the whole [C, C]."""
    C = B.shape[1]
    keep = torch.ones(C, dtype=torch.bool, device=B.device)
    for start in range(0, C, chunk):
        block = (B[:, start : start + chunk].T @ B).abs()  # [c, C]
        ranks = torch.arange(start, start + block.shape[0], device=B.device)[:, None]
        earlier = torch.arange(C, device=B.device)[None, :] < ranks
        keep[start : start + block.shape[0]] = ~((block >= threshold) & earlier).any(1)
    return keep


def discover_anchors(
    encoders: Sequence[torch.Tensor],
    decoders: Sequence[torch.Tensor],
    threshold: float = 0.9,
    min_runs: int | None = None,
    count: int | None = None,
    candidates: int | None = None,
) -> Discovered:
    """Anchors from R runs' encoders (W_E [L_r, n_in]) and decoders (W_D [n_out, L_r]): see the module
    docstring for the rule. min_runs None = all R runs; count None = every direction found; candidates:
    see eval.consistency.match_dictionaries (None = exact matching)."""
    min_runs = len(decoders) if min_runs is None else min_runs
    _check(encoders, decoders, threshold, min_runs)
    if count is not None and count < 1:
        raise ConfigError(f"count = {count} is not allowed: give at least 1 (or leave it out for all)")
    cons = consistency(decoders, candidates)
    references = [0] if min_runs == len(decoders) else range(len(decoders))
    found = [_candidates(r, encoders, decoders, cons, threshold, min_runs) for r in references]
    pooled = {key: torch.cat([f[key] for f in found], dim=1 if key == "B" else 0) for key in found[0]}
    # rank by support, ties by agreement: two stable sorts, the secondary key first
    order = pooled["agreement"].argsort(descending=True, stable=True)
    order = order[pooled["support"][order].argsort(descending=True, stable=True)]
    ranked = {key: (v[:, order] if key == "B" else v[order]) for key, v in pooled.items()}
    kept = _first_of_each_direction(ranked["B"], threshold).nonzero().squeeze(1)[:count]
    pick = {key: (v[:, kept] if key == "B" else v[kept]) for key, v in ranked.items()}
    return Discovered(
        Anchors(pick["A"].contiguous(), pick["B"].contiguous(), []),
        pick["support"],
        pick["agreement"],
        pick["run"],
        pick["latent"],
        cons,
    )
