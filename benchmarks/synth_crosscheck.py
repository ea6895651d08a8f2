"""sdlkit's SynthSAEBench against SAELens's own code (`sae_lens.synthetic`), issue 14 item 3.

(a) Data. SAELens builds a model (its dictionary, compensated probabilities, magnitude parameters, copula
    factor, forest) from the equivalent config; its parts are loaded into an sdlkit `SynthModel`, and both
    samplers draw independently from that one model: per-feature firing rates, mean L0, the forest's rules,
    joint firing rates of tracked pairs and per-feature active-magnitude means must agree within sampling
    error (sdlkit.data.synth.stats.compare_statistics: Bonferroni-corrected z-tests). The deterministic parts
    must agree exactly (forest layout and exclusive flags; probabilities and means to float32 rounding); sdlkit's
    own random parts are checked in distribution (σ_i, copula row norms, the dictionary's mean max |cos| within
    the spread over seeds); and the orthogonalisation, run from SAELens's starting dictionary, must land on
    SAELens's result.
(b) Metrics. One SAE (a ReLU and a BatchTopK dictionary built near the truth, exported with
    sdlkit.interop.saelens and loaded by SAELens) on one fixed set of samples: sdlkit.eval.synth_metrics
    against `eval_sae_on_synthetic_data` (fed the same codes through a replaying generator), |difference|
    <= 1e-6 per metric.

Needs a Python with sae_lens (not an sdlkit dependency):
    PYTHONPATH=src OMP_NUM_THREADS=1 /path/to/venv-with-sae-lens/bin/python benchmarks/synth_crosscheck.py
writes benchmarks/results/synth_crosscheck.json; `--preset tiny --samples 20000` is the quick version that
tests/test_synth_crosscheck.py runs.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from sae_lens import SAE
from sae_lens.synthetic import (
    FeatureDictionary,
    FoldedNormalMagnitudeConfig,
    HierarchyConfig,
    LinearMagnitudeConfig,
    LowRankCorrelationConfig,
    OrthogonalizationConfig,
    SyntheticModel,
    SyntheticModelConfig,
    ZipfianFiringProbabilityConfig,
    eval_sae_on_synthetic_data,
)
from sae_lens.synthetic.feature_dictionary import orthogonalize_embeddings
from safetensors.torch import save_file
from scipy.stats import t as student_t

from sdlkit.core.model import ModelConfig, SparseDictionary
from sdlkit.data.synth import SynthConfig, SynthModel, SynthSource, build_model, synth_preset
from sdlkit.data.synth.features import orthogonalize, zipf_probabilities
from sdlkit.data.synth.forest import Forest, build_forest, compensated
from sdlkit.data.synth.stats import CodeStatistics, compare_statistics, mean_max_cos
from sdlkit.eval.synth_metrics import synth_metrics
from sdlkit.interop.saelens import to_files

OUT = Path(__file__).parent / "results" / "synth_crosscheck.json"
METRIC_TOLERANCE = 1e-6
TRACKED = 64
"""Features whose pairwise joint firing rates are compared: the first 64 (roots, then the first children)."""


# ----- the SAELens side -----------------------------------------------------------------------------------
def saelens_config(config: SynthConfig, seed: int) -> SyntheticModelConfig:
    """SAELens's SyntheticModelConfig for an sdlkit SynthConfig (its seed is SAELens's own)."""
    forest, corr, ortho, mags = config.hierarchy, config.correlation, config.orthogonalization, config.magnitudes
    hierarchy = None
    if forest is not None:
        hierarchy = HierarchyConfig(
            total_root_nodes=forest.n_roots,
            branching_factor=forest.branching,
            max_depth=forest.depth,
            mutually_exclusive_portion=forest.exclusive_portion,
            mutually_exclusive_min_depth=forest.exclusive_min_depth,
            compensate_probabilities=forest.compensate,
            scale_children_by_parent=forest.scale_children,
        )
    return SyntheticModelConfig(
        num_features=config.n_features,
        hidden_dim=config.hidden_dim,
        firing_probability=ZipfianFiringProbabilityConfig(**config.firing.model_dump()),
        hierarchy=hierarchy,
        orthogonalization=OrthogonalizationConfig(num_steps=ortho.steps, lr=ortho.lr) if ortho else None,
        correlation=LowRankCorrelationConfig(rank=corr.rank, correlation_scale=corr.scale) if corr else None,
        mean_firing_magnitudes=LinearMagnitudeConfig(start=mags.mean_start, end=mags.mean_end),
        std_firing_magnitudes=FoldedNormalMagnitudeConfig(mean=mags.std_mean, std=mags.std_std),
        bias=config.bias,
        seed=seed,
    )


def saelens_forest(model: SyntheticModel, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(parent [n], exclusive [n]) of SAELens's generated hierarchy."""
    parent = torch.full((n,), -1, dtype=torch.long)
    exclusive = torch.zeros(n, dtype=torch.bool)
    stack = list(model.hierarchy.roots) if model.hierarchy is not None else []
    while stack:
        node = stack.pop()
        exclusive[node.feature_index] = node.mutually_exclusive_children
        for child in node.children:
            parent[child.feature_index] = node.feature_index
            stack.append(child)
    return parent, exclusive


def shared_model(config: SynthConfig, theirs: SyntheticModel) -> SynthModel:
    """An sdlkit SynthModel holding SAELens's drawn parts (and sdlkit's forest, checked equal to SAELens's)."""
    generator = theirs.activation_generator
    forest = build_forest(config.hierarchy, config.n_features, torch.Generator()) if config.hierarchy else None
    factor = theirs.correlation_matrix.correlation_factor if theirs.correlation_matrix is not None else None
    return SynthModel(
        vectors=theirs.feature_dict.feature_vectors.detach().clone(),
        bias=theirs.feature_dict.bias.detach().clone(),
        base_probs=zipf_probabilities(config.n_features, **config.firing.model_dump()),
        probs=generator.firing_probabilities.double(),
        means=generator.mean_firing_magnitudes.clone(),
        stds=generator.std_firing_magnitudes.clone(),
        factor=factor,
        forest=forest,
    )


# ----- (a) data ---------------------------------------------------------------------------------------------
def _statistics(draw: Any, samples: int, batch: int, n: int, forest: Forest | None) -> dict[str, Any]:
    stats = CodeStatistics(n, forest, torch.arange(min(n, TRACKED)))
    for index, start in enumerate(range(0, samples, batch)):
        stats.add(draw(index, min(batch, samples - start)))
    return stats.summary()


def _two_sample_z(a: torch.Tensor, b: torch.Tensor) -> float:
    """z of the difference of two independent sample means."""
    return float((a.mean() - b.mean()) / math.sqrt(a.var() / len(a) + b.var() / len(b)))


def structure_checks(config: SynthConfig, theirs: SyntheticModel, ours: SynthModel) -> list[dict[str, Any]]:
    """Deterministic parts equal; sdlkit's own random parts distributed like SAELens's."""
    checks = []
    if config.hierarchy is not None:
        parent, exclusive = saelens_forest(theirs, config.n_features)
        own = build_forest(config.hierarchy, config.n_features, torch.Generator())
        same = torch.equal(parent, own.parent) and torch.equal(exclusive, own.exclusive)
        checks.append({"check": "forest layout and exclusive flags", "holds": same, "tolerance": "identical"})
        probs = compensated(own, zipf_probabilities(config.n_features, **config.firing.model_dump()))
    else:
        probs = zipf_probabilities(config.n_features, **config.firing.model_dump())
    gen = theirs.activation_generator
    error = float(((probs - gen.firing_probabilities.double()).abs() / probs).max())
    checks.append(
        {
            "check": "compensated probabilities",
            "max_rel_error": error,
            "tolerance": "<= 1e-5 (SAELens computes in float32, ε = 1.2e-7, and r_i − r_n cancels near p_min)",
            "holds": error <= 1e-5,
        }
    )
    error = float((ours.means - gen.mean_firing_magnitudes).abs().max())
    checks.append({"check": "magnitude means", "max_abs_error": error, "tolerance": "<= 1e-6", "holds": error <= 1e-6})
    z = _two_sample_z(ours.stds.double(), gen.std_firing_magnitudes.double())
    checks.append(
        {
            "check": "σ_i distribution (mean)",
            "z": z,
            "tolerance": "|z| <= 4 (n features per side)",
            "holds": abs(z) <= 4,
        }
    )
    if ours.factor is not None and theirs.correlation_matrix is not None:
        z = _two_sample_z(
            ours.factor.double().norm(dim=1), theirs.correlation_matrix.correlation_factor.double().norm(dim=1)
        )
        checks.append(
            {"check": "copula factor row norms (mean)", "z": z, "tolerance": "|z| <= 4", "holds": abs(z) <= 4}
        )
    return checks


def _welch(a: list[float], b: list[float]) -> tuple[float, float]:
    """(Welch's t of mean(a) − mean(b), its two-sided 0.1% critical value from the Welch–Satterthwaite dof)."""
    ta, tb = torch.tensor(a, dtype=torch.float64), torch.tensor(b, dtype=torch.float64)
    va, vb = float(ta.var()) / len(a), float(tb.var()) / len(b)
    t = float(ta.mean() - tb.mean()) / math.sqrt(va + vb)
    dof = (va + vb) ** 2 / (va**2 / (len(a) - 1) + vb**2 / (len(b) - 1))
    return t, float(student_t.ppf(1 - 0.0005, dof))


def dictionary_checks(config: SynthConfig, seeds: int) -> list[dict[str, Any]]:
    """The orthogonalisation, started from one dictionary, lands on SAELens's result; the mean max |cos| of the
    dictionaries sdlkit and SAELens build from `seeds` seeds each agree (Welch's t-test at 0.1%)."""
    ortho = config.orthogonalization
    checks = []
    if ortho is not None:
        start = torch.randn(config.n_features, config.hidden_dim, generator=torch.Generator().manual_seed(7))
        start /= start.norm(dim=1, keepdim=True)
        theirs_out = orthogonalize_embeddings(start, num_steps=ortho.steps, lr=ortho.lr)
        error = float((orthogonalize(start, ortho.steps, ortho.lr) - theirs_out).abs().max())
        checks.append(
            {
                "check": "orthogonalisation from one start",
                "max_abs_error": error,
                "tolerance": "<= 1e-5 (float32 sums in another order)",
                "holds": error <= 1e-5,
            }
        )
    ours = [mean_max_cos(build_model(config.model_copy(update={"seed": s})).vectors) for s in range(seeds)]
    theirs = [
        mean_max_cos(SyntheticModel(saelens_config(config, seed=s)).feature_dict.feature_vectors.detach())
        for s in range(seeds)
    ]
    t, critical = _welch(ours, theirs)
    checks.append(
        {
            "check": "dictionary mean max |cos|",
            "sdlkit": ours,
            "saelens": theirs,
            "t": t,
            "tolerance": f"|t| <= {critical:.2f} (Welch, 0.1% two-sided, {seeds} seeds per side)",
            "holds": abs(t) <= critical,
        }
    )
    return checks


def data_checks(config: SynthConfig, samples: int, batch: int = 4096, seeds: int = 5) -> dict[str, Any]:
    """Every check of part (a) on `samples` samples per side."""
    theirs = SyntheticModel(saelens_config(config, seed=42))
    ours = shared_model(config, theirs)
    source = SynthSource(config, model=ours)
    forest = ours.forest
    n = config.n_features
    started = time.perf_counter()
    a = _statistics(lambda i, rows: source.sample_codes(rows, "crosscheck", i), samples, batch, n, forest)
    ours_seconds = time.perf_counter() - started
    started = time.perf_counter()
    b = _statistics(lambda i, rows: theirs.activation_generator.sample(rows), samples, batch, n, forest)
    theirs_seconds = time.perf_counter() - started
    checks = compare_statistics(a, b)
    checks += structure_checks(config, theirs, build_model(config))
    checks += dictionary_checks(config, seeds)
    return {
        "samples_per_side": samples,
        "l0": {"sdlkit": a["l0"], "saelens": b["l0"]},
        "sampling_seconds": {"sdlkit": ours_seconds, "saelens": theirs_seconds},
        "checks": checks,
    }


# ----- (b) metrics ------------------------------------------------------------------------------------------
class Replay:
    """Stands in for SAELens's ActivationGenerator: hands out stored code batches in order."""

    def __init__(self, batches: list[torch.Tensor]):
        self.batches = iter(batches)

    def sample(self, batch_size: int) -> torch.Tensor:
        batch = next(self.batches)
        assert batch.shape[0] == batch_size
        return batch


def near_truth_dictionary(source: SynthSource, method: dict[str, Any], seed: int = 0) -> SparseDictionary:
    """A dictionary of n/4 latents reading noisy copies of random true features (so every metric is neither 0
    nor 1): W_D columns = unit(w + 0.5·noise/√d), W_E = W_Dᵀ, b_E = −2, b_D = the data's bias."""
    gen = torch.Generator().manual_seed(seed)
    W = source.model.vectors  # [n, d]
    m = max(2, W.shape[0] // 4)
    picks = torch.randperm(W.shape[0], generator=gen)[:m]
    columns = W[picks] + 0.5 * torch.randn(m, W.shape[1], generator=gen) / W.shape[1] ** 0.5
    columns /= columns.norm(dim=1, keepdim=True)
    model = SparseDictionary(ModelConfig(n_in=W.shape[1], n_out=W.shape[1], n_latents=m, method=method), gen)
    with torch.no_grad():
        model.W_D.copy_(columns.T)
        model.W_E.copy_(columns)
        model.b_E.fill_(-2.0)
        model.b_D.copy_(source.model.bias)
        if method["name"] == "batchtopk":
            model.activation.threshold.fill_(1.0)
    return model.eval()


def saelens_sae(model: SparseDictionary, folder: Path) -> SAE:
    """`model` exported by sdlkit.interop.saelens and loaded back by SAELens."""
    cfg, tensors = to_files(model, {})
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "cfg.json").write_text(json.dumps(cfg))
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(folder / "sae_weights.safetensors"))
    return SAE.load_from_disk(str(folder))


def metric_checks(config: SynthConfig, samples: int, batch: int = 4096) -> list[dict[str, Any]]:
    """Part (b) for a ReLU and a BatchTopK dictionary."""
    source = SynthSource(config)
    codes = [source.sample_codes(min(batch, samples - s), "metrics", i) for i, s in enumerate(range(0, samples, batch))]
    features = FeatureDictionary(config.n_features, config.hidden_dim, initializer=None)
    features.feature_vectors.data = source.model.vectors.clone()
    features.bias.data = source.model.bias.clone()
    truth = source.ground_truth()["W_p"]
    records = []
    for method in ({"name": "relu"}, {"name": "batchtopk", "k": 8}):
        model = near_truth_dictionary(source, method)
        with tempfile.TemporaryDirectory() as tmp:
            sae = saelens_sae(model, Path(tmp) / "sae")
            theirs = eval_sae_on_synthetic_data(sae, features, Replay(codes), num_samples=samples, batch_size=batch)
        with torch.no_grad():
            pairs = [(features(c), c) for c in codes]  # the very x SAELens evaluates on
        ours = synth_metrics(model, pairs, truth)
        theirs_flat = {
            "explained_variance": theirs.explained_variance,
            "mcc": theirs.mcc,
            "uniqueness": theirs.uniqueness,
            "precision": theirs.classification.precision,
            "recall": theirs.classification.recall,
            "f1": theirs.classification.f1_score,
            "accuracy": theirs.classification.accuracy,
            "shrinkage": theirs.shrinkage,
            "l0": theirs.sae_l0,
            "true_l0": theirs.true_l0,
            "dead_latents": theirs.dead_latents,
        }
        for name, value in theirs_flat.items():
            diff = abs(ours[name] - value)
            records.append(
                {
                    "check": f"{method['name']} {name}",
                    "sdlkit": ours[name],
                    "saelens": value,
                    "abs_difference": diff,
                    "tolerance": f"<= {METRIC_TOLERANCE:g}",
                    "holds": diff <= METRIC_TOLERANCE,
                }
            )
    return records


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="cpu", help="synth preset (default: cpu)")
    parser.add_argument("--samples", type=int, default=200_000, help="samples per side for (a) (default 200,000)")
    parser.add_argument("--seeds", type=int, default=5, help="dictionaries built per side (default 5)")
    parser.add_argument("--metric-samples", type=int, default=20_000, help="samples for (b) (default 20,000)")
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args()
    logging.disable(logging.WARNING)  # SAELens logs a progress line per orthogonalisation step
    torch.manual_seed(0)  # SAELens's sampler draws from torch's global generator
    config = synth_preset(args.preset)
    started = time.perf_counter()
    result = {
        "preset": args.preset,
        "config": config.model_dump(mode="json"),
        "data": data_checks(config, args.samples, seeds=args.seeds),
        "metrics": metric_checks(config, args.metric_samples),
    }
    result["seconds"] = time.perf_counter() - started
    checks = result["data"]["checks"] + result["metrics"]
    result["all_hold"] = all(c["holds"] for c in checks)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1, default=float))
    for check in checks:
        numbers = {k: v for k, v in check.items() if k not in ("check", "holds", "tolerance")}
        print(f"{'ok  ' if check['holds'] else 'FAIL'} {check['check']}: {numbers} ({check['tolerance']})")
    print(f"{sum(c['holds'] for c in checks)} of {len(checks)} checks hold; {result['seconds']:.0f} s; {args.out}")


if __name__ == "__main__":
    main()
