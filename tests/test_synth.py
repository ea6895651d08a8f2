"""SynthSAEBench data (sdlkit.data.synth): config, the model's parts, the sampler against a dense reference
implementation of the same specification, the source's random-access contract, and its registration."""

from __future__ import annotations

import math

import pytest
import torch

from sdlkit.config import run_config
from sdlkit.data import build_source
from sdlkit.data.synth import SYNTH_PRESETS, SynthSource, build_model, synth_preset
from sdlkit.data.synth.config import ForestConfig
from sdlkit.data.synth.features import normal_quantile_upper, orthogonalize, zipf_probabilities
from sdlkit.data.synth.forest import build_forest, compensated
from sdlkit.data.synth.sampler import bernoulli_positions, rare_nonzero
from sdlkit.data.synth.stats import CodeStatistics, compare_statistics, mean_max_cos
from sdlkit.errors import ConfigError
from sdlkit.train import Trainer


@pytest.fixture(scope="module")
def tiny() -> SynthSource:
    return SynthSource(synth_preset("tiny"))


# ----- config -------------------------------------------------------------------------------------------------
def test_presets_validate_and_published_settings():
    for name in SYNTH_PRESETS:
        assert synth_preset(name).kind == "synth"
    published = synth_preset("synthsaebench-16k")
    assert (published.n_features, published.hidden_dim) == (16_384, 768)
    assert published.hierarchy.n_tree_features == 10_880  # 128 · (1 + 4 + 16 + 64)
    assert (published.correlation.rank, published.correlation.scale) == (25, 0.1)


def test_config_errors_are_one_line():
    with pytest.raises(ConfigError, match="unknown synth preset"):
        synth_preset("nope")
    with pytest.raises(ConfigError, match="hierarchy needs"):
        synth_preset("tiny", n_features=20)
    with pytest.raises(ConfigError, match="min_prob"):
        synth_preset("tiny", firing={"exponent": 1.0, "max_prob": 0.1, "min_prob": 0.2})


def test_run_config_takes_kind_synth_with_a_preset():
    config = run_config({"data": {"kind": "synth", "preset": "tiny", "seed": 3}, "model": {"n_latents": 16}})
    assert config.data.kind == "synth" and config.data.seed == 3
    assert (config.model.n_in, config.model.n_out) == (32, 32)


# ----- the model's parts --------------------------------------------------------------------------------------
def test_zipf_probabilities_span_the_range():
    p = zipf_probabilities(100, 0.5, 0.4, 5e-4)
    assert p[0].item() == pytest.approx(0.4) and p[-1].item() == pytest.approx(5e-4)
    assert bool((p.diff() < 0).all())


def test_compensation_by_hand():
    # One root with two exclusive children: p = [0.5, 0.2, 0.1].
    forest = build_forest(ForestConfig(n_roots=1, branching=2, depth=1), 3, torch.Generator())
    probs = compensated(forest, torch.tensor([0.5, 0.2, 0.1], dtype=torch.float64))
    # child 1: 0.2 / 0.5 · (1 + 0.1 / 0.5) = 0.48; child 2: 0.1 / 0.5 · (1 + 0.2 / 0.5) = 0.28
    assert probs.tolist() == pytest.approx([0.5, 0.48, 0.28])


def test_forest_layout_is_level_major():
    forest = build_forest(ForestConfig(n_roots=2, branching=3, depth=2), 30, torch.Generator())
    assert forest.parent[:8].tolist() == [-1, -1, 0, 0, 0, 1, 1, 1]
    assert forest.parent[8:11].tolist() == [2, 2, 2] and forest.child_start[2].item() == 8
    assert forest.parent[26:].tolist() == [-1] * 4  # outside the trees
    assert forest.exclusive[:8].all() and not forest.exclusive[8:].any()


def test_orthogonalize_lowers_overlap_and_keeps_unit_rows():
    gen = torch.Generator().manual_seed(0)
    start = torch.randn(64, 16, generator=gen)
    start /= start.norm(dim=1, keepdim=True)
    out = orthogonalize(start, steps=50, lr=1e-2, chunk=16)
    assert torch.allclose(out.norm(dim=1), torch.ones(64), atol=1e-6)
    assert mean_max_cos(out) < mean_max_cos(start)
    assert torch.allclose(orthogonalize(start, 50, 1e-2, chunk=64), out, atol=1e-6)  # chunking changes nothing


def test_bernoulli_positions_count_is_binomial():
    gen = torch.Generator().manual_seed(1)
    total, p = 200_000, 0.01
    positions = bernoulli_positions(total, p, gen, torch.device("cpu"))
    assert bool((positions.diff() > 0).all()) and int(positions[-1]) < total
    assert abs(len(positions) - total * p) < 5 * math.sqrt(total * p * (1 - p))


def test_rare_nonzero_is_nonzero():
    gen = torch.Generator().manual_seed(2)
    for shape in [(37, 11), (8, 8), (1, 3), (100, 999)]:
        mask = torch.rand(shape, generator=gen) < 0.01
        assert torch.equal(rare_nonzero(mask), mask.reshape(-1).nonzero().squeeze(1))


# ----- the sampler against a dense reference -------------------------------------------------------------------
def _dense_reference(source: SynthSource, rows: int, gen: torch.Generator) -> torch.Tensor:
    """The specification drawn the obvious way (every feature of every sample, then the forest top-down)."""
    model = source.model
    n = model.n_features
    t = normal_quantile_upper(model.probs).float()
    if model.factor is not None:
        scale = (1 - model.factor.pow(2).sum(dim=1)).sqrt()
        g = torch.randn(rows, model.factor.shape[1], generator=gen) @ model.factor.T
        fire = g + scale * torch.randn(rows, n, generator=gen) > t
    else:
        fire = torch.rand(rows, n, generator=gen) < model.probs.float()
    codes = ((model.means + model.stds * torch.randn(rows, n, generator=gen)).relu() * fire).float()
    forest = model.forest
    for level in range(1, forest.depth + 1):
        for child in (forest.level == level).nonzero().squeeze(1).tolist():
            parent = int(forest.parent[child])
            codes[:, child] *= codes[:, parent] / model.means[parent]
        for parent in ((forest.level == level - 1) & forest.exclusive).nonzero().squeeze(1).tolist():
            block = slice(int(forest.child_start[parent]), int(forest.child_start[parent] + forest.child_count[parent]))
            on = codes[:, block] > 0
            score = torch.rand(on.shape, generator=gen) * on - (~on).float()
            winner = torch.nn.functional.one_hot(score.argmax(dim=1), on.shape[1]).bool()
            codes[:, block] *= winner
    return codes


def _statistics(source: SynthSource, draw, samples: int = 24_000, batch: int = 4000) -> dict:
    stats = CodeStatistics(source.model.n_features, source.model.forest, torch.arange(48))
    for index in range(samples // batch):
        stats.add(draw(index, batch))
    return stats.summary()


@pytest.mark.parametrize("correlation", [True, False])
def test_sampler_matches_the_dense_reference(correlation):
    config = synth_preset("tiny") if correlation else synth_preset("tiny", correlation=None)
    source = SynthSource(config)
    ours = _statistics(source, lambda i, rows: source.codes(i, rows))
    gen = torch.Generator().manual_seed(123)
    reference = _statistics(source, lambda i, rows: _dense_reference(source, rows, gen))
    failed = [c for c in compare_statistics(ours, reference) if not c["holds"]]
    assert failed == []
    assert ours["parent_violations"] == 0 and ours["exclusive_violations"] == 0


def test_a_huge_rare_dictionary_samples_without_dense_work():
    # 2M features: a dense [rows, n] draw would be 512M entries; the sampler touches only the ~60 active ones.
    config = synth_preset(
        "tiny",
        n_features=2_000_000,
        hidden_dim=4,
        hierarchy=None,
        correlation=None,
        orthogonalization=None,
        firing={"exponent": 1.0, "max_prob": 0.05, "min_prob": 1e-9},
    )
    source = SynthSource(config)
    row_ptr, col, _ = source.entries(0, 256)
    assert len(row_ptr) == 257 and 0 < len(col) < 10_000


# ----- the source -----------------------------------------------------------------------------------------------
def test_batches_are_random_access_and_reproducible(tiny):
    again = SynthSource(synth_preset("tiny"))
    assert torch.equal(tiny.batch(5, 64).x_p, again.batch(5, 64).x_p)
    assert not torch.equal(tiny.batch(5, 64).x_p, tiny.batch(6, 64).x_p)
    assert not torch.equal(tiny.batch(0, 64).x_p, tiny.eval_batch().x_p[:64])
    seeded = SynthSource(synth_preset("tiny", seed=1))
    assert not torch.equal(tiny.ground_truth()["W_p"], seeded.ground_truth()["W_p"])


def test_x_is_codes_times_the_dictionary_plus_bias(tiny):
    batch, codes = tiny.batch(2, 128), tiny.codes(2, 128)
    assert batch.x_r is batch.x_p
    expected = codes @ tiny.model.vectors + tiny.model.bias
    assert torch.allclose(batch.x_p, expected, atol=1e-4)
    sample, sample_codes = tiny.sample(64, "check", 0)
    assert torch.allclose(sample.x_p, sample_codes @ tiny.model.vectors + tiny.model.bias, atol=1e-4)


def test_ground_truth_and_directions(tiny):
    truth = tiny.ground_truth()
    assert truth["W_p"].shape == (32, 256) and torch.equal(truth["W_p"], truth["W_r"])
    assert truth["W_p"].data_ptr() != truth["W_r"].data_ptr()
    assert torch.allclose(truth["W_p"].norm(dim=0), torch.ones(256), atol=1e-5)
    assert tiny.known_directions().kind == "ground_truth" and tiny.known_directions("labels") is None
    assert 3 < tiny.true_l0 < 8


def test_build_model_parts_have_their_shapes():
    model = build_model(synth_preset("tiny"))
    assert model.vectors.shape == (256, 32) and model.bias.norm().item() == pytest.approx(0.5, rel=1e-5)
    assert model.factor.shape == (256, 4) and bool((model.factor.pow(2).sum(dim=1) <= 0.99 + 1e-6).all())
    assert bool((model.probs <= 1).all()) and bool(
        (model.probs[model.forest.parent >= 0] >= model.base_probs[model.forest.parent >= 0]).all()
    )


def test_trains_through_the_registry_with_anchors():
    values = {
        "data": {"kind": "synth", "preset": "tiny"},
        "model": {"n_latents": 32, "method": {"name": "topk", "k": 6}},
        "train": {"steps": 20, "batch_size": 128, "progress": False, "anchors": {"count": 4}},
    }
    config = run_config(values)
    result = Trainer(config, build_source(config.data)).fit()
    assert math.isfinite(result.metrics["fvu"]) and result.metrics["l0"] <= 6


def test_statistics_count_rule_violations_and_rates():
    forest = build_forest(ForestConfig(n_roots=1, branching=2, depth=1), 4, torch.Generator())
    codes = torch.tensor(
        [
            [1.0, 2.0, 0.0, 0.0],  # fine
            [0.0, 2.0, 0.0, 0.0],  # child 1 without its parent
            [1.0, 2.0, 3.0, 1.0],  # both exclusive children
        ]
    )
    stats = CodeStatistics(4, forest, torch.arange(4))
    stats.add(codes)
    summary = stats.summary()
    assert (summary["parent_violations"], summary["exclusive_violations"]) == (1, 1)
    assert summary["rate"].tolist() == pytest.approx([2 / 3, 1.0, 1 / 3, 1 / 3])
    assert summary["magnitude_mean"][1].item() == pytest.approx(2.0) and summary["l0"] == pytest.approx(7 / 3)
    assert mean_max_cos(torch.eye(3)) == 0.0
