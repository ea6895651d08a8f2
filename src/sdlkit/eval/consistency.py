"""Cross-seed consistency of dictionaries: PW-MCC (Song, Muhamed et al. 2025).

Two dictionaries trained on the same data with different seeds are compared by their decoder columns:
unit-normalise them, match the latents one-to-one so that the total |cos| is largest (Hungarian), average:

    PW-MCC(A, B) = (1 / min(L_A, L_B)) · max_π Σ_l |cos(a_l, b_π(l))|      A [d, L_A], B [d, L_B]

1 means both runs wrote the same directions (up to order and sign). It needs no ground truth, so it is
what a user can measure on real activations; on the bench, how well it predicts ground-truth recovery is
measured in benchmarks/README.md ("Cross-seed consistency and anchor discovery").

Exact matching (the default) is `eval.recovery.matched_scores` on the whole [L_A, L_B] cosine matrix: memory
L_A·L_B and time about cubic in the width, so above EXACT_LIMIT it is refused, naming the bounded option.
With `candidates` K, each latent may only be matched to one of its K most similar latents of the other run
(or to one of those whose K most similar it is): the similarities are computed in blocks of rows, only the
K best of each row and column are kept, and the assignment is solved on that sparse graph, so memory is
O((L_A + L_B)·K) plus one block, and the result is a lower bound on the exact PW-MCC (equal to it when the
optimum uses only candidate pairs, e.g. K >= min(L_A, L_B)).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from scipy.sparse import csr_matrix
from scipy.sparse.csgraph import min_weight_full_bipartite_matching

from sdlkit.core.model import BLOCK_ENTRIES, format_size
from sdlkit.errors import ConfigError, ShapeError, check_matrix
from sdlkit.eval.recovery import matched_scores

__all__ = ["EXACT_LIMIT", "Consistency", "PairMatch", "consistency", "match_dictionaries", "pw_mcc"]

EXACT_LIMIT = 16384 * 16384
"""Largest L_A·L_B matched exactly: the [L_A, L_B] float64 cost matrix then holds 2.1 GB, and the Hungarian
method's time grows steeply with the width (O(n³) at worst; benchmarks/README.md, "65,536 latents: the tools'
memory and time")."""


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

    candidates None: exact (refused above EXACT_LIMIT pairs). An integer K: a latent may only be matched to one
    of its K nearest latents of the other dictionary, or to one whose K nearest it is (a lower bound on PW-MCC,
    exact whenever the optimum uses only those pairs), in memory O((L_A + L_B)·K) (the module docstring)."""
    A, B = check_matrix("A", A), check_matrix("B", B)
    if A.shape[0] != B.shape[0]:
        raise ShapeError(f"the dictionaries write {A.shape[0]} and {B.shape[0]} dimensions: they must agree")
    if 0 in (A.shape[1], B.shape[1]):
        raise ShapeError("a dictionary has no latents to match")
    _check_candidates(candidates)
    if candidates is not None:
        scores, partner = _candidate_matching(_unit_columns(A), _unit_columns(B).to(A.device), candidates)
    else:
        _check_exact(A.shape[1], B.shape[1])
        scores, partner = matched_scores(B.T, A, candidates_per_feature=B.shape[1])
    matched = partner >= 0
    cosines = (_unit_columns(A)[:, matched] * _unit_columns(B)[:, partner[matched]].to(A.device)).sum(0)
    signs = torch.ones(A.shape[1], dtype=scores.dtype, device=scores.device)
    signs[matched] = torch.where(cosines < 0, -1.0, 1.0).to(scores.dtype)
    return PairMatch(scores, partner, signs, scores.sum().item() / min(A.shape[1], B.shape[1]))


def _check_exact(n_a: int, n_b: int) -> None:
    """ConfigError naming the bounded option when an exact matching of n_a x n_b latents exceeds EXACT_LIMIT."""
    if n_a * n_b > EXACT_LIMIT:
        raise ConfigError(
            f"exact matching of {n_a:,} x {n_b:,} latents needs a {format_size(8 * n_a * n_b)} cost matrix and time "
            f"cubic in the width (above {EXACT_LIMIT:,} pairs it is refused): pass --candidates K (e.g. 8; "
            "candidates=K in Python) to match each latent among its K most similar, a lower bound on PW-MCC"
        )


def _candidate_edges(A: torch.Tensor, B: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The candidate pairs of unit columns A [d, L_A], B [d, L_B]: each latent of A with its k most similar of
    B, and each of B with its k most similar of A, as (row in A, column in B, |cos|), each [edges], no repeats,
    sorted by (row, column). |cos| is computed in blocks of A's latents, [block, L_B] at a time, with a running
    top-k per column; the outputs are allocated once (per-block allocations left the heap fragmented)."""
    n_a, n_b = A.shape[1], B.shape[1]
    k_row, k_col = min(k, n_b), min(k, n_a)
    row_values = torch.empty(n_a, k_row, dtype=A.dtype, device=A.device)
    row_cols = torch.empty(n_a, k_row, dtype=torch.long, device=A.device)
    col_values = torch.full((n_b, k_col), -1.0, dtype=A.dtype, device=A.device)  # below any |cos|
    col_rows = torch.zeros(n_b, k_col, dtype=torch.long, device=A.device)
    step = max(1, BLOCK_ENTRIES // n_b)
    for lo in range(0, n_a, step):
        sims = (A[:, lo : lo + step].T @ B).abs_()  # [c, L_B]
        torch.topk(sims, k_row, dim=1, out=(row_values[lo : lo + step], row_cols[lo : lo + step]))
        block = sims.T.contiguous().topk(min(k_col, len(sims)), dim=1)  # this block's best rows per column
        merged = torch.cat([col_values, block.values], dim=1).topk(k_col, dim=1)
        col_rows.copy_(torch.cat([col_rows, block.indices + lo], dim=1).gather(1, merged.indices))
        col_values.copy_(merged.values)
    row = torch.cat([torch.arange(n_a, device=A.device).repeat_interleave(k_row), col_rows.flatten()])
    col = torch.cat([row_cols.flatten(), torch.arange(n_b, device=A.device).repeat_interleave(k_col)])
    value = torch.cat([row_values.flatten(), col_values.flatten()])
    _, first = np.unique((row * n_b + col).cpu().numpy(), return_index=True)
    keep = torch.as_tensor(first, device=A.device)
    return row[keep], col[keep], value[keep]


def _candidate_matching(A: torch.Tensor, B: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """One-to-one matching of unit columns A [d, L_A] to B [d, L_B] maximising the total |cos| over the candidate
    pairs only (`_candidate_edges`): (scores [L_A] float64, partner [L_A] long; 0 and -1 where unmatched).
    Solved as a minimum-cost full matching on a sparse graph (cost 2 − |cos| per pair), where every latent of A
    also has its own 'unmatched' column of cost 2 (|cos| 0), so a full matching always exists."""
    n_a, n_b = A.shape[1], B.shape[1]
    row, col, value = (t.cpu() for t in _candidate_edges(A, B, k))
    cost = np.concatenate([2.0 - value.to(torch.float64).numpy(), np.full(n_a, 2.0)])
    graph = csr_matrix(
        (cost, (np.concatenate([row.numpy(), np.arange(n_a)]), np.concatenate([col.numpy(), n_b + np.arange(n_a)]))),
        shape=(n_a, n_b + n_a),
    )
    matched_row, matched_col = min_weight_full_bipartite_matching(graph)
    real = matched_col < n_b
    a, b = torch.as_tensor(matched_row[real], dtype=torch.long), torch.as_tensor(matched_col[real], dtype=torch.long)
    edge = torch.searchsorted(row * n_b + col, a * n_b + b)  # the edges come sorted by (row, column)
    partner = torch.full((n_a,), -1, dtype=torch.long)
    scores = torch.zeros(n_a, dtype=torch.float64)
    partner[a], scores[a] = b, value[edge].to(torch.float64)
    return scores.to(A.device), partner.to(A.device)


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
