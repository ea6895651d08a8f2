"""`data: {kind: synth, ...}`: the settings of a SynthSAEBench model, and its named presets.

The fields follow SAELens's `SyntheticModelConfig` (sae_lens.synthetic, SAELens 6.x), grouped the same way:
firing probabilities (Zipfian), a forest of hierarchical features, a low-rank Gaussian-copula correlation,
magnitudes (means linear over the feature index, standard deviations drawn from a folded normal), the
orthogonalised dictionary and its hidden bias. `SYNTH_PRESETS["synthsaebench-16k"]` is the published
SynthSAEBench-16k (Chanin & Garriga-Alonso, arXiv 2602.14687; SAELens docs/synth_sae_bench.md).
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, Field, model_validator

from sdlkit.data.source import DataConfig, DataShape, apply_preset
from sdlkit.errors import STRICT_CONFIG, ConfigError

__all__ = [
    "SYNTH_PRESETS",
    "CorrelationConfig",
    "FiringConfig",
    "ForestConfig",
    "MagnitudeConfig",
    "OrthogonalizationConfig",
    "SynthConfig",
    "synth_preset",
]


class FiringConfig(BaseModel):
    """Zipfian base firing probabilities: p_i ∝ i^(−exponent) for i = 1..n, rescaled onto [min_prob, max_prob]."""

    model_config = STRICT_CONFIG

    exponent: float = Field(0.5, gt=0)
    """Zipf exponent (higher: steeper fall from the most to the least frequent feature)."""
    max_prob: float = Field(0.4, gt=0, le=1)
    """Probability of feature 0, the most frequent."""
    min_prob: float = Field(5e-4, gt=0)
    """Probability of feature n − 1, the rarest (< max_prob)."""

    @model_validator(mode="after")
    def _ordered(self) -> FiringConfig:
        if not self.min_prob < self.max_prob:
            raise ValueError(f"min_prob = {self.min_prob} must be below max_prob = {self.max_prob}")
        return self


class ForestConfig(BaseModel):
    """Trees of features placed at the start of [0, n), level by level (roots first; the layout of
    sdlkit.data.lrb.hierarchy). A child can fire only when its parent does."""

    model_config = STRICT_CONFIG

    n_roots: int = Field(gt=0)
    """Number of trees (root features)."""
    branching: int = Field(ge=2)
    """Children of every non-leaf node."""
    depth: int = Field(ge=1)
    """Levels below the roots (1: roots with leaf children)."""
    exclusive_portion: float = Field(1.0, ge=0, le=1)
    """Share of the parents (at depth >= exclusive_min_depth) whose children are mutually exclusive: at most
    one of them fires, a uniformly random one of those drawn."""
    exclusive_min_depth: int = Field(0, ge=0)
    """Parents above this depth (0 = roots) never have exclusive children."""
    compensate: bool = True
    """Raise each child's probability by 1 / p(parent) (and for exclusive siblings by 1 + Σ p(sibling) / p(parent),
    clamped at 1), so that its firing rate after the constraints is roughly its base probability."""
    scale_children: bool = True
    """A child's magnitude is multiplied by its parent's magnitude / the parent's mean magnitude."""

    @property
    def n_tree_features(self) -> int:
        """Features the trees use: n_roots · (1 + b + … + b^depth)."""
        return self.n_roots * sum(self.branching**level for level in range(self.depth + 1))


class CorrelationConfig(BaseModel):
    """Low-rank Gaussian copula: feature i fires when f_i·z + √(1 − ‖f_i‖²)·η_i > Φ⁻¹(1 − p_i), z ~ N(0, I_rank),
    with factor rows f_i ~ N(0, scale² I) (a row with ‖f_i‖² > 0.99 is shrunk to 0.99)."""

    model_config = STRICT_CONFIG

    rank: int = Field(gt=0)
    """Dimension of the shared latent factor z."""
    scale: float = Field(ge=0)
    """Standard deviation of the factor's entries (pairwise correlations are ≈ N(0, rank · scale⁴))."""


class MagnitudeConfig(BaseModel):
    """Active magnitudes ReLU(μ_i + σ_i·N(0, 1)): μ linear over the index, σ_i = |N(std_mean, std_std²)|."""

    model_config = STRICT_CONFIG

    mean_start: float = Field(5.0, gt=0)
    """μ of feature 0 (the most frequent)."""
    mean_end: float = Field(4.0, gt=0)
    """μ of feature n − 1 (the rarest)."""
    std_mean: float = 0.5
    """Location of the folded normal the per-feature σ_i are drawn from."""
    std_std: float = Field(0.5, ge=0)
    """Scale of that folded normal (0: every σ_i = |std_mean|)."""


class OrthogonalizationConfig(BaseModel):
    """Adam on Σ_{i≠j} ⟨w_i, w_j⟩² + n·Σ_i (‖w_i‖² − 1)² from the random unit dictionary, then unit rows."""

    model_config = STRICT_CONFIG

    steps: int = Field(100, ge=1)
    """Adam steps."""
    lr: float = Field(3e-4, gt=0)
    """Adam's learning rate."""


class SynthConfig(DataConfig):
    """A SynthSAEBench model (the `data:` section with `kind: synth`). `preset: NAME` starts from
    `SYNTH_PRESETS[NAME]`; the other keys override it (nested sections whole)."""

    kind: Literal["synth"] = "synth"
    """Data kind tag: a SynthSAEBench model."""
    n_features: int = Field(gt=0)
    """n, the number of ground-truth features."""
    hidden_dim: int = Field(gt=0)
    """d, the width of the activations x = W codes + bias."""
    firing: FiringConfig = Field(default_factory=FiringConfig)
    """Zipfian firing probabilities."""
    hierarchy: ForestConfig | None = None
    """Trees of features; None: every feature free."""
    correlation: CorrelationConfig | None = None
    """Gaussian copula; None: independent firing."""
    magnitudes: MagnitudeConfig = Field(default_factory=MagnitudeConfig)
    """Active magnitudes."""
    orthogonalization: OrthogonalizationConfig | None = None
    """Push the random unit dictionary towards orthogonality; None: leave it random."""
    bias: float = Field(0.5, ge=0)
    """Norm of the hidden bias added to every x (a random direction)."""
    eval_size: int = Field(4096, ge=1)
    """Size of the fixed held-out set (its own seed stream)."""
    seed: int = 0
    """Seeds everything in the data: dictionary, bias, σ_i, factor, samples."""

    @model_validator(mode="before")
    @classmethod
    def _preset(cls, values: Any) -> Any:
        """{preset: NAME, **overrides} -> the preset's settings with the overrides applied."""
        return apply_preset(values, SYNTH_PRESETS, "synth")

    @model_validator(mode="after")
    def _forest_fits(self) -> SynthConfig:
        forest = self.hierarchy
        if forest is not None and forest.n_tree_features > self.n_features:
            raise ValueError(
                f"the hierarchy needs {forest.n_tree_features} features (n_roots = {forest.n_roots}, branching = "
                f"{forest.branching}, depth = {forest.depth}) but n_features = {self.n_features}"
            )
        return self

    def shape(self) -> DataShape:
        """SAE data: x_p = x_r, both of width hidden_dim."""
        return DataShape(self.hidden_dim, self.hidden_dim, [self.hidden_dim], [self.hidden_dim])


_PUBLISHED: dict[str, Any] = {
    "firing": {"exponent": 0.5, "max_prob": 0.4, "min_prob": 5e-4},
    "correlation": {"rank": 25, "scale": 0.1},
    "magnitudes": {"mean_start": 5.0, "mean_end": 4.0, "std_mean": 0.5, "std_std": 0.5},
    "orthogonalization": {"steps": 100, "lr": 3e-4},
    "bias": 0.5,
}
"""Everything of SynthSAEBench-16k but its size and its forest."""

SYNTH_PRESETS: dict[str, dict[str, Any]] = {
    # SynthSAEBench-16k as published (SAELens docs/synth_sae_bench.md; its seed 42 is SAELens's RNG, not ours).
    "synthsaebench-16k": {
        "n_features": 16_384,
        "hidden_dim": 768,
        "hierarchy": {"n_roots": 128, "branching": 4, "depth": 3},
        **_PUBLISHED,
    },
    # A quarter of it for CPUs: n/d = 21.3 and the tree share 2,720/4,096 ≈ 10,880/16,384 kept; the same
    # probabilities, correlation, magnitudes and orthogonalisation.
    "cpu": {
        "n_features": 4096,
        "hidden_dim": 192,
        "hierarchy": {"n_roots": 32, "branching": 4, "depth": 3},
        **_PUBLISHED,
    },
    # For tests: builds in milliseconds, still with every mechanism (trees, exclusion, copula, bias).
    "tiny": {
        "n_features": 256,
        "hidden_dim": 32,
        "hierarchy": {"n_roots": 4, "branching": 3, "depth": 2},
        **_PUBLISHED,
        "correlation": {"rank": 4, "scale": 0.2},
        "orthogonalization": {"steps": 20, "lr": 1e-2},
    },
}
"""Named synth settings; `synth_preset(name, **overrides)` validates one."""


def synth_preset(name: str, **overrides: Any) -> SynthConfig:
    """The preset `name` with `overrides` applied, validated (ConfigError on a bad name or value)."""
    if name not in SYNTH_PRESETS:
        raise ConfigError(f"unknown synth preset {name!r}; known presets: {', '.join(SYNTH_PRESETS)}")
    return SynthConfig.from_dict({**SYNTH_PRESETS[name], **overrides})
