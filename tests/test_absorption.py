"""The absorption metric on hand-built dictionaries (paper Thm 3.8, Example 3.7).

Tiny hierarchy: 2 parents × 3 children (parents 0, 1; children 2, 3, 4 and 5, 6, 7) plus 2 independent
features, n_p = 12 >= n = 10. The bench only bounds overlaps from above (M = 0 still leaves cosines
near −0.6), so the fixture swaps in exactly orthonormal features (QR of the drawn W_p) for the
hand-built dictionaries. Magnitudes lie in [1, ~1.1] (c_min = 1, beta = 0.01), which lets a ReLU
encoder with a bias act as a threshold.
"""

from __future__ import annotations

import math

import pytest
import torch

from sdlkit.core.model import ModelConfig, SparseDictionary
from sdlkit.data.lrb import LRBConfig, LRBSource, lrb_preset
from sdlkit.errors import ConfigError
from sdlkit.eval.absorption import AbsorptionOptions, absorption_rates

CHILD = 3  # the absorbed child c* (a child of parent 0)


@pytest.fixture(scope="module")
def source() -> LRBSource:
    cfg = LRBConfig.from_dict(
        {
            "n_features": 10,
            "n_p": 12,
            "M": 0.0,
            "S": 0.7,
            "c_min": 1.0,
            "beta": 0.01,
            "hierarchy": {"n_parents": 2, "children_per_parent": 3},
        }
    )
    src = LRBSource(cfg)
    src.W_p = src.W_r = torch.linalg.qr(src.W_p.double())[0].float()  # orthonormal columns [12, 10]
    return src


def _dictionary(W_E: torch.Tensor, b_E: torch.Tensor, W_D: torch.Tensor) -> SparseDictionary:
    n_latents, n_in = W_E.shape
    model = SparseDictionary(ModelConfig(n_latents=n_latents, n_in=n_in, method={"name": "relu"}))
    with torch.no_grad():
        model.W_E.copy_(W_E)
        model.b_E.copy_(b_E)  # type: ignore[union-attr]
        model.W_D.copy_(W_D)
    return model


def _clean(src: LRBSource) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One latent per feature: encoder = pseudo-inverse row, threshold 0.1 (all magnitudes are >= 1)."""
    W_E = torch.linalg.pinv(src.W_p.double()).float()
    return W_E, torch.full((10,), -0.1), src.W_p.clone()


def _absorbing(src: LRBSource) -> SparseDictionary:
    """Thm 3.8 / Example 3.7: the parent-0 latent is switched off by child 3, whose latent writes w_3 + w_0."""
    W_E, b_E, W_D = _clean(src)
    W_E[0] = W_E[0] - 2 * W_E[CHILD]  # x_0 − 2 x_3 − 0.1 < 0 whenever x_3 >= 1 (and x_0 <= ~1.1)
    column = src.W_p[:, CHILD] + src.W_p[:, 0]
    W_D[:, CHILD] = column / column.norm()
    return _dictionary(W_E, b_E, W_D)


def _reference(
    model: SparseDictionary, src: LRBSource, codes: torch.Tensor, sole_child: bool, thr: float = 0.5, absolute=False
):
    """Independent per-sample loop: full cosine matrix, plain Python over samples and edges."""
    h = src.hierarchy
    assert h is not None
    D = model.W_D.detach().double()
    D = D / D.norm(dim=0, keepdim=True).clamp_min(1e-12)
    T = src.W_r.double() / src.W_r.double().norm(dim=0, keepdim=True)
    cos = D.T @ T  # [n_q, n]
    parent_latent = {p: int(cos[:, p].abs().argmax()) for p in h.parents}
    if absolute:
        cos = cos.abs()
    aligned = {c: [j for j in range(cos.shape[0]) if cos[j, c] > thr] for c in h.parent_of}
    fires = (model.encode(codes @ src.W_p.T) > 0).tolist()
    truth = (codes > 0).tolist()
    rates = {}
    for p, c in h.pairs:
        hits = total = 0
        for f, t in zip(fires, truth, strict=True):
            if not t[c] or (sole_child and sum(t[k] for k in h.children[p]) != 1):
                continue
            total += 1
            hits += (not f[parent_latent[p]]) and any(f[j] for j in aligned[c])
        rates[c] = hits / total if total else math.nan
    return rates


def test_clean_dictionary_has_no_absorption(source: LRBSource) -> None:
    model = _dictionary(*_clean(source))
    codes = source.sample_codes(2000, "test")
    out = absorption_rates(model, source, codes=codes)
    assert out["rates"] == {c: 0.0 for c in range(2, 8)}
    assert out["parent_silent"] == {c: 0.0 for c in range(2, 8)}
    assert out["mean_rate"] == 0.0 and out["absorbed_fraction"] == 0.0 and out["n_absorbed"] == 0
    assert out["parents"][0]["latent"] == 0 and out["parents"][1]["latent"] == 1
    assert out["parents"][0]["cos"] == pytest.approx(1.0) and out["parents"][0]["silent_rate"] == 0.0
    assert out["child_latents"] == {c: [c] for c in range(2, 8)}
    assert out["rates"] == _reference(model, source, codes, sole_child=True)
    # The default draws its own samples from the source's "absorption" stream.
    assert absorption_rates(model, source, n_samples=1000)["n_samples"] == 1000


def test_absorbing_dictionary(source: LRBSource) -> None:
    model = _absorbing(source)
    codes = source.sample_codes(2000, "test")
    out = absorption_rates(model, source, codes=codes)
    assert out["rates"][CHILD] == 1.0
    assert all(out["rates"][c] == 0.0 for c in (2, 4, 5, 6, 7))
    assert out["n_absorbed"] == 1 and out["absorbed_fraction"] == pytest.approx(1 / 6)
    assert out["mean_rate"] == pytest.approx(1 / 6)
    assert out["parents"][0]["absorbed"] == [CHILD] and out["parents"][1]["absorbed"] == []
    assert out["parents"][0]["latent"] == 0  # |cos| 1 beats the absorbing latent's 1/√2
    assert CHILD in out["child_latents"][CHILD]
    # Counted samples: child 3 is parent 0's only active child, about 2000·(1 − S)·S².
    assert 0.5 * 2000 * 0.3 * 0.49 < out["child_counts"][CHILD] < 1.5 * 2000 * 0.3 * 0.49
    assert out["rates"] == _reference(model, source, codes, sole_child=True)

    # Without the sole-child restriction a sibling of c* is charged when c* co-occurs: Pr(x_3 > 0 | x_c > 0).
    loose = absorption_rates(model, source, codes=codes, sole_child=False)
    assert loose["rates"][CHILD] == 1.0 and loose["rates"][5] == 0.0
    for c in (2, 4):
        both = ((codes[:, c] > 0) & (codes[:, CHILD] > 0)).sum().item()
        assert loose["rates"][c] == pytest.approx(both / (codes[:, c] > 0).sum().item())
    assert loose["rates"] == _reference(model, source, codes, sole_child=False)

    # Encoder matching: the parent latent's row w_0 − 2 w_3 still matches parent 0 best (1/√5), and the
    # c* latent reads w_3 alone, so the verdict is the same.
    enc = absorption_rates(model, source, codes=codes, match="encoder")
    assert enc["parents"][0]["latent"] == 0 and enc["rates"] == out["rates"]


def test_dead_parent_without_child_latent_is_not_absorption(source: LRBSource) -> None:
    W_E, b_E, W_D = _clean(source)
    for j in (1, 5, 6, 7):  # parent 1 and all its children: latents that never fire
        W_E[j] = 0.0
        b_E[j] = -1.0
    model = _dictionary(W_E, b_E, W_D)
    codes = source.sample_codes(2000, "test")
    out = absorption_rates(model, source, codes=codes)
    assert all(out["rates"][c] == 0.0 for c in range(2, 8))  # condition (b) fails for 5, 6, 7
    assert all(out["parent_silent"][c] == 1.0 for c in (5, 6, 7))  # condition (a) alone holds
    assert out["parents"][1]["silent_rate"] == 1.0 and out["parents"][0]["silent_rate"] == 0.0
    assert out["rates"] == _reference(model, source, codes, sole_child=True)

    # A latent that fires on child 5 but writes −w_5 does not carry the child (signed cosine) ...
    W_D[:, 5] = -W_D[:, 5]
    W_E[5], b_E[5] = torch.linalg.pinv(source.W_p.double()).float()[5], -0.1
    flipped = _dictionary(W_E, b_E, W_D)
    assert absorption_rates(flipped, source, codes=codes)["rates"][5] == 0.0
    # ... unless |cos| is asked for.
    assert absorption_rates(flipped, source, codes=codes, absolute=True)["rates"][5] == 1.0


def test_random_dictionary_matches_the_loop() -> None:
    """A deeper tree, a random ReLU dictionary and given x_p: the vectorised counts equal the loop's."""
    src = LRBSource(lrb_preset("tiny", S=0.7, hierarchy={"n_parents": 1, "children_per_parent": 2, "depth": 2}))
    torch.manual_seed(0)
    model = SparseDictionary(
        ModelConfig(n_latents=48, n_in=20, method={"name": "relu"}), torch.Generator().manual_seed(1)
    )
    with torch.no_grad():
        model.b_E.uniform_(-0.8, 0.2)  # type: ignore[union-attr]
    codes = src.sample_codes(1500, "test")
    for sole, absolute in ((True, False), (False, True)):
        out = absorption_rates(
            model,
            src,
            codes=codes,
            x_p=codes @ src.W_p.T,
            cos_threshold=0.3,
            batch_size=500,
            sole_child=sole,
            absolute=absolute,
        )
        expected = _reference(model, src, codes, sole_child=sole, thr=0.3, absolute=absolute)
        assert out["rates"].keys() == expected.keys() == set(range(1, 7))
        for c, r in expected.items():
            assert out["rates"][c] == pytest.approx(r, nan_ok=True)


def test_refusals(source: LRBSource) -> None:
    model = _dictionary(*_clean(source))
    with pytest.raises(ConfigError, match="hierarchical data"):
        absorption_rates(model, LRBSource(lrb_preset("tiny")))
    with pytest.raises(ConfigError, match="match = 'both'"):
        absorption_rates(model, source, match="both")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="cos_threshold"):
        absorption_rates(model, source, cos_threshold=1.5)


def test_options_object_equals_keyword_overrides(source: LRBSource) -> None:
    model = _absorbing(source)
    codes = source.sample_codes(500, "test")
    options = AbsorptionOptions(sole_child=False, batch_size=128)
    assert absorption_rates(model, source, codes=codes, options=options) == absorption_rates(
        model, source, codes=codes, sole_child=False, batch_size=128
    )
    with pytest.raises(ConfigError, match="unknown absorption option 'threshold'"):
        absorption_rates(model, source, codes=codes, threshold=0.5)
