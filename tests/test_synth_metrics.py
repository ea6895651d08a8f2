"""SynthSAEBench metrics (sdlkit.eval.synth_metrics) on worked examples; their agreement with SAELens's own code
is tests/test_synth_crosscheck.py."""

from __future__ import annotations

import pytest
import torch
from scipy.optimize import linear_sum_assignment

from sdlkit.core.model import ModelConfig, SparseDictionary
from sdlkit.data import LRBSource, lrb_preset
from sdlkit.data.synth import SynthSource, synth_preset
from sdlkit.eval.metrics import reconstruction_metrics
from sdlkit.eval.synth_metrics import best_features, mcc, sample_pairs, synth_metrics, uniqueness

N = 6


def _codes(rows: int = 400, seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return (torch.rand(rows, N, generator=gen) < 0.3) * (1 + torch.rand(rows, N, generator=gen))


def _identity_model(extra_dead: bool = False, decoder_scale: float = 1.0) -> SparseDictionary:
    """Reads and writes the standard basis of R^N exactly (ReLU, no bias); optionally one more latent that
    never fires."""
    m = N + int(extra_dead)
    model = SparseDictionary(ModelConfig(n_in=N, n_out=N, n_latents=m, method={"name": "relu"}))
    with torch.no_grad():
        model.W_E.zero_()
        model.W_E[:N] = torch.eye(N)
        model.W_D.zero_()
        model.W_D[:, :N] = decoder_scale * torch.eye(N)
        model.b_E.zero_()
        model.b_D.zero_()
        if extra_dead:
            model.W_D[0, N] = 1.0  # same direction as latent 0
            model.b_E[N] = -100.0
    return model


def test_a_perfect_dictionary_scores_one_everywhere():
    codes = _codes()
    truth = torch.eye(N)
    result = synth_metrics(_identity_model(), [(codes, codes)], truth)
    for key in ("explained_variance", "mcc", "uniqueness", "precision", "recall", "f1", "accuracy", "shrinkage"):
        assert result[key] == pytest.approx(1.0), key
    assert result["l0"] == pytest.approx(result["true_l0"]) and result["dead_latents"] == 0
    assert result["n_samples"] == 400


def test_shrinkage_dead_latents_and_macro_averages():
    codes = _codes()
    truth = torch.eye(N)
    half = synth_metrics(_identity_model(decoder_scale=0.5), [(codes, codes)], truth)
    assert half["shrinkage"] == pytest.approx(0.5)
    assert half["explained_variance"] < 1
    dead = synth_metrics(
        _identity_model(extra_dead=True), [(codes[:200], codes[:200]), (codes[200:], codes[200:])], truth
    )
    assert dead["dead_latents"] == 1
    # The dead latent is a detector that never fires: precision = recall = F1 = 0, averaged over N + 1 latents.
    assert dead["precision"] == pytest.approx(N / (N + 1)) and dead["f1"] == pytest.approx(N / (N + 1))
    # It points where latent 0 does: N distinct best features over N + 1 latents.
    assert dead["uniqueness"] == pytest.approx(N / (N + 1))
    assert dead["mcc"] == pytest.approx(1.0)  # the matching pairs N latents with N features


def test_explained_variance_is_one_minus_fvu():
    source = SynthSource(synth_preset("tiny"))
    model = SparseDictionary(
        ModelConfig(n_in=32, n_out=32, n_latents=48, method={"name": "relu"}), torch.Generator().manual_seed(0)
    )
    batch, codes = source.sample(2048, "ev", 0)
    ours = synth_metrics(model, [(batch.x_p, codes)], source.ground_truth()["W_p"])
    assert ours["explained_variance"] == pytest.approx(1 - reconstruction_metrics(model, batch)["fvu"], abs=1e-9)


def test_mcc_is_the_optimal_matching_and_candidates_give_a_lower_bound():
    gen = torch.Generator().manual_seed(0)
    truth = torch.randn(8, 20, generator=gen)
    decoder = truth.T[torch.randperm(20, generator=gen)[:12]] + 0.3 * torch.randn(12, 8, generator=gen)
    exact = mcc(decoder, truth)
    cos = torch.nn.functional.normalize(decoder, dim=1) @ torch.nn.functional.normalize(truth, dim=0)
    rows, cols = linear_sum_assignment(cos.abs().numpy(), maximize=True)
    assert exact == pytest.approx(float(cos.abs()[rows, cols].mean()), abs=1e-6)
    assert mcc(decoder, truth, candidates=1) <= exact + 1e-12


def test_best_features_and_uniqueness():
    truth = torch.eye(3)
    decoder = torch.tensor([[1.0, 0.1, 0.0], [0.9, 0.0, 0.2], [0.0, 0.0, -2.0]])
    best = best_features(decoder, truth)
    assert best.tolist() == [0, 0, 2]  # |cos| ignores sign
    assert uniqueness(best) == pytest.approx(2 / 3)


def test_usable_on_lrb_data():
    source = LRBSource(lrb_preset("tiny"))
    model = SparseDictionary(
        ModelConfig(n_in=20, n_out=20, n_latents=30, method={"name": "relu"}), torch.Generator().manual_seed(0)
    )
    pairs = list(sample_pairs(source, 1000, batch_size=400))
    assert [len(x) for x, _ in pairs] == [400, 400, 200]
    x, codes = pairs[0]
    assert torch.allclose(x, codes @ source.W_p.T, atol=1e-5)
    result = synth_metrics(model, pairs, source.ground_truth()["W_p"])
    assert 0 <= result["mcc"] <= 1 and result["n_samples"] == 1000
