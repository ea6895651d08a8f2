"""Hierarchical LRB features (paper Def 3.2): layout, the parent ⟺ any-child rule, rates, configs."""

from __future__ import annotations

import math

import pytest
import torch

from sdlkit.data.lrb import LRBConfig, LRBSource, lrb_preset
from sdlkit.data.lrb.features import max_interference
from sdlkit.data.lrb.hierarchy import Hierarchy, HierarchyConfig
from sdlkit.errors import ConfigError

# 2 trees, branching 3, depth 2: 2 roots + 6 children + 18 leaves = 26 tree features, 6 independent.
BASE = {"n_features": 32, "n_p": 24, "M": 0.3, "S": 0.8}
DEEP = {"n_parents": 2, "children_per_parent": 3, "depth": 2}


def _source(**overrides) -> LRBSource:
    return LRBSource(LRBConfig.from_dict({**BASE, "hierarchy": DEEP, **overrides}))


def _check_rule(codes: torch.Tensor, h: Hierarchy) -> None:
    """Independent check, every sample and every edge: parent > 0 ⟺ any child > 0."""
    active = codes > 0
    for p in h.parents:
        assert torch.equal(active[:, p], active[:, h.children[p]].any(dim=1)), f"parent {p}"


def _within_3se(observed: float, p: float, n: int) -> bool:
    return abs(observed - p) < 3 * math.sqrt(p * (1 - p) / n)


# ---------------------------------------------------------------- layout
def test_layout_depth_one_and_two() -> None:
    h = HierarchyConfig(n_parents=2, children_per_parent=3).build()
    assert h.depth == 1 and h.n_tree == 8
    assert h.roots == h.parents == [0, 1]
    assert h.children == {0: [2, 3, 4], 1: [5, 6, 7]}
    assert h.parent_of == {2: 0, 3: 0, 4: 0, 5: 1, 6: 1, 7: 1}
    assert h.leaves == [2, 3, 4, 5, 6, 7]
    assert h.pairs == [(0, 2), (0, 3), (0, 4), (1, 5), (1, 6), (1, 7)]

    d = HierarchyConfig(**DEEP).build()
    assert d.n_tree == HierarchyConfig(**DEEP).n_tree_features == 26
    assert d.levels[0] == [0, 1] and d.levels[1] == list(range(2, 8)) and d.leaves == list(range(8, 26))
    assert d.parents == list(range(8))
    assert d.children[2] == [8, 9, 10] and d.children[7] == [23, 24, 25]
    assert d.parent_of[8] == 2 and d.parent_of[2] == 0 and 0 not in d.parent_of
    assert [d.height(f) for f in (0, 5, 20)] == [2, 1, 0]
    probs = d.activation_probability(0.9)
    assert probs[0] == pytest.approx(1 - 0.9**9) and probs[2] == pytest.approx(1 - 0.9**3)
    assert probs[8] == pytest.approx(0.1)


# ---------------------------------------------------------------- sampling
def test_rule_holds_on_every_sample_everywhere() -> None:
    src = _source(n_samples=3000, eval_size=512)
    h = src.hierarchy
    assert h is not None and h.n_tree == 26
    for codes in (src.codes(0, 2048), src.codes(5, 2048), src.eval_codes(), src.training_set_codes()):
        _check_rule(codes, h)
        assert (codes >= 0).all()
    stream = _source()  # infinite stream, same rule
    _check_rule(stream.codes(7, 2048), stream.hierarchy)  # type: ignore[arg-type]
    _check_rule(stream.sample_codes(1000, "check"), stream.hierarchy)  # type: ignore[arg-type]


def test_rates_and_magnitudes() -> None:
    S, rows = 0.8, 16384
    src = _source(S=S, c_min=0.3, beta=0.7)
    h = src.hierarchy
    assert h is not None
    codes = src.codes(1, rows)
    active = codes > 0
    # Leaves: independent Bernoulli(1 − S), pooled over 18 leaves.
    leaf = active[:, h.leaves]
    assert _within_3se(leaf.float().mean().item(), 1 - S, leaf.numel())
    # Depth-1 parents (6 disjoint subtrees of 3 leaves): 1 − S^3; roots (9 leaves each): 1 − S^9.
    mid = active[:, h.levels[1]]
    assert _within_3se(mid.float().mean().item(), 1 - S**3, mid.numel())
    roots = active[:, h.roots]
    assert _within_3se(roots.float().mean().item(), 1 - S**9, roots.numel())
    # Independent features are unaffected: rate 1 − S.
    free = active[:, h.n_tree :]
    assert _within_3se(free.float().mean().item(), 1 - S, free.numel())
    # Every active feature, parent or not, has magnitude c_min + Exp(beta).
    for cols in (h.parents, h.leaves, list(range(h.n_tree, 32))):
        values = codes[:, cols][active[:, cols]].double()
        assert values.min().item() >= 0.3
        assert abs(values.mean().item() - 1.0) < 3 * 0.7 / math.sqrt(values.numel())
    # true_l0 is the expected number of active features.
    assert src.true_l0 == pytest.approx(6 * (1 - S) + h.expected_active(S))
    mean_l0 = active.sum(dim=1).double()
    assert abs(mean_l0.mean().item() - src.true_l0) < 3 * mean_l0.std().item() / math.sqrt(rows)


def test_only_parents_change_and_geometry_unchanged() -> None:
    """Same seed with and without hierarchy: W_p and the leaf / independent activity draws coincide."""
    flat = LRBSource(LRBConfig.from_dict(BASE))
    src = _source()
    assert torch.equal(flat.W_p, src.W_p) and max_interference(src.W_p) <= BASE["M"]
    a, b = flat.codes(3, 512) > 0, src.codes(3, 512) > 0
    assert torch.equal(a[:, 8:], b[:, 8:])  # leaves (8..25) and independent features (26..31)
    assert not torch.equal(a[:, :8], b[:, :8])


def test_batches_determinism_and_modes() -> None:
    a, b = _source(), _source()
    for _ in range(2):
        a.batch(0, 32)
    assert torch.equal(a.codes(4, 64), b.codes(4, 64))  # random access: no earlier batch needed
    assert not torch.equal(a.codes(4, 64), a.codes(5, 64))
    assert torch.allclose(a.batch(4, 64).x_p, a.codes(4, 64) @ a.W_p.T, atol=1e-6)
    assert torch.equal(a.sample_codes(100, "x"), b.sample_codes(100, "x"))
    assert not torch.equal(a.sample_codes(100, "x"), a.sample_codes(100, "y"))
    tc = _source(mode="transcoder", n_r=20)
    codes = tc.codes(2, 128)
    _check_rule(codes, tc.hierarchy)  # type: ignore[arg-type]
    assert torch.allclose(tc.batch(2, 128).x_r, codes @ tc.W_r.T, atol=1e-6)
    assert not torch.equal(a.sample_codes(64, "train", 4), a.codes(4, 64))  # user streams never reuse training's


def test_no_hierarchy_is_bit_identical() -> None:
    """hierarchy=None equals a config without the field and the plain bench's sampling recipe."""
    plain = LRBSource(lrb_preset("tiny", n_samples=300))
    explicit = LRBSource(lrb_preset("tiny", n_samples=300, hierarchy=None))
    assert plain.hierarchy is None and plain.true_l0 == pytest.approx(26 * 0.1)
    for i in range(3):
        assert torch.equal(plain.codes(i, 128), explicit.codes(i, 128))
    assert torch.equal(plain.eval_codes(), explicit.eval_codes())
    stream = LRBSource(lrb_preset("tiny"))
    # The plain recipe, written out: the Bernoulli(1 − S) ones of the row-major [64, 26] grid as
    # geometric gaps (one draw of 166.4 + 6·√166.4 + 64 gaps covers the 1664 entries), then
    # c_min + beta·Exp(1) in row-major order.
    gen = stream._generator("train", 3)
    positions = torch.empty(307, dtype=torch.int64).geometric_(0.1, generator=gen).cumsum(0) - 1
    assert positions[-1] >= 64 * 26
    active = torch.zeros(64 * 26, dtype=torch.bool)
    active[positions[positions < 64 * 26]] = True
    expected = torch.zeros(64, 26)
    expected[active.view(64, 26)] = torch.empty(int(active.sum())).exponential_(1.0, generator=gen) * 0.5 + 0.5
    assert torch.equal(stream.codes(3, 64), expected)
    dumped = lrb_preset("tiny").model_dump()
    assert dumped["hierarchy"] is None and LRBConfig.from_dict(dumped) == lrb_preset("tiny")


# ---------------------------------------------------------------- configs
@pytest.mark.parametrize(
    ("hierarchy", "extra", "pattern"),
    [
        (DEEP, {"n_features": 20, "n_p": 20}, r"^data\.n_features = 20 is too small for the hierarchy.*need 26"),
        ({"n_parents": 2, "children_per_parent": 1}, {}, r"^data\.hierarchy\.children_per_parent = 1 is not allowed"),
        ({"n_parents": 0, "children_per_parent": 2}, {}, r"^data\.hierarchy\.n_parents = 0 is not allowed"),
        ({"n_parents": 1, "children_per_parent": 2, "depth": 0}, {}, r"^data\.hierarchy\.depth = 0 is not allowed"),
        ({"children_per_parent": 2}, {}, r"'data\.hierarchy\.n_parents' is required"),
        ({"n_parents": 1, "children_per_parent": 2, "width": 3}, {}, r"unknown option 'data\.hierarchy\.width'"),
    ],
)
def test_bad_hierarchy_configs(hierarchy: dict, extra: dict, pattern: str) -> None:
    with pytest.raises(ConfigError, match=pattern) as info:
        lrb_preset("tiny", hierarchy=hierarchy, **extra)
    assert "\n" not in str(info.value)


def test_hierarchy_in_a_run_config() -> None:
    from sdlkit.config import run_config

    cfg = run_config(
        {
            "data": {"preset": "tiny", "hierarchy": {"n_parents": 2, "children_per_parent": 3}},
            "model": {"n_latents": 32, "method": {"name": "topk", "k": 4}},
        }
    )
    assert cfg.data.hierarchy == HierarchyConfig(n_parents=2, children_per_parent=3, depth=1)
    assert LRBConfig.from_dict(cfg.data.model_dump(mode="json")) == cfg.data
