"""Tests of the Linear Representation Bench: feature matrices, codes, batches, determinism, configs."""

from __future__ import annotations

import math
import time

import pytest
import torch

from sdlkit.data.lrb import LRB_PRESETS, LRBConfig, LRBSource, lrb_preset
from sdlkit.data.lrb.features import PGDSettings, make_feature_matrix, max_interference
from sdlkit.data.source import Batch, DataSource
from sdlkit.errors import ConfigError


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _signed_max_offdiag(W: torch.Tensor) -> float:
    """Independent check: max_{i != j} of WᵀW in float64."""
    G = W.double().T @ W.double()
    G.fill_diagonal_(-math.inf)
    return G.max().item()


# ---------------------------------------------------------------- feature matrices
@pytest.mark.parametrize(
    ("d", "n", "M"),
    [(3, 4, 0.05), (3, 4, -0.3), (20, 26, 0.3), (10, 100, 0.5), (200, 260, 0.05), (768, 1000, 0.1)],
)
def test_feature_matrix_interference_bounded(d: int, n: int, M: float) -> None:
    start = time.perf_counter()
    W = make_feature_matrix(d, n, M, generator=_gen(1))
    elapsed = time.perf_counter() - start
    assert W.shape == (d, n) and W.dtype == torch.float32
    assert torch.allclose(W.double().norm(dim=0), torch.ones(n, dtype=torch.float64), atol=1e-5)
    worst = _signed_max_offdiag(W)
    assert worst <= M
    assert max_interference(W) == pytest.approx(worst, abs=1e-12)
    assert elapsed < 10.0  # the paper's size takes ~0.1 s; "a few seconds" at most


def test_feature_matrix_reaches_negative_interference_near_simplex() -> None:
    # 4 vectors in 3 dims: the regular simplex has all inner products -1/3.
    W = make_feature_matrix(3, 4, -0.32, generator=_gen(0))
    assert _signed_max_offdiag(W) <= -0.32


def test_feature_matrix_is_signed_not_absolute() -> None:
    # Signed max <= M does not bound |G|: with M < 0 every entry is negative.
    W = make_feature_matrix(3, 4, -0.3, generator=_gen(0))
    G = W.double().T @ W.double()
    off = G[~torch.eye(4, dtype=torch.bool)]
    assert (off < 0).all()


def test_feature_matrix_deterministic_and_seed_dependent() -> None:
    a = make_feature_matrix(20, 26, 0.3, generator=_gen(5))
    b = make_feature_matrix(20, 26, 0.3, generator=_gen(5))
    c = make_feature_matrix(20, 26, 0.3, generator=_gen(6))
    assert torch.equal(a, b)
    assert not torch.allclose(a, c)


def test_feature_matrix_trivial_cases() -> None:
    W = make_feature_matrix(5, 1, -10.0, generator=_gen(0))  # one feature: no pairs, any M is fine
    assert W.shape == (5, 1) and abs(W.norm().item() - 1) < 1e-6
    W = make_feature_matrix(3, 50, 1.0, generator=_gen(0))  # M >= 1 always holds: plain normalised draw
    assert W.shape == (3, 50)
    assert torch.allclose(W.norm(dim=0), torch.ones(50), atol=1e-5)
    W64 = make_feature_matrix(20, 26, 0.3, generator=_gen(0), dtype=torch.float64)
    assert W64.dtype == torch.float64 and max_interference(W64) <= 0.3
    assert max_interference(torch.ones(3, 1)) == -math.inf


def test_max_interference_chunked_matches_dense() -> None:
    W = torch.randn(7, 50, generator=_gen(2))
    W = W / W.norm(dim=0)
    assert max_interference(W, chunk_size=8) == pytest.approx(_signed_max_offdiag(W), abs=1e-12)
    # A duplicated column has interference exactly 1, and the diagonal is never counted.
    W2 = torch.cat([W, W[:, :1]], dim=1)
    assert max_interference(W2, chunk_size=16) == pytest.approx(1.0, abs=1e-6)


def _timed_error(*args: float, **kwargs: int) -> tuple[str, float]:
    start = time.perf_counter()
    with pytest.raises(ConfigError) as info:
        make_feature_matrix(*args, generator=_gen(0), pgd=PGDSettings(**kwargs))  # type: ignore[arg-type]
    return str(info.value), time.perf_counter() - start


def test_gram_sum_bound_raises_immediately() -> None:
    # 4 unit vectors: max interference >= -1/3 whatever the dimension.
    msg, elapsed = _timed_error(10, 4, -0.5)
    assert "M = -0.5" in msg and "-1/(n-1)" in msg and "0.333333" in msg and "\n" not in msg
    assert elapsed < 0.05


def test_rankin_bound_raises_immediately() -> None:
    # 41 vectors in 20 dims (> 2 n_dims) cannot be pairwise non-positive, let alone negative.
    msg, elapsed = _timed_error(20, 41, -0.01, max_iters=10**9)
    assert "M = -0.01" in msg and "\n" not in msg
    assert elapsed < 0.05
    msg, _ = _timed_error(20, 41, 0.0, max_iters=10**9)
    assert "M = 0.0" in msg and "2*n_dims" in msg
    # 22 vectors in 20 dims (> n_dims + 1) cannot all have negative inner products.
    msg, _ = _timed_error(20, 22, -0.01, max_iters=10**9)
    assert "M = -0.01" in msg and "n_dims+1" in msg


def test_unreached_M_names_the_best_value() -> None:
    msg, _ = _timed_error(768, 1000, 0.05, max_iters=1)
    assert "M = 0.05" in msg and "max_iters = 1" in msg and "\n" not in msg
    reached = float(msg.split("down to ")[1].split(" ")[0])
    assert 0.05 < reached < 0.3  # a real value: below the random draw's ~0.18, above the target
    assert "raise M" in msg and "n_dims" in msg


# ---------------------------------------------------------------- codes
def test_codes_statistics() -> None:
    cfg = lrb_preset("tiny", S=0.8, c_min=0.3, beta=0.7)
    src = LRBSource(cfg)
    x = src.codes(3, 8192)
    assert x.shape == (8192, cfg.n_features)
    assert (x >= 0).all()
    active = x != 0
    p = 1 - cfg.S
    n_entries = x.numel()
    rate = active.float().mean().item()
    assert abs(rate - p) < 3 * math.sqrt(p * (1 - p) / n_entries)
    values = x[active].double()
    assert values.min().item() >= cfg.c_min
    n_active = values.numel()
    # Exp(scale beta) has standard deviation beta.
    assert abs(values.mean().item() - (cfg.c_min + cfg.beta)) < 3 * cfg.beta / math.sqrt(n_active)
    assert src.true_l0 == pytest.approx(cfg.n_features * p)


def test_active_entries_are_independent_bernoulli_per_position() -> None:
    """Drawn as geometric gaps, the activity pattern must still be i.i.d. Bernoulli(1 − S) per entry:
    right rate in every column, binomial row counts, no correlation between neighbouring entries."""
    src = LRBSource(lrb_preset("tiny", S=0.7))
    active = (src.codes(0, 4000) != 0).double()
    p, n = 0.3, active.shape[1]
    sd = math.sqrt(p * (1 - p) / active.shape[0])
    assert ((active.mean(dim=0) - p).abs() < 4.5 * sd).all()
    counts = active.sum(dim=1)
    assert abs(counts.var().item() / (n * p * (1 - p)) - 1) < 0.1  # Binomial(n, p) variance
    flat = active.reshape(-1) - p
    lag1 = (flat[1:] * flat[:-1]).mean().item() / (p * (1 - p))
    assert abs(lag1) < 4.5 / math.sqrt(flat.numel())
    dense = LRBSource(lrb_preset("tiny", S=0.0)).codes(0, 16)
    assert (dense > 0).all()  # S = 0: every entry active


def test_inactive_entries_are_exact_zeros_and_fixed_set_same_distribution() -> None:
    src = LRBSource(lrb_preset("tiny", n_samples=3000))
    x = src.training_set_codes()
    assert x.shape == (3000, 26)
    zeros = (x == 0).float().mean().item()
    assert abs(zeros - 0.9) < 3 * math.sqrt(0.09 / x.numel())
    assert x[x != 0].min().item() >= 0.5


# ---------------------------------------------------------------- batches
def test_sae_batch_is_linear_in_codes() -> None:
    src = LRBSource(lrb_preset("tiny"))
    assert isinstance(src, DataSource)
    b = src.batch(0, 64)
    assert isinstance(b, Batch) and len(b) == 64
    assert torch.allclose(b.x_p, src.codes(0, 64) @ src.W_p.T, atol=1e-6)
    assert b.x_r is b.x_p
    assert src.W_r is src.W_p
    assert (src.n_in, src.n_out, src.in_blocks, src.out_blocks) == (20, 20, [20], [20])
    assert max_interference(src.W_p) <= 0.3
    gt = src.ground_truth()
    assert torch.equal(gt["W_p"], src.W_p) and torch.equal(gt["W_r"], src.W_p)
    assert gt["W_r"].data_ptr() != gt["W_p"].data_ptr()  # safetensors refuses shared storage


def test_transcoder_batch() -> None:
    src = LRBSource(lrb_preset("tiny", mode="transcoder", n_r=30))
    assert src.W_r.shape == (30, 26) and src.W_p.shape == (20, 26)
    assert max_interference(src.W_r) <= 0.3
    b = src.batch(2, 32)
    codes = src.codes(2, 32)
    assert torch.allclose(b.x_p, codes @ src.W_p.T, atol=1e-6)
    assert torch.allclose(b.x_r, codes @ src.W_r.T, atol=1e-6)
    assert b.x_r.shape == (32, 30)
    assert (src.n_in, src.n_out, src.in_blocks, src.out_blocks) == (20, 30, [20], [30])
    assert not torch.allclose(src.W_r[:20], src.W_p)
    # n_r defaults to n_p.
    assert LRBSource(lrb_preset("tiny", mode="transcoder")).W_r.shape == (20, 26)


def test_crosscoder_batch() -> None:
    src = LRBSource(lrb_preset("tiny", mode="crosscoder", n_sources=3))
    assert src.W_p.shape == (60, 26) and src.W_r is src.W_p
    assert (src.n_in, src.n_out, src.in_blocks, src.out_blocks) == (60, 60, [20, 20, 20], [20, 20, 20])
    b = src.batch(1, 16)
    codes = src.codes(1, 16)
    assert b.x_p.shape == (16, 60) and b.x_r is b.x_p
    for j, block in enumerate(src.W_p_blocks):
        assert block.shape == (20, 26)
        assert max_interference(block) <= 0.3
        assert torch.allclose(b.x_p[:, 20 * j : 20 * (j + 1)], codes @ block.T, atol=1e-6)
    assert not torch.allclose(src.W_p_blocks[0], src.W_p_blocks[1])


# ---------------------------------------------------------------- determinism
def test_determinism_and_random_access() -> None:
    cfg = lrb_preset("tiny")
    a, b = LRBSource(cfg), LRBSource(cfg)
    assert torch.equal(a.W_p, b.W_p)
    for _ in range(3):
        a.batch(0, 32)
    # b draws batch 5 without drawing 0..4 first.
    assert torch.equal(a.batch(5, 32).x_p, b.batch(5, 32).x_p)
    assert torch.equal(a.codes(5, 32), a.codes(5, 32))
    assert not torch.equal(a.codes(5, 32), a.codes(6, 32))
    other = LRBSource(lrb_preset("tiny", seed=1))
    assert not torch.equal(other.W_p, a.W_p)
    assert not torch.equal(other.codes(5, 32), a.codes(5, 32))


def test_eval_set_fixed_and_separate() -> None:
    cfg = lrb_preset("tiny", eval_size=256)
    src = LRBSource(cfg)
    e1 = src.eval_batch()
    assert e1 is src.eval_batch() and e1.x_p.shape == (256, 20) and e1.x_r is e1.x_p
    assert torch.equal(LRBSource(cfg).eval_codes(), src.eval_codes())
    assert torch.allclose(e1.x_p, src.eval_codes() @ src.W_p.T, atol=1e-6)
    ev = src.eval_codes()
    ev_nonempty = ev[(ev != 0).any(dim=1)]  # all-zero codes (0.9**26 = 6.5% of samples) match trivially
    for index in range(4):
        train = src.codes(index, 256)
        assert not torch.equal(train, ev)
        # No (non-empty) eval sample appears among the training rows.
        assert not (torch.cdist(ev_nonempty, train) < 1e-6).any()


# ---------------------------------------------------------------- fixed training set
def _rows_as_set(x: torch.Tensor) -> list[tuple[float, ...]]:
    return sorted(tuple(r) for r in x.tolist())


def test_fixed_set_epochs_are_permutations() -> None:
    N = 12
    src = LRBSource(lrb_preset("tiny", n_samples=N, S=0.5))
    full = src.training_set_codes()
    assert len(set(map(tuple, full.tolist()))) == N  # distinct samples, so row identity is meaningful
    epoch0 = torch.cat([src.codes(i, 4) for i in range(3)])
    epoch1 = torch.cat([src.codes(i, 4) for i in range(3, 6)])
    assert _rows_as_set(epoch0) == _rows_as_set(full)
    assert _rows_as_set(epoch1) == _rows_as_set(full)
    assert not torch.equal(epoch0, epoch1)
    # Batches of 5 straddle epoch boundaries: positions [0, 12) then [12, 24).
    stream = torch.cat([src.codes(i, 5) for i in range(5)])
    assert torch.equal(stream[:12], epoch0) and torch.equal(stream[12:24], epoch1)
    # Batches larger than N cover several epochs.
    big = src.codes(0, 30)
    assert torch.equal(big[:24], torch.cat([epoch0, epoch1]))
    b = src.batch(1, 5)
    assert torch.allclose(b.x_p, stream[5:10] @ src.W_p.T, atol=1e-6)


def test_fixed_set_stored_sparsely() -> None:
    src = LRBSource(lrb_preset("tiny", n_samples=5000))
    row_ptr, col, val = src._codes.fixed_set  # type: ignore[misc]
    assert row_ptr.shape == (5001,) and col.numel() == val.numel() == int(row_ptr[-1])
    assert val.numel() < 0.15 * 5000 * 26  # ~10% non-zeros, not a dense [N, n] tensor
    assert (val >= 0.5).all()


# ---------------------------------------------------------------- configs
def test_presets() -> None:
    assert set(LRB_PRESETS) >= {"paper", "quick", "tiny"}
    paper = lrb_preset("paper")
    assert (paper.n_features, paper.n_p, paper.S, paper.M, paper.n_samples) == (1000, 768, 0.99, 0.1, 100_000)
    quick = lrb_preset("quick")
    assert quick.n_samples is None and (quick.S, quick.M) == (0.99, 0.1)
    assert quick.n_features / quick.n_p == pytest.approx(paper.n_features / paper.n_p, abs=0.01)
    assert lrb_preset("tiny", seed=3).seed == 3
    with pytest.raises(ConfigError, match="unknown LRB preset 'huge'.*paper.*quick.*tiny"):
        lrb_preset("huge")


@pytest.mark.parametrize(
    ("overrides", "pattern"),
    [
        ({"S": 1.0}, r"^data\.S = 1\.0 is not allowed: S must be in \[0, 1\)"),
        ({"S": -0.1}, r"^data\.S = -0\.1 is not allowed: S must be in \[0, 1\)"),
        ({"n_r": 10}, r"^data\.n_r = 10 is not allowed: n_r is only allowed when mode is 'transcoder'"),
        (
            {"mode": "crosscoder", "n_sources": 1},
            r"^data\.n_sources = 1 is not allowed: n_sources must be >= 2",
        ),
        ({"n_sources": 2}, r"^data\.n_sources = 2 is not allowed: n_sources must be 1 in sae mode"),
        ({"n_features": 0}, r"^data\.n_features = 0 is not allowed"),
        ({"beta": 0.0}, r"^data\.beta = 0\.0 is not allowed: Input should be greater than 0"),
        ({"c_min": -1.0}, r"^data\.c_min = -1\.0 is not allowed"),
        ({"n_samples": 0}, r"^data\.n_samples = 0 is not allowed"),
        ({"mode": "autoencoder"}, r"^data\.mode = 'autoencoder' is not allowed"),
        ({"M": -0.5}, r"^data.M = -0\.5 is impossible"),
        ({"bogus": 1}, r"unknown option 'data\.bogus'"),
    ],
)
def test_bad_config_values(overrides: dict, pattern: str) -> None:
    with pytest.raises(ConfigError, match=pattern) as info:
        lrb_preset("tiny", **overrides)
    assert "\n" not in str(info.value)


def test_from_dict_and_required_fields() -> None:
    cfg = LRBConfig.from_dict({"n_features": 8, "n_p": 6, "S": 0.5, "M": 0.4})
    assert cfg.kind == "lrb" and cfg.mode == "sae" and cfg.n_samples is None and cfg.target_dims == 6
    with pytest.raises(ConfigError, match="'data.S' is required"):
        LRBConfig.from_dict({"n_features": 8, "n_p": 6, "M": 0.4})
    # A config round-trips through its dict form (as it is saved in checkpoints).
    assert LRBConfig.from_dict(cfg.model_dump()) == cfg
