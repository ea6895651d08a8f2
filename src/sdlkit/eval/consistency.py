"""Cross-seed consistency of dictionaries: PW-MCC (Song, Muhamed et al. 2025).

Two dictionaries trained on the same data with different seeds are compared by their decoder columns:
unit-normalise them, match the latents one-to-one so that the total |cos| is largest (Hungarian), average:

    PW-MCC(A, B) = (1 / min(L_A, L_B)) · max_π Σ_l |cos(a_l, b_π(l))|      A [d, L_A], B [d, L_B]

1 means both runs wrote the same directions (up to order and sign). It needs no ground truth, so it is
what a user can measure on real activations; on the bench, how well it predicts ground-truth recovery is
measured in benchmarks/README.md ("Cross-seed consistency and anchor discovery").

The matching is `eval.recovery.matched_scores` (exact by default; with `candidates` each latent is matched
among its `candidates` most similar latents of the other run only, a lower bound for large dictionaries,
where the full [L, L] assignment is slow).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from sdlkit.errors import ConfigError, ShapeError, check_matrix
from sdlkit.eval.recovery import matched_scores

__all__ = ["Consistency", "PairMatch", "consistency", "match_dictionaries", "pw_mcc"]


@dataclass
class PairMatch:
    """The one-to-one matching of dictionary A's latents to B's.

    scores [L_A] float64: |cos| of each latent of A with its partner in B (0 where unmatched, L_B < L_A);
    partner [L_A] long: the partner's index in B (-1 where unmatched); signs [L_A]: sign of that cosine
    (+1 where unmatched), to align a partner's direction with A's; pw_mcc: the mean over matched pairs.
    """

    scores: torch.Tensor
    partner: torch.Tensor
    signs: torch.Tensor
    pw_mcc: float

    def reversed(self, n_b: int) -> PairMatch:
        """The same matching seen from B (n_b = L_B latents): scores and partners indexed by B's latents."""
        matched = self.partner >= 0
        rows = self.partner[matched]
        scores = torch.zeros(n_b, dtype=self.scores.dtype, device=self.scores.device)
        partner = torch.full((n_b,), -1, dtype=torch.long, device=self.partner.device)
        signs = torch.ones(n_b, dtype=self.signs.dtype, device=self.signs.device)
        scores[rows] = self.scores[matched]
        partner[rows] = torch.arange(len(self.partner), device=self.partner.device)[matched]
        signs[rows] = self.signs[matched]
        return PairMatch(scores, partner, signs, self.pw_mcc)


def _check_candidates(candidates: int | None) -> None:
    if candidates is not None and (isinstance(candidates, bool) or not isinstance(candidates, int) or candidates < 1):
        raise ConfigError(f"candidates = {candidates!r} is not allowed: give a positive integer or None (exact)")


def _unit_columns(W: torch.Tensor) -> torch.Tensor:
    W = W.detach().to(torch.float64 if W.dtype == torch.float64 else torch.float32)
    return W / W.norm(dim=0, keepdim=True).clamp_min(1e-12)


@torch.no_grad()
def match_dictionaries(A: torch.Tensor, B: torch.Tensor, candidates: int | None = None) -> PairMatch:
    """Hungarian matching of the columns of A [d, L_A] to those of B [d, L_B] by |cos| (decoders W_D).

    candidates None: exact. An integer: each of A's latents may only be matched among its `candidates`
    nearest latents of B (a lower bound on PW-MCC, exact whenever the optimum uses only those)."""
    A, B = check_matrix("A", A), check_matrix("B", B)
    if A.shape[0] != B.shape[0]:
        raise ShapeError(f"the dictionaries write {A.shape[0]} and {B.shape[0]} dimensions: they must agree")
    if 0 in (A.shape[1], B.shape[1]):
        raise ShapeError("a dictionary has no latents to match")
    _check_candidates(candidates)
    k = B.shape[1] if candidates is None else candidates
    scores, partner = matched_scores(B.T, A, candidates_per_feature=k)
    matched = partner >= 0
    cosines = (_unit_columns(A)[:, matched] * _unit_columns(B)[:, partner[matched]].to(A.device)).sum(0)
    signs = torch.ones(A.shape[1], dtype=scores.dtype, device=scores.device)
    signs[matched] = torch.where(cosines < 0, -1.0, 1.0).to(scores.dtype)
    return PairMatch(scores, partner, signs, scores.sum().item() / min(A.shape[1], B.shape[1]))


def pw_mcc(A: torch.Tensor, B: torch.Tensor, candidates: int | None = None) -> float:
    """PW-MCC of two dictionaries' decoders A [d, L_A], B [d, L_B] (symmetric; 1 = same directions)."""
    return match_dictionaries(A, B, candidates).pw_mcc


@dataclass
class Consistency:
    """PW-MCC over a set of R dictionaries.

    matrix [R, R] float64: PW-MCC of every pair (1 on the diagonal); matches[(i, j)] (i != j): the
    `PairMatch` of run i's latents to run j's; latent_scores[i] [L_i]: each latent of run i, its matched
    |cos| averaged over the other runs (how reproducible that latent is)."""

    matrix: torch.Tensor
    matches: dict[tuple[int, int], PairMatch]
    latent_scores: list[torch.Tensor]

    def mean(self) -> float:
        """Mean PW-MCC over the distinct pairs (NaN for a single run)."""
        R = self.matrix.shape[0]
        if R < 2:
            return float("nan")
        upper = torch.triu_indices(R, R, offset=1)
        return self.matrix[upper[0], upper[1]].mean().item()


def consistency(decoders: Sequence[torch.Tensor], candidates: int | None = None) -> Consistency:
    """PW-MCC matrix, pairwise matches and per-latent scores of `decoders` (each W_D [d, L_r], same d).
    Each pair is matched once; the reverse direction is the same matching read from the other side."""
    R = len(decoders)
    if R < 1:
        raise ConfigError("consistency needs at least one dictionary")
    matrix = torch.eye(R, dtype=torch.float64)
    matches: dict[tuple[int, int], PairMatch] = {}
    for i in range(R):
        for j in range(i + 1, R):
            match = match_dictionaries(decoders[i], decoders[j], candidates)
            matches[(i, j)], matches[(j, i)] = match, match.reversed(decoders[j].shape[1])
            matrix[i, j] = matrix[j, i] = match.pw_mcc
    latent_scores = []
    for i in range(R):
        others = [matches[(i, j)].scores for j in range(R) if j != i]
        latent_scores.append(torch.stack(others).mean(0) if others else torch.ones(decoders[i].shape[1]))
    return Consistency(matrix, matches, latent_scores)
