"""Ground-truth recovery metrics against independent brute force (numpy / full scipy Hungarian)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.optimize import linear_sum_assignment

from sdlkit.core.model import ModelConfig, SparseDictionary
from sdlkit.errors import ConfigError, ShapeError
from sdlkit.eval.recovery import (
    best_match,
    dictionary_recovery,
    gt_recovery,
    matched_recovery,
    matched_scores,
    max_inner_product,
    recovery_curve,
)


def brute_similarity(learned: torch.Tensor, truth: torch.Tensor) -> np.ndarray:
    """|cos| [n_q, n] in float64 numpy, zero rows/columns giving 0."""
    L = learned.double().numpy()
    T = truth.double().numpy()
    ln = np.linalg.norm(L, axis=1, keepdims=True)
    tn = np.linalg.norm(T, axis=0, keepdims=True)
    L = np.divide(L, ln, out=np.zeros_like(L), where=ln > 0)
    T = np.divide(T, tn, out=np.zeros_like(T), where=tn > 0)
    return np.abs(L @ T)


def unit_columns(*shape: int, generator: torch.Generator) -> torch.Tensor:
    W = torch.randn(*shape, generator=generator, dtype=torch.float64)
    return W / W.norm(dim=0, keepdim=True)


def make_model(n_in: int, n_latents: int, n_out: int | None = None, **cfg) -> SparseDictionary:
    return SparseDictionary(ModelConfig(n_in=n_in, n_out=n_out, n_latents=n_latents, method="relu", **cfg))


def set_weights(model: SparseDictionary, W_E: torch.Tensor, W_D: torch.Tensor) -> None:
    with torch.no_grad():
        model.W_E.copy_(W_E)
        model.W_D.copy_(W_D)


# ----- best_match --------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("chunk_size", [1, 5, 7, 37, 4096])
def test_best_match_equals_brute_force(dtype, chunk_size):
    g = torch.Generator().manual_seed(0)
    learned = torch.randn(37, 9, generator=g, dtype=dtype)
    learned[4] = 0.0  # a zero row: similarity 0, never NaN
    learned[10] *= 1e3  # scale must not matter
    truth = torch.randn(9, 13, generator=g, dtype=dtype)
    truth[:, 6] = 0.0  # a zero feature column scores 0
    S = brute_similarity(learned, truth)
    s, j = best_match(learned, truth, chunk_size=chunk_size)
    assert s.dtype == dtype and j.dtype == torch.long and s.shape == j.shape == (13,)
    assert not torch.isnan(s).any()
    tol = 1e-12 if dtype == torch.float64 else 1e-5
    np.testing.assert_allclose(s.numpy(), S.max(axis=0), atol=tol)
    np.testing.assert_allclose(S[j.numpy(), np.arange(13)], S.max(axis=0), atol=tol)
    assert s[6] == 0.0


def test_best_match_mixed_and_half_dtypes_and_zero_learned():
    g = torch.Generator().manual_seed(1)
    learned = torch.randn(20, 6, generator=g)
    truth = torch.randn(6, 4, generator=g, dtype=torch.float64)
    s, _ = best_match(learned, truth, chunk_size=3)
    assert s.dtype == torch.float64  # float64 as soon as one input is
    np.testing.assert_allclose(s.numpy(), brute_similarity(learned, truth).max(axis=0), atol=1e-12)
    s16, _ = best_match(learned.bfloat16(), truth.float())
    assert s16.dtype == torch.float32
    s0, j0 = best_match(torch.zeros(5, 6), truth)
    assert torch.equal(s0, torch.zeros(4, dtype=torch.float64)) and (j0 >= 0).all()


def test_best_match_rejects_bad_input():
    ok = torch.randn(4, 3)
    with pytest.raises(ShapeError, match="widths must agree"):
        best_match(ok, torch.randn(5, 2))
    with pytest.raises(ShapeError, match="2-D"):
        best_match(torch.randn(3), torch.randn(3, 2))
    with pytest.raises(ShapeError, match="floating-point"):
        best_match(ok, torch.ones(3, 2, dtype=torch.long))
    with pytest.raises(ShapeError, match="no rows"):
        best_match(torch.randn(0, 3), torch.randn(3, 2))
    with pytest.raises(ShapeError, match="NaN"):
        best_match(torch.full((4, 3), float("nan")), torch.randn(3, 2))
    with pytest.raises(ConfigError, match="chunk_size"):
        best_match(ok, torch.randn(3, 2), chunk_size=0)


def test_best_match_bench_size():
    """n_q = 16,384, n = 1,000, d = 768 (the bench) in float32 chunks; spot-check 40 features."""
    g = torch.Generator().manual_seed(2)
    learned = torch.randn(16384, 768, generator=g)
    truth = torch.randn(768, 1000, generator=g)
    learned[12345] = truth[:, 17]  # one exact hit, found in the last (partial) chunk
    s, j = best_match(learned, truth)
    assert j[17] == 12345 and abs(s[17].item() - 1.0) < 1e-5
    cols = torch.arange(0, 1000, 25)
    exact = brute_similarity(learned, truth[:, cols]).max(axis=0)
    np.testing.assert_allclose(s[cols].numpy(), exact, atol=1e-5)


# ----- M_GT, M_IP, the curve ---------------------------------------------------------------------
def test_gt_recovery_and_max_inner_product_by_hand():
    best = torch.tensor([0.99, 0.96, 0.95, 0.5, 0.2, 1.0])
    assert gt_recovery(best) == pytest.approx(3 / 6)  # 0.95 itself is not > 0.95
    assert gt_recovery(best, tau=0.9) == pytest.approx(4 / 6)
    assert gt_recovery(best, tau=0.3) == pytest.approx(5 / 6)
    assert gt_recovery(best, tau=1.0) == 0.0  # allowed; nothing exceeds 1
    assert max_inner_product(best) == pytest.approx((0.99 + 0.96 + 0.95 + 0.5 + 0.2 + 1.0) / 6, abs=1e-7)
    for tau in (0, 0.0, -0.1, 1.5, float("nan")):
        with pytest.raises(ConfigError, match=r"tau = .* is not allowed: it must be in \(0, 1\]"):
            gt_recovery(best, tau=tau)
    with pytest.raises(ShapeError):
        gt_recovery(best[None, :])
    assert np.isnan(gt_recovery(torch.empty(0))) and np.isnan(max_inner_product(torch.empty(0)))


def test_recovery_curve_matches_per_tau_definition():
    g = torch.Generator().manual_seed(3)
    best = torch.rand(257, generator=g)
    best[:5] = torch.tensor([0.0, 0.5, 0.95, 1.0, 0.25])  # values on the default grid: ties count as not above
    taus, share = recovery_curve(best)
    assert taus.shape == share.shape == (101,)
    assert taus[0] == 0.0 and taus[-1] == 1.0
    expected = [(best.double() > t).double().mean().item() for t in taus.tolist()]
    np.testing.assert_allclose(share.numpy(), expected, atol=0)
    assert (share.diff() <= 0).all()
    assert share[95].item() == pytest.approx(gt_recovery(best, 0.95))
    custom = torch.tensor([0.9, 0.1, 0.5, 0.95])
    _, share_c = recovery_curve(best, custom)
    np.testing.assert_allclose(share_c.numpy(), [(best.double() > t).double().mean().item() for t in custom.tolist()])


# ----- one-to-one matching -------------------------------------------------------------------------
def full_hungarian(learned: torch.Tensor, truth: torch.Tensor) -> np.ndarray:
    """Per-feature |cos| of the optimal full assignment (0 for features left unmatched)."""
    S = brute_similarity(learned, truth)
    rows, cols = linear_sum_assignment(S, maximize=True)
    out = np.zeros(S.shape[1])
    out[cols] = S[rows, cols]
    return out


@pytest.mark.parametrize("seed", range(4))
def test_matched_equals_full_hungarian_with_enough_candidates(seed):
    g = torch.Generator().manual_seed(seed)
    truth = torch.randn(10, 15, generator=g, dtype=torch.float64)
    learned = torch.randn(40, 10, generator=g, dtype=torch.float64)
    learned[:8] = truth[:, :8].T + 0.3 * torch.randn(8, 10, generator=g, dtype=torch.float64)
    full = full_hungarian(learned, truth)
    for k in (15, 40):  # k >= n guarantees exactness
        s, j = matched_scores(learned, truth, candidates_per_feature=k, chunk_size=7)
        assert s.sum().item() == pytest.approx(full.sum(), abs=1e-10)
        assert len(set(j.tolist())) == 15  # one-to-one
        r = matched_recovery(learned, truth, tau=0.9, candidates_per_feature=k)
        assert r["matched_max_inner_product"] == pytest.approx(full.mean(), abs=1e-12)
        assert r["matched_gt_recovery"] == pytest.approx((full > 0.9).mean())
    for k in (1, 2, 3):  # fewer candidates: never above the full optimum
        s, _ = matched_scores(learned, truth, candidates_per_feature=k)
        assert s.sum().item() <= full.sum() + 1e-10


def test_matched_with_fewer_latents_than_features():
    g = torch.Generator().manual_seed(5)
    truth = torch.randn(6, 8, generator=g, dtype=torch.float64)
    learned = torch.randn(5, 6, generator=g, dtype=torch.float64)
    s, j = matched_scores(learned, truth, candidates_per_feature=8)
    full = full_hungarian(learned, truth)
    np.testing.assert_allclose(np.sort(s.numpy()), np.sort(full), atol=1e-12)
    assert (j == -1).sum() == 3 and (s[j == -1] == 0).all()
    assert matched_recovery(learned, truth, candidates_per_feature=8)["matched_max_inner_product"] == pytest.approx(
        full.sum() / 8
    )


def test_matching_cannot_count_one_latent_twice():
    # two nearly parallel features, one latent along both: best match recovers both, matching only one
    e1, e2 = torch.eye(4, dtype=torch.float64)[:2]
    truth = torch.stack([e1, e1 + 0.01 * e2], dim=1)
    learned = torch.stack([e1 + 0.005 * e2, torch.eye(4, dtype=torch.float64)[3]])  # + an unrelated latent
    best, idx = best_match(learned, truth)
    assert gt_recovery(best) == 1.0 and idx.tolist() == [0, 0]
    m = matched_recovery(learned, truth)
    assert m["matched_gt_recovery"] == 0.5
    assert m["matched_max_inner_product"] == pytest.approx(best.max().item() / 2, abs=1e-6)


def test_matched_rejects_bad_candidates():
    with pytest.raises(ConfigError, match="candidates_per_feature"):
        matched_recovery(torch.randn(4, 3), torch.randn(3, 2), candidates_per_feature=0)
    with pytest.raises(ConfigError, match="tau"):
        matched_recovery(torch.randn(4, 3), torch.randn(3, 2), tau=2.0)


# ----- dictionary_recovery --------------------------------------------------------------------------
def perfect_sae(n_in=16, n=12, n_latents=30, seed=0):
    """W_E rows = W_p columns (scaled, permuted, among random extra latents), W_D = W_E.T."""
    g = torch.Generator().manual_seed(seed)
    W_p = unit_columns(n_in, n, generator=g)
    W_E = torch.randn(n_latents, n_in, generator=g, dtype=torch.float64)
    slots = torch.randperm(n_latents, generator=g)[:n]
    W_E[slots] = W_p.T * torch.linspace(0.5, 3.0, n, dtype=torch.float64)[:, None]
    model = make_model(n_in, n_latents)
    set_weights(model, W_E, W_E.T / W_E.norm(dim=1))
    return model, W_p, slots


def test_perfect_dictionary_scores_one():
    model, W_p, _ = perfect_sae()
    assert model.W_E.requires_grad
    r = dictionary_recovery(model, W_p, W_p)
    assert set(r) == {"gt_recovery", "max_inner_product", "gt_recovery_decoder", "max_inner_product_decoder"}
    assert all(isinstance(v, float) for v in r.values())
    assert r["gt_recovery"] == 1.0 and r["gt_recovery_decoder"] == 1.0
    assert r["max_inner_product"] == pytest.approx(1.0, abs=1e-6)
    assert r["max_inner_product_decoder"] == pytest.approx(1.0, abs=1e-6)
    # the paper's sanity check: W_E = W_pᵀ (n_latents = n) scores 1
    exact = make_model(16, 12)
    set_weights(exact, W_p.T, W_p)
    assert dictionary_recovery(exact, W_p, W_p)["max_inner_product"] == pytest.approx(1.0, abs=1e-6)


def test_excluded_features_leave_every_average():
    g = torch.Generator().manual_seed(7)
    n_in, n, n_latents = 64, 10, 20
    W_p = unit_columns(n_in, n, generator=g)
    # recovers only features 0, 1, 2 (the "anchors"); the other latents are random
    W_E = torch.randn(n_latents, n_in, generator=g, dtype=torch.float64)
    W_E[:3] = W_p[:, :3].T
    model = make_model(n_in, n_latents)
    set_weights(model, W_E, W_E.T / W_E.norm(dim=1))
    assert dictionary_recovery(model, W_p, W_p)["gt_recovery"] == pytest.approx(0.3)
    r = dictionary_recovery(model, W_p, W_p, exclude=[0, 1, 2])
    assert r["gt_recovery"] == 0.0 and r["gt_recovery_decoder"] == 0.0
    best, _ = best_match(model.W_E.detach(), W_p[:, 3:].float())
    assert r["max_inner_product"] == pytest.approx(best.mean().item(), abs=1e-6)
    # recovers everything except features 3 and 7: excluding exactly those gives 1.0
    W_E = torch.randn(n_latents, n_in, generator=g, dtype=torch.float64)
    fine = [i for i in range(n) if i not in (3, 7)]
    W_E[fine] = W_p[:, fine].T
    set_weights(model, W_E, W_E.T / W_E.norm(dim=1))
    assert dictionary_recovery(model, W_p, W_p)["gt_recovery"] == pytest.approx(0.8)
    for exclude in ([3, 7], torch.tensor([7, 3]), (3, 7, 7)):
        r = dictionary_recovery(model, W_p, W_p, exclude=exclude)
        assert r["gt_recovery"] == 1.0 and r["max_inner_product"] == pytest.approx(1.0, abs=1e-6)
    with pytest.raises(ConfigError, match="exclude index 10"):
        dictionary_recovery(model, W_p, W_p, exclude=[1, 10])
    with pytest.raises(ConfigError, match="exclude index -1"):
        dictionary_recovery(model, W_p, W_p, exclude=[-1])
    with pytest.raises(ConfigError, match="none are left"):
        dictionary_recovery(model, W_p, W_p, exclude=range(n))


def test_encoder_and_decoder_are_scored_separately():
    g = torch.Generator().manual_seed(8)
    n_in, n, n_latents = 64, 12, 24
    W_p = unit_columns(n_in, n, generator=g)
    W_E = torch.randn(n_latents, n_in, generator=g, dtype=torch.float64)
    W_E[:n] = W_p.T
    model = make_model(n_in, n_latents)
    set_weights(model, W_E, unit_columns(n_in, n_latents, generator=g))  # random decoder
    r = dictionary_recovery(model, W_p, W_p)
    assert r["gt_recovery"] == 1.0
    assert r["gt_recovery_decoder"] == 0.0 and r["max_inner_product_decoder"] < 0.6
    set_weights(model, torch.randn(n_latents, n_in, generator=g, dtype=torch.float64), W_E.T)  # swapped
    r = dictionary_recovery(model, W_p, W_p)
    assert r["gt_recovery"] == 0.0 and r["gt_recovery_decoder"] == 1.0


def test_transcoder_uses_W_r_for_the_decoder_and_checks_shapes():
    g = torch.Generator().manual_seed(9)
    n_in, n_out, n, n_latents = 8, 11, 6, 15
    W_p = unit_columns(n_in, n, generator=g)
    W_r = unit_columns(n_out, n, generator=g)
    W_E = torch.randn(n_latents, n_in, generator=g, dtype=torch.float64)
    W_D = torch.randn(n_out, n_latents, generator=g, dtype=torch.float64)
    W_E[5 : 5 + n] = W_p.T
    W_D[:, 5 : 5 + n] = W_r * 2.0
    model = make_model(n_in, n_latents, n_out)
    set_weights(model, W_E, W_D)
    r = dictionary_recovery(model, W_p, W_r)
    assert r["gt_recovery"] == 1.0 and r["gt_recovery_decoder"] == 1.0
    assert "gt_recovery_source_0" not in r
    with pytest.raises(ShapeError, match=r"W_p has shape \(11, 6\).*n_in = 8"):
        dictionary_recovery(model, W_r, W_r)
    with pytest.raises(ShapeError, match=r"W_r has shape \(8, 6\).*n_out = 11"):
        dictionary_recovery(model, W_p, W_p)
    with pytest.raises(ShapeError, match="6 features but W_r has 5"):
        dictionary_recovery(model, W_p, W_r[:, :5])
    with pytest.raises(ShapeError, match="2-D"):
        dictionary_recovery(model, W_p[:, 0], W_r)
    with pytest.raises(ConfigError, match="tau"):
        dictionary_recovery(model, W_p, W_r, tau=0)


def test_crosscoder_gets_per_source_fields():
    g = torch.Generator().manual_seed(10)
    blocks, n, n_latents = [5, 7], 6, 14
    W_p = torch.cat([unit_columns(b, n, generator=g) for b in blocks])  # [12, n]
    W_E = torch.randn(n_latents, 12, generator=g, dtype=torch.float64)
    W_E[:n, :5] = W_p[:5].T  # source 0 read exactly; source 1 random
    W_D = torch.randn(12, n_latents, generator=g, dtype=torch.float64)
    W_D[5:, :n] = W_p[5:]  # source 1 written exactly; source 0 random
    model = make_model(12, n_latents, in_blocks=blocks, out_blocks=blocks)
    set_weights(model, W_E, W_D)
    r = dictionary_recovery(model, W_p, W_p, matched=True)
    assert r["gt_recovery_source_0"] == 1.0 and r["gt_recovery_source_1_decoder"] == 1.0
    for key, learned, truth in (
        ("source_0", W_E[:, :5], W_p[:5]),
        ("source_1", W_E[:, 5:], W_p[5:]),
        ("source_0_decoder", W_D[:5].T, W_p[:5]),
        ("source_1_decoder", W_D[5:].T, W_p[5:]),
        ("decoder", W_D.T, W_p),
        ("", W_E, W_p),
    ):
        suffix = f"_{key}" if key else ""
        exact = brute_similarity(learned.float(), truth.float()).max(axis=0)
        assert r[f"max_inner_product{suffix}"] == pytest.approx(exact.mean(), abs=1e-5)
        assert r[f"gt_recovery{suffix}"] == pytest.approx((exact > 0.95).mean())
    assert r["gt_recovery_source_1"] < 1.0 and r["gt_recovery_source_0_decoder"] < 1.0
    for suffix, learned in (("", W_E), ("_decoder", W_D.T)):
        full = full_hungarian(learned.float(), W_p.float())
        assert r[f"matched_max_inner_product{suffix}"] == pytest.approx(full.mean(), abs=1e-5)


def test_matched_fields_and_bfloat16_model():
    model, W_p, _ = perfect_sae(seed=11)
    r = dictionary_recovery(model, W_p, W_p, exclude=[0], matched=True)
    direct = matched_recovery(model.W_E.detach(), W_p[:, 1:])
    assert r["matched_gt_recovery"] == direct["matched_gt_recovery"] == 1.0
    assert r["matched_max_inner_product"] == pytest.approx(direct["matched_max_inner_product"])
    assert r["matched_gt_recovery_decoder"] == 1.0
    bf16 = make_model(16, 30, dtype="bfloat16")
    set_weights(bf16, model.W_E.detach(), model.W_D.detach())
    assert dictionary_recovery(bf16, W_p, W_p)["gt_recovery"] == 1.0
