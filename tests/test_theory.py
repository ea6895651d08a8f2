"""The paper's theory (Sec. 3) as code: every construction checked, and checked to FAIL when perturbed."""

from __future__ import annotations

import pytest
import torch

from sdlkit.data.lrb import LRBConfig, LRBSource
from sdlkit.data.lrb.features import make_feature_matrix
from sdlkit.errors import ConfigError
from sdlkit.eval.recovery import best_match, gt_recovery
from sdlkit.methods import method_config
from sdlkit.methods.topk import TopK
from sdlkit.paper.theory import (
    absorption_configuration,
    activation_pattern,
    approx_loss,
    classify,
    descend,
    exact_loss,
    example_3_5,
    feature_moments,
    feature_moments_from,
    grad_norm,
    loss_and_grads,
    loss_gap_bound,
    pattern_from_partition,
    random_partition,
    realise_preactivations,
    recovering_configuration,
    spurious_minimum,
    sup_residual,
    thm33_bounds,
    threshold_sigma,
    zero_loss_non_identifiable,
)

F64 = torch.float64
relu = torch.relu


@pytest.fixture(autouse=True)
def _one_thread():
    """Tiny linear algebra: a second thread only adds contention (10x slower on a busy 2-core box)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def unit_columns(rows: int, cols: int, gen: torch.Generator) -> torch.Tensor:
    return torch.nn.functional.normalize(torch.randn(rows, cols, generator=gen, dtype=F64), dim=0)


# ----- M_d and L̃ ---------------------------------------------------------------------------------
def test_feature_moments_match_monte_carlo():
    cfg = LRBConfig(n_features=4, n_p=8, S=0.7, M=0.5, c_min=0.5, beta=0.5, seed=3)
    codes = LRBSource(cfg, dtype=F64).codes(0, 200_000)
    only = (codes > 0).sum(dim=1) == 1
    estimate = (codes.pow(2) * only[:, None]).mean(dim=0)
    M = feature_moments_from(cfg)
    assert M.shape == (4,) and M.dtype == F64
    assert torch.allclose(M, feature_moments(0.7, 0.5, 0.5, 4))
    assert torch.allclose(estimate, M, rtol=0.05)
    # a wrong formula (dropping S^(n−1), the "no other feature active" factor) is far off
    assert not torch.allclose(estimate, torch.full_like(M, 0.3 * 1.25), rtol=0.05)
    with pytest.raises(ConfigError):
        feature_moments(1.0, 0.5, 0.5, 4)


@pytest.mark.parametrize("sigma", [relu, TopK(2), method_config("relu").build_activation(6)], ids=["fn", "topk", "mod"])
def test_approx_loss_matches_loop_over_features(sigma):
    gen = torch.Generator().manual_seed(0)
    n, n_p, n_r, n_q = 5, 7, 4, 6
    W_p, W_r = unit_columns(n_p, n, gen), unit_columns(n_r, n, gen)
    W_E, W_D = torch.randn(n_q, n_p, generator=gen, dtype=F64), torch.randn(n_r, n_q, generator=gen, dtype=F64)
    M = torch.rand(n, generator=gen, dtype=F64)
    loop = sum(M[d] * (W_r[:, d] - W_D @ sigma((W_E @ W_p[:, d])[None, :])[0]).pow(2).sum() for d in range(n))
    assert torch.allclose(approx_loss(W_E, W_D, W_p, W_r, M, sigma), loop, rtol=1e-12, atol=0)
    assert not torch.allclose(approx_loss(W_E, W_D, W_p, W_r, 2 * M, sigma), loop)


# ----- Thm 3.1 -----------------------------------------------------------------------------------
@pytest.mark.parametrize("S", [0.9, 0.95, 0.99])
def test_thm31_loss_gap_within_bound(S):
    n = 8
    cfg = LRBConfig(n_features=n, n_p=16, S=S, M=0.3, seed=1)
    source = LRBSource(cfg, dtype=F64)
    W_p = W_r = source.W_p
    gen = torch.Generator().manual_seed(0)
    W_E, W_D = 0.3 * torch.randn(12, 16, generator=gen, dtype=F64), 0.3 * torch.randn(16, 12, generator=gen, dtype=F64)
    codes = source.codes(0, 100_000)
    M = feature_moments_from(cfg)
    L = exact_loss(W_E, W_D, codes, W_p, W_r, relu).item()
    L_tilde = approx_loss(W_E, W_D, W_p, W_r, M, relu).item()
    C = sup_residual(W_E, W_D, codes, W_p, W_r, relu).item()
    bound = loss_gap_bound(n, S, C)
    print(f"S={S}: L={L:.4f} L~={L_tilde:.4f} gap={L - L_tilde:.4f} bound n²C(1-S)²={bound:.4f} (C={C:.1f})")
    assert (1 - S) * n <= 1 and abs(L - L_tilde) <= bound
    # the proof's first step: the single-active part of L IS L̃ (ReLU is positively homogeneous)
    x_p = codes @ W_p.T
    per_sample = (codes @ W_r.T - relu(x_p @ W_E.T) @ W_D.T).pow(2).sum(dim=1)
    single = per_sample * ((codes > 0).sum(dim=1) == 1)
    se = single.std().item() / len(single) ** 0.5
    assert abs(single.mean().item() - L_tilde) < 5 * se
    # and the rest, from samples with ≥ 2 active features, is what the bound controls
    assert L - single.mean().item() <= C * (codes > 0).sum(dim=1).ge(2).double().mean().item()


# ----- Thm 3.3 -----------------------------------------------------------------------------------
@pytest.mark.parametrize("case", ["near-orthogonal", "gaussian", "topk"])
def test_thm33_recovering_configuration_within_bounds(case):
    gen = torch.Generator().manual_seed(1)
    if case == "gaussian":
        W_p = unit_columns(30, 20, gen)
    else:
        W_p = torch.nn.functional.normalize(
            torch.eye(8, dtype=F64) + 0.03 * torch.randn(8, 8, generator=gen, dtype=F64), dim=0
        )
    n = W_p.shape[1]
    sigma = TopK(3) if case == "topk" else relu
    M = feature_moments(0.99, 0.5, 0.5, n)
    W_E, W_D = recovering_configuration(W_p, W_p, n + 3)
    assert W_E.shape == (n + 3, W_p.shape[0]) and W_D.shape == (W_p.shape[0], n + 3)
    assert W_E[n:].abs().sum() == 0 and W_D[:, n:].abs().sum() == 0
    loss = approx_loss(W_E, W_D, W_p, W_p, M, sigma).item()
    coarse, sharp = thm33_bounds(W_p, M)
    assert 0 < loss <= sharp <= coarse
    if case != "topk":  # the proof's residual: Σ_{k≠d, G_kd>0} G_kd w_r^k
        G = W_p.T @ W_p
        R = W_p @ (G.clamp_min(0) - torch.eye(n, dtype=F64))
        assert abs(loss - (M * R.pow(2).sum(dim=0)).sum().item()) < 1e-12
    if case == "near-orthogonal":  # a wrong construction (encoder scaled by 2) breaks the bound
        assert approx_loss(2 * W_E, W_D, W_p, W_p, M, sigma).item() > sharp
    with pytest.raises(ConfigError):
        recovering_configuration(W_p, W_p, n - 1)


# ----- Thm 3.4 -----------------------------------------------------------------------------------
def test_thm34_zero_loss_without_recovery():
    source = LRBSource(LRBConfig(n_features=4, n_p=16, S=0.5, M=0.1, seed=2), dtype=F64)
    W_p = W_r = source.W_p
    M = torch.ones(4, dtype=F64)
    W_E, W_D = zero_loss_non_identifiable(W_p, W_r, n_q=8)
    assert approx_loss(W_E, W_D, W_p, W_r, M, relu).item() < 1e-8
    assert exact_loss(W_E, W_D, source.codes(0, 4096), W_p, W_r, relu).item() < 1e-8  # even L, not only L̃
    enc, _ = best_match(W_E, W_p)
    dec, _ = best_match(W_D.T, W_r)
    assert gt_recovery(enc, 0.95) == 0 and gt_recovery(dec, 0.95) == 0
    assert enc.max() < 0.8 and dec.max() < 0.8
    # the metric is not blind: Thm 3.3's configuration recovers every feature (at a small positive L̃)
    W_E_rec, W_D_rec = recovering_configuration(W_p, W_r, 8)
    assert gt_recovery(best_match(W_E_rec, W_p)[0], 0.95) == 1 == gt_recovery(best_match(W_D_rec.T, W_r)[0], 0.95)
    # and with R = I the same zero-loss construction has decoder columns exactly on the features
    W_E_id, W_D_id = zero_loss_non_identifiable(W_p, W_r, 8, rotation=torch.eye(4, dtype=F64))
    assert gt_recovery(best_match(W_D_id.T, W_r)[0], 0.95) == 1
    assert approx_loss(W_E_id, W_D_id, W_p, W_r, M, relu).item() < 1e-8
    # and the zero loss depends on the construction: flip one decoder pair and it is gone
    W_bad = W_D.clone()
    W_bad[:, [0, 4]] = W_bad[:, [4, 0]]
    assert approx_loss(W_E, W_bad, W_p, W_r, M, relu).item() > 0.1
    with pytest.raises(ConfigError):
        zero_loss_non_identifiable(W_p, W_r, 7)


# ----- Example 3.5 ------------------------------------------------------------------------------------
def test_example_35_spurious_minimum():
    ex = example_3_5()
    W_E, W_D, loss_fn = ex["W_E"], ex["W_D"], ex["loss_fn"]
    loss, g_E, g_D = loss_and_grads(loss_fn, W_E, W_D)
    assert abs(loss.item() - 1) < 1e-12 and abs(ex["loss"] - 1) < 1e-12
    assert torch.sqrt(g_E.pow(2).sum() + g_D.pow(2).sum()) < 1e-6
    pattern = activation_pattern(W_E, ex["W_p"], ex["sigma"])
    assert pattern.tolist() == [[True, True], [False, False]]
    report = classify(pattern)
    assert report["polysemantic"] == [0] and report["dead"] == [1] and report["absorbed"] == [0, 1]
    # a perturbed decoder is not stationary
    assert grad_norm(loss_fn, W_E, W_D + torch.tensor([[0.1, 0.0], [0.0, 0.0]], dtype=F64)) > 1e-3

    gen = torch.Generator().manual_seed(0)
    for _ in range(20):  # small perturbations stay in the region: latent 0 wins TopK(1) for both features
        E = W_E + 0.05 * torch.randn(2, 2, generator=gen, dtype=F64)
        D = W_D + 0.05 * torch.randn(2, 2, generator=gen, dtype=F64)
        losses, E_end, _ = descend(E, D, loss_fn, steps=200, lr=0.1, return_weights=True)
        assert losses.shape == (201,) and losses.min() >= 0.99
        assert torch.equal(activation_pattern(E_end, ex["W_p"], ex["sigma"]), pattern)
    # control: started outside the region (latent 1 wins feature 2), GD reaches zero loss
    E = W_E.clone()
    E[1] = torch.tensor([0.0, 1.5], dtype=F64)
    assert descend(E, W_D, loss_fn, steps=200, lr=0.1)[-1] < 0.1


# ----- Thm 3.6 ----------------------------------------------------------------------------------------
def test_thm36_spurious_minima_on_random_partitions():
    gen = torch.Generator().manual_seed(0)
    found, no_minimum, trials = 0, 0, 0
    while found < 50:
        trials += 1
        assert trials <= 100, f"only {found} of {trials} partitions gave a partial minimum"
        n = int(torch.randint(4, 33, (1,), generator=gen))
        n_p = n + int(torch.randint(0, 9, (1,), generator=gen))
        W_p = unit_columns(n_p, n, gen)
        W_r = W_p if trials % 2 else unit_columns(n_p + 3, n, gen)  # SAE, then transcoder
        M = 0.5 + torch.rand(n, generator=gen, dtype=F64) if trials % 3 else torch.ones(n, dtype=F64)
        partition = random_partition(n, int(torch.randint((2 * n + 2) // 3, n, (1,), generator=gen)), gen)
        n_q = len(partition) + int(torch.randint(0, 3, (1,), generator=gen))
        try:
            W_E, W_D = spurious_minimum(partition, W_p, W_r, M, n_q, relu, generator=gen)
        except ConfigError:
            no_minimum += 1  # a block with no one-sign eigenvector: Thm 3.6 fails for it (see minima.py)
            assert max(map(len, partition)) >= 3
            continue
        found += 1

        def loss_fn(E, D, W_p=W_p, W_r=W_r, M=M):
            return approx_loss(E, D, W_p, W_r, M, relu)

        pattern = activation_pattern(W_E, W_p, relu)
        assert torch.equal(pattern, pattern_from_partition(partition, n_q, n))
        report = classify(pattern)
        assert report["is_partition"] and report["n_polysemantic"] >= 1 and report["n_dead"] == n_q - len(partition)
        assert loss_fn(W_E, W_D).item() > 0
        assert grad_norm(loss_fn, W_E, W_D) < 1e-5
        W_D_bad = W_D + 0.1 * torch.randn(W_D.shape, generator=gen, dtype=F64)
        assert grad_norm(loss_fn, W_E, W_D_bad) > 1e-3
    print(f"Thm 3.6: {found} partial minima in {trials} random partitions; {no_minimum} had none")


def test_thm36_paper_recipe_is_stationary_only_in_special_cases():
    gen = torch.Generator().manual_seed(5)
    n, n_p = 8, 12
    partition = [[0, 1, 2], [3, 4], [5], [6, 7]]
    # orthonormal w_r and equal M_d (like Example 3.5): any positive c_d gives a stationary point
    Q = torch.linalg.qr(torch.randn(n_p, n_p, generator=gen, dtype=F64))[0][:, :n]
    W_E, W_D = spurious_minimum(partition, Q, Q, 1.0, 5, relu, encoder="paper", generator=gen)
    assert grad_norm(lambda E, D: approx_loss(E, D, Q, Q, 1.0, relu), W_E, W_D) < 1e-10
    # generic w_r: the least-squares decoder zeroes ∇W_D, but ∇W_E does not vanish
    W_p = unit_columns(n_p, n, gen)
    M = 0.5 + torch.rand(n, generator=gen, dtype=F64)
    W_E, W_D = spurious_minimum(partition, W_p, W_p, M, 5, relu, encoder="paper", generator=gen)
    _, g_E, g_D = loss_and_grads(lambda E, D: approx_loss(E, D, W_p, W_p, M, relu), W_E, W_D)
    assert g_D.norm() < 1e-10 and g_E.norm() > 1e-3
    with pytest.raises(ConfigError):
        spurious_minimum(partition, unit_columns(6, n, gen), W_p, M, 5, relu)  # n > n_p


def test_thm36_counterexample_has_no_partial_minimum():
    """Gram [[1, .1, 0], [.1, 1, 0], [0, 0, 1]], one block: L̃ has no stationary point in the region."""
    W_r = torch.tensor([[1.0, 0.1, 0.0], [0.0, 0.99**0.5, 0.0], [0.0, 0.0, 1.0]], dtype=F64)
    W_p = torch.eye(3, dtype=F64)
    with pytest.raises(ConfigError, match="no partial minimum"):
        spurious_minimum([[0, 1, 2]], W_p, W_r, 1.0, 2, relu)
    gen = torch.Generator().manual_seed(0)
    W_E, W_D = spurious_minimum([[0, 1, 2]], W_p, W_r, 1.0, 2, relu, encoder="paper", generator=gen)

    def loss_fn(E, D):
        return approx_loss(E, D, W_p, W_r, 1.0, relu)

    assert grad_norm(loss_fn, W_E, W_D) > 1e-3
    losses, E_end, _ = descend(W_E, W_D, loss_fn, steps=1000, lr=0.1, return_weights=True)
    z = E_end @ W_p
    assert (losses.diff() <= 1e-12).all() and losses[-1] > 1.9  # infimum 3 − 1.1, on the boundary
    print("feature 2 on the parent latent:", (W_E @ W_p)[0, 2].item(), "->", z[0, 2].item())
    assert 0 < z[0, 2] < 0.05 * (W_E @ W_p)[0, 2]  # feature 2 is being pushed out of the block


# ----- Def 3.1 ------------------------------------------------------------------------------------
def test_activation_pattern_and_classify_hand_built():
    W_p = torch.eye(3, dtype=F64)
    W_E = torch.tensor([[1.0, -1.0, -1.0], [1.0, 1.0, -1.0], [-1.0, -1.0, -1.0]], dtype=F64)
    pattern = activation_pattern(W_E, W_p, relu)
    assert pattern.tolist() == [[True, False, False], [True, True, False], [False, False, False]]
    W_D = torch.tensor([[1.0, 0.6, 0.0], [0.0, 0.8, 0.0], [0.0, 0.0, 1.0]], dtype=F64)
    report = classify(pattern, W_D=W_D, W_r=W_p)
    assert (report["monosemantic"], report["polysemantic"], report["dead"]) == ([0], [1], [2])
    assert (report["n_monosemantic"], report["n_polysemantic"], report["n_dead"]) == (1, 1, 1)
    assert report["feature_status"] == ["recovered", "absorbed", "lost"]
    assert (report["recovered"], report["absorbed"], report["lost"]) == ([0], [1], [2])
    assert report["absorbed_into"] == {1: [(1, [0])]} and report["latent_features"] == {1: [0, 1]}
    assert not report["is_partition"]
    assert torch.allclose(report["decoder_cosine"], torch.tensor([1.0, 0.8, 0.0], dtype=F64))
    # TopK(1) on the same encoder: latent 1 wins feature 1 alone, feature 0 is tied and TopK keeps one
    assert activation_pattern(W_E, W_p, TopK(1))[:, 1].tolist() == [False, True, False]
    assert classify(torch.eye(3, dtype=torch.bool))["n_recovered"] == 3


def test_random_partition_and_errors():
    gen = torch.Generator().manual_seed(0)
    for n in range(2, 12):
        for blocks in range(1, n):
            part = random_partition(n, blocks, gen)
            assert len(part) == blocks and max(map(len, part)) >= 2
            assert sorted(d for block in part for d in block) == list(range(n))
    with pytest.raises(ConfigError):
        random_partition(4, 4)
    with pytest.raises(ConfigError):
        spurious_minimum([[0, 1], [1, 2]], torch.eye(3, dtype=F64), torch.eye(3, dtype=F64), 1.0, 3, relu)


# ----- Thm 3.8 ----------------------------------------------------------------------------------------
def absorption_setup(parent_acts: list[float]) -> tuple[torch.Tensor, torch.Tensor]:
    """Latent 0 = parent of features 0-3 (activations `parent_acts`), latent 1 fires 4 (0.6) and 5 (1.5)."""
    W_p = make_feature_matrix(10, 6, 0.3, generator=torch.Generator().manual_seed(4), dtype=F64)
    Z = torch.full((2, 6), -0.2, dtype=F64)
    Z[0, :4] = torch.tensor(parent_acts, dtype=F64)
    Z[1, 4:] = torch.tensor([0.6, 1.5], dtype=F64)
    return realise_preactivations(Z, W_p), W_p


def test_thm38_absorption_recipe():
    W_E, W_p = absorption_setup([1.0, 1.3, 1.6, 1.2])
    before = activation_pattern(W_E, W_p, threshold_sigma(0.5))
    assert before.tolist() == [[True] * 4 + [False] * 2, [False] * 4 + [True] * 2]
    out = absorption_configuration(W_E, W_p, torch.tensor([0.5, 0.5]), parent=0)
    assert out["realised"] and out["absorbed_feature"] == 0 and out["new_latent"] == 2
    assert abs(out["lambda"] - 0.75) < 1e-12 and out["M"] < 1
    assert out["pattern"].tolist() == [
        [False, True, True, True, False, False],  # F_parent ∖ {d*}
        [False, False, False, False, True, True],
        [True, False, False, False, False, False],  # {d*} on its own latent
    ]
    assert classify(out["pattern"])["feature_status"][0] == "recovered"


def test_thm38_recipe_fails_as_stated_on_ties_shared_thresholds_and_large_eps():
    # 1. a tie at a_min: the other minimal sub-concept leaves the parent too and is lost
    W_E, W_p = absorption_setup([1.0, 1.0, 1.6, 1.2])
    out = absorption_configuration(W_E, W_p, 0.5, parent=0)
    assert out["tie"] and out["absorbed_feature"] in (0, 1)
    assert not out["realised"] and classify(out["pattern"])["lost"] == [1 - out["absorbed_feature"]]
    # 2. one shared threshold raised to c'' = 0.825 silences latent 1's feature 4 (activation 0.6)
    W_E, W_p = absorption_setup([1.0, 1.3, 1.6, 1.2])
    shared = absorption_configuration(W_E, W_p, 0.5, parent=0, per_latent=False)
    assert not shared["realised"] and not shared["pattern"][1, 4] and classify(shared["pattern"])["lost"] == [4]
    # 3. ε beyond λ (a_(2) − a_min) = 0.15 drops the next-smallest sub-concept (feature 3) as well
    assert not absorption_configuration(W_E, W_p, 0.5, parent=0, eps=0.2)["realised"]
    with pytest.raises(ConfigError, match="needs a parent"):  # threshold above every activation
        absorption_configuration(W_E, W_p, 2.0, parent=0)
