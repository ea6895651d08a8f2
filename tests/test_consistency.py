"""PW-MCC (eval.consistency): against a direct Hungarian computation, and its invariances."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
from scipy.optimize import linear_sum_assignment

from sdlkit.errors import ConfigError, ShapeError
from sdlkit.eval import consistency as consistency_module
from sdlkit.eval.consistency import consistency, match_dictionaries, pw_mcc


def random_dictionary(d: int, L: int, seed: int) -> torch.Tensor:
    return torch.randn(d, L, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def direct_pw_mcc(A: torch.Tensor, B: torch.Tensor) -> float:
    """The definition, written out: |cos| matrix, scipy's Hungarian, mean over min(L_A, L_B) pairs."""
    a = (A / A.norm(dim=0)).numpy()
    b = (B / B.norm(dim=0)).numpy()
    sims = np.abs(a.T @ b)
    rows, cols = linear_sum_assignment(sims, maximize=True)
    return float(sims[rows, cols].sum() / min(A.shape[1], B.shape[1]))


def brute_force_pw_mcc(A: torch.Tensor, B: torch.Tensor) -> float:
    """Every permutation (square, tiny): the maximum mean |cos|."""
    sims = (A / A.norm(dim=0)).T @ (B / B.norm(dim=0))
    L = A.shape[1]
    return max(sims.abs()[range(L), list(p)].mean().item() for p in itertools.permutations(range(L)))


@pytest.mark.parametrize(("d", "L_A", "L_B", "seed"), [(6, 5, 5, 0), (8, 7, 10, 1), (8, 10, 7, 2), (3, 12, 12, 3)])
def test_pw_mcc_equals_a_direct_hungarian_computation(d, L_A, L_B, seed):
    A, B = random_dictionary(d, L_A, seed), random_dictionary(d, L_B, seed + 100)
    assert pw_mcc(A, B) == pytest.approx(direct_pw_mcc(A, B), abs=1e-12)
    assert pw_mcc(B, A) == pytest.approx(pw_mcc(A, B), abs=1e-12)  # symmetric


def test_pw_mcc_equals_brute_force_on_a_tiny_case():
    A, B = random_dictionary(4, 5, 7), random_dictionary(4, 5, 8)
    assert pw_mcc(A, B) == pytest.approx(brute_force_pw_mcc(A, B), abs=1e-12)


def test_pw_mcc_ignores_order_sign_and_scale():
    A = random_dictionary(10, 8, 0)
    gen = torch.Generator().manual_seed(1)
    perm = torch.randperm(8, generator=gen)
    signs = torch.where(torch.rand(8, generator=gen, dtype=torch.float64) < 0.5, -1.0, 1.0)
    scales = torch.rand(8, generator=gen, dtype=torch.float64) + 0.1
    B = A[:, perm] * signs * scales
    match = match_dictionaries(A, B)
    assert match.pw_mcc == pytest.approx(1.0, abs=1e-12)
    # every latent of A finds its own column again, with the sign it was given
    assert torch.equal(perm[match.partner], torch.arange(8))
    assert torch.equal(match.signs, signs[match.partner])
    C = random_dictionary(10, 8, 5)
    assert pw_mcc(C, B) == pytest.approx(pw_mcc(C, A), abs=1e-12)


def test_unmatched_latents_score_zero_and_the_reverse_match_is_consistent():
    A, B = random_dictionary(6, 9, 0), random_dictionary(6, 4, 1)
    match = match_dictionaries(A, B)
    assert (match.partner >= 0).sum() == 4 and (match.scores[match.partner < 0] == 0).all()
    back = match.reversed(4)
    assert torch.equal(back.partner[match.partner[match.partner >= 0]], torch.arange(9)[match.partner >= 0])
    assert back.scores.sum().item() == pytest.approx(match.scores.sum().item())


def test_candidates_give_a_lower_bound_that_is_exact_when_large_enough():
    A, B = random_dictionary(5, 30, 0), random_dictionary(5, 30, 1)
    exact = pw_mcc(A, B)
    assert pw_mcc(A, B, candidates=2) <= exact + 1e-12
    assert pw_mcc(A, B, candidates=30) == pytest.approx(exact, abs=1e-12)


def test_candidate_matching_is_the_best_matching_over_the_candidate_pairs(monkeypatch):
    """The bounded matching against scipy's Hungarian on the dense |cos| matrix with every pair that is not a
    candidate (among a latent's k nearest, either way) set to 0, which is as good as unmatched; the candidate
    search in blocks of 3 latents finds the same pairs as in one block."""
    L_A, L_B, k = 23, 17, 3
    A, B = random_dictionary(6, L_A, 0), random_dictionary(6, L_B, 1)
    sims = ((A / A.norm(dim=0)).T @ (B / B.norm(dim=0))).abs()
    candidate = torch.zeros(L_A, L_B, dtype=torch.bool)
    candidate.scatter_(1, sims.topk(k, dim=1).indices, True)  # each latent of A: its k nearest of B
    candidate.scatter_(0, sims.topk(k, dim=0).indices, True)  # each latent of B: its k nearest of A
    masked = torch.where(candidate, sims, 0.0).numpy()
    rows, cols = linear_sum_assignment(masked, maximize=True)
    whole = match_dictionaries(A, B, candidates=k)
    assert whole.pw_mcc == pytest.approx(masked[rows, cols].sum() / L_B, abs=1e-12)
    assert whole.pw_mcc < pw_mcc(A, B)  # here the optimum needs a pair outside the candidates
    matched = whole.partner >= 0
    assert candidate[torch.arange(L_A)[matched], whole.partner[matched]].all()
    assert torch.equal(whole.scores[matched], sims[torch.arange(L_A)[matched], whole.partner[matched]])
    monkeypatch.setattr(consistency_module, "BLOCK_ENTRIES", 3 * L_B)
    blocked = match_dictionaries(A, B, candidates=k)
    assert torch.equal(blocked.partner, whole.partner) and torch.equal(blocked.scores, whole.scores)


def test_candidates_find_the_exact_matching_of_a_permuted_noisy_copy():
    A = random_dictionary(16, 40, 0)
    perm = torch.randperm(40, generator=torch.Generator().manual_seed(1))
    B = A[:, perm] + 0.1 * random_dictionary(16, 40, 2)
    exact, bounded = match_dictionaries(A, B), match_dictionaries(A, B, candidates=2)
    assert torch.equal(bounded.partner, exact.partner) and torch.equal(perm[exact.partner], torch.arange(40))
    assert bounded.pw_mcc == pytest.approx(exact.pw_mcc, abs=1e-12)
    assert torch.equal(bounded.signs, exact.signs)


def test_exact_matching_above_the_limit_is_refused_naming_the_bounded_option(monkeypatch):
    monkeypatch.setattr(consistency_module, "EXACT_LIMIT", 20 * 20)
    A, B = random_dictionary(4, 21, 0), random_dictionary(4, 20, 1)
    with pytest.raises(ConfigError) as refused:
        pw_mcc(A, B)
    assert str(refused.value) == (
        "exact matching of 21 x 20 latents needs a 3.4 KB cost matrix and time cubic in the width (above 400 pairs "
        "it is refused): pass --candidates K (e.g. 8; candidates=K in Python) to match each latent among its K "
        "most similar, a lower bound on PW-MCC"
    )
    assert pw_mcc(A, B, candidates=20) == pytest.approx(direct_pw_mcc(A, B), abs=1e-12)
    assert pw_mcc(A[:, :20], B) == pytest.approx(direct_pw_mcc(A[:, :20], B), abs=1e-12)  # at the limit: exact


def test_consistency_matrix_and_latent_scores():
    base = random_dictionary(12, 6, 0)
    noisy = [base + 0.05 * random_dictionary(12, 6, s) for s in (1, 2)]
    decoders = [base, *noisy, random_dictionary(12, 6, 9)]
    result = consistency(decoders)
    assert result.matrix.shape == (4, 4) and torch.equal(result.matrix, result.matrix.T)
    assert torch.allclose(result.matrix.diagonal(), torch.ones(4, dtype=torch.float64))
    for i, j in itertools.combinations(range(4), 2):
        assert result.matrix[i, j].item() == pytest.approx(direct_pw_mcc(decoders[i], decoders[j]), abs=1e-12)
    assert result.matrix[0, 1] > 0.99 and result.matrix[0, 3] < 0.9
    expected = torch.stack([result.matches[(0, j)].scores for j in (1, 2, 3)]).mean(0)
    assert torch.allclose(result.latent_scores[0], expected)
    upper = [result.matrix[i, j].item() for i, j in itertools.combinations(range(4), 2)]
    assert result.mean() == pytest.approx(float(np.mean(upper)))


def test_bad_inputs_are_named():
    with pytest.raises(ShapeError, match="must agree"):
        pw_mcc(torch.randn(4, 3), torch.randn(5, 3))
    with pytest.raises(ConfigError, match="candidates"):
        pw_mcc(torch.randn(4, 3), torch.randn(4, 3), candidates=0)
    with pytest.raises(ConfigError, match="at least one"):
        consistency([])
