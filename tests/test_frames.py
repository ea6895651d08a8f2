"""The LRB frame option: the Gaussian draw of App. C, its nearest tight frame, and the knob between them."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from sdlkit.data.lrb import LRBSource, lrb_preset
from sdlkit.data.lrb.features import frame_properties, make_feature_matrix, max_interference, tighten
from sdlkit.errors import ConfigError


def _cond(W: torch.Tensor) -> float:
    s = np.linalg.svd(W.double().numpy(), compute_uv=False)
    return float((s.max() / s.min()) ** 2)


def test_tight_frame_is_well_conditioned_and_meets_the_same_M() -> None:
    gaussian = LRBSource(lrb_preset("quick"))
    tight = LRBSource(lrb_preset("quick", frame="tight"))
    assert _cond(gaussian.W_p) > 50 and _cond(tight.W_p) < 1.5
    assert max_interference(gaussian.W_p) <= 0.1 and max_interference(tight.W_p) <= 0.1
    assert torch.allclose(tight.W_p.norm(dim=0), torch.ones(260), atol=1e-5)


def test_tightness_zero_is_the_gaussian_frame_bit_for_bit() -> None:
    gaussian = LRBSource(lrb_preset("tiny"))
    zero = LRBSource(lrb_preset("tiny", frame="tight", tightness=0.0))
    assert torch.equal(gaussian.W_p, zero.W_p)
    assert torch.equal(gaussian.batch(3, 16).x_p, zero.batch(3, 16).x_p)


def test_the_knob_lowers_the_condition_number_monotonically() -> None:
    g = torch.Generator().manual_seed(1)
    W = torch.randn(40, 52, generator=g, dtype=torch.float64)
    conds = [_cond(tighten(W, t)) for t in (0.0, 0.25, 0.5, 0.75, 1.0)]
    assert conds == sorted(conds, reverse=True) and conds[-1] < 2 < 20 < conds[0]
    # t = 1 before the renormalisation: all singular values equal, i.e. U Vᵀ
    U, _, Vh = torch.linalg.svd(W, full_matrices=False)
    expected = U @ Vh
    assert torch.allclose(tighten(W, 1.0), expected / expected.norm(dim=0), atol=1e-10)


def test_fewer_features_than_dims_tighten_to_orthonormal_columns() -> None:
    W = make_feature_matrix(30, 20, 0.3, generator=torch.Generator().manual_seed(0), tightness=1.0)
    assert torch.allclose(W.T @ W, torch.eye(20), atol=1e-5)


def test_frame_properties_against_direct_computation() -> None:
    W = make_feature_matrix(20, 26, 0.3, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    props = frame_properties(W)
    A = W.numpy()
    G = A.T @ A
    off = ~np.eye(26, dtype=bool)
    dual = np.linalg.inv(A @ A.T) @ A
    cos = (A * dual).sum(0) / (np.linalg.norm(A, axis=0) * np.linalg.norm(dual, axis=0))
    assert props["condition_number"] == pytest.approx(_cond(W), rel=1e-9)
    assert props["max_interference"] == pytest.approx(G[off].max(), abs=1e-12)
    assert props["mean_abs_interference"] == pytest.approx(np.abs(G[off]).mean(), abs=1e-12)
    assert props["dual_cosine"] == pytest.approx(cos.mean(), abs=1e-12)


def test_transcoder_target_and_crosscoder_blocks_follow_the_frame() -> None:
    transcoder = LRBSource(lrb_preset("quick", mode="transcoder", frame="tight"))
    crosscoder = LRBSource(lrb_preset("quick", mode="crosscoder", n_sources=2, frame="tight"))
    assert _cond(transcoder.W_r) < 1.5 and all(_cond(block) < 1.5 for block in crosscoder.W_p_blocks)
    frame = crosscoder.frame()
    assert frame["frame"] == "tight" and frame["tightness"] == 1.0 and frame["condition_number"] < 1.5


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"tightness": 0.5}, "tightness is only allowed with frame: tight"),
        ({"frame": "tight", "tightness": 1.5}, "tightness"),
        ({"frame": "round"}, "frame"),
    ],
)
def test_bad_frame_settings_are_refused(overrides: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        lrb_preset("tiny", **overrides)
