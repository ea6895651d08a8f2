"""Held-out reconstruction metrics against direct computations."""

import pytest
import torch

from sdlkit.core import model as model_module
from sdlkit.core.kernels import SparseCodes
from sdlkit.core.model import ModelConfig, SparseDictionary
from sdlkit.data import Batch
from sdlkit.eval.metrics import reconstruction_metrics


def test_metrics_match_direct_computation_and_ignore_chunking():
    torch.manual_seed(0)
    model = SparseDictionary(ModelConfig(n_in=6, n_latents=20, method={"name": "topk", "k": 3}))
    x = torch.randn(100, 6) + 2.0
    out = model(x)
    err = (x - out.x_hat).pow(2).sum()
    total = (x - x.mean(0)).pow(2).sum()
    for chunk in (7, 1000):
        m = reconstruction_metrics(model, Batch(x, x), chunk_size=chunk)
        assert abs(m["mse"] - err.item() / 100) < 1e-5
        assert abs(m["fvu"] - (err / total).item()) < 1e-6
        assert m["l0"] == 3.0
        assert abs(m["never_fired_fraction"] - (1 - (out.x_q != 0).any(0).double().mean().item())) < 1e-12


def test_crosscoder_gets_fvu_per_source():
    torch.manual_seed(1)
    model = SparseDictionary(ModelConfig(n_in=8, n_latents=16, in_blocks=[3, 5], out_blocks=[3, 5], method="relu"))
    x = torch.randn(50, 8)
    out = model(x)
    m = reconstruction_metrics(model, Batch(x, x))
    for j, sl in enumerate((slice(0, 3), slice(3, 8))):
        expected = (x[:, sl] - out.x_hat[:, sl]).pow(2).sum() / (x[:, sl] - x[:, sl].mean(0)).pow(2).sum()
        assert abs(m[f"fvu_source_{j}"] - expected.item()) < 1e-6
    assert "fvu_source_0" not in reconstruction_metrics(
        SparseDictionary(ModelConfig(n_in=8, n_latents=16, method="relu")), Batch(x, x)
    )


def test_dense_fraction_counts_latents_firing_on_more_than_the_threshold():
    torch.manual_seed(2)
    model = SparseDictionary(ModelConfig(n_in=6, n_latents=20, method="relu"))
    x = torch.randn(400, 6)
    frequency = (model(x).x_q != 0).float().mean(0)
    m = reconstruction_metrics(model, Batch(x, x), chunk_size=64)
    assert m["n_samples"] == 400
    assert abs(m["dense_fraction"] - (frequency > 0.1).float().mean().item()) < 1e-9
    assert 0 < m["dense_fraction"] <= 1  # random ReLU codes fire on about half the inputs


@pytest.mark.parametrize("method", [{"name": "topk", "k": 3}, "relu"])
def test_metrics_never_hold_more_than_a_block_of_dense_codes(method, monkeypatch):
    """The forward runs on row blocks of at most BLOCK_ENTRIES codes (here 5 rows of 20 latents) and the TopK
    family's fire counts come from its sparse entries (to_dense would fail); the numbers are one forward's."""
    torch.manual_seed(3)
    model = SparseDictionary(ModelConfig(n_in=6, n_latents=20, method=method))
    x = torch.randn(64, 6)
    out = model(x)
    err, total = (x - out.x_hat).pow(2).sum(), (x - x.mean(0)).pow(2).sum()
    fired = out.x_q != 0
    seen = []
    forward = SparseDictionary.forward

    def spy(self, x_p):
        seen.append(len(x_p))
        return forward(self, x_p)

    def dense(self):
        raise AssertionError("a dense x_q was built")

    monkeypatch.setattr(model_module, "BLOCK_ENTRIES", 5 * 20)
    monkeypatch.setattr(SparseDictionary, "forward", spy)
    monkeypatch.setattr(SparseCodes, "to_dense", dense)
    m = reconstruction_metrics(model, Batch(x, x), chunk_size=32)
    assert max(seen) == (32 if model.config.sparse_kernel else 5)  # the sparse kernel is bounded on its own
    assert m["mse"] == pytest.approx(err.item() / 64, rel=1e-6) and m["fvu"] == pytest.approx((err / total).item())
    assert m["l0"] == fired.sum().item() / 64
    assert m["never_fired_fraction"] == (~fired.any(0)).double().mean().item()
