"""LRBConfig: the Linear Representation Bench's settings, validated; LRB_PRESETS and lrb_preset name the usual ones.

Validation refuses what cannot be built before anything is drawn: an interference bound M out of reach for the
matrix sizes, fields that the mode does not use, a hierarchy larger than the features. The data themselves
(what the fields mean) are described in sdlkit.data.lrb.source.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, ValidationInfo, field_validator, model_validator

from sdlkit.data.lrb.features import (
    DEFAULT_EPS,
    DEFAULT_LAM,
    DEFAULT_LR,
    DEFAULT_MAX_ITERS,
    FRAMES,
    check_interference_feasible,
)
from sdlkit.data.lrb.hierarchy import HierarchyConfig
from sdlkit.data.source import DataConfig, DataShape, apply_preset


class LRBConfig(DataConfig):
    """Settings of the Linear Representation Bench (the `data:` section of a run config). `preset: NAME`
    starts from the named `LRB_PRESETS` entry; the other keys override it."""

    kind: Literal["lrb"] = "lrb"
    """Data kind tag: the Linear Representation Bench."""
    mode: Literal["sae", "transcoder", "crosscoder"] = "sae"
    """sae: x_r is x_p. transcoder: x_r = W_r x with an independent W_r [n_r, n]. crosscoder: n_sources
    independent W_p^(j), x_p = x_r = their outputs concatenated."""
    n_features: int = Field(gt=0)
    """n, the number of ground-truth features (> 0)."""
    n_p: int = Field(gt=0)
    """Dimension of x_p (of each source for a crosscoder) (> 0)."""
    n_r: int | None = Field(None, gt=0)
    """Transcoder only: dimension of x_r (> 0); None = n_p. Not allowed in other modes."""
    n_sources: int = 1
    """Crosscoder m, the number of sources (>= 2); must be 1 otherwise."""
    S: float
    """Sparsity Pr(x_d = 0), in [0, 1); each feature is active with probability 1 − S."""
    M: float
    """Maximum interference: max_{i != j} <w_i, w_j> <= M for the columns of W_p (and W_r)."""
    c_min: float = Field(0.5, ge=0)
    """Minimum activation of an active feature (>= 0). Default 0.5 (paper gives none): with beta = 0.5 an active feature
    has mean magnitude c_min + beta = 1, and it never falls below half of that, so every active feature stays visible
    above the interference (<= M each) of the ~n(1 − S) other active ones instead of hiding in a tail of near-zero
    activations."""
    beta: float = Field(0.5, gt=0)
    """Scale (= mean = std) of the exponential part of an active feature's magnitude (> 0). Default 0.5 so that the mean
    magnitude c_min + beta is 1 with a 2:1 spread of typical values."""
    n_samples: int | None = Field(None, gt=0)
    """None: a fresh sample for every batch (infinite stream). N: a fixed training set of N samples (the paper's
    N = 100,000), stored sparsely on the device and reshuffled every epoch."""
    eval_size: int = Field(4096, ge=1)
    """Size of the fixed held-out evaluation set (> 0), from its own seed stream."""
    seed: int = 0
    """Seeds everything in the data: W_p, W_r, training samples, evaluation set."""
    frame: Literal["gaussian", "tight"] = "gaussian"
    """How W_p (and W_r, and every crosscoder block) is drawn before the interference PGD. gaussian: App. C as written
    (an i.i.d. Gaussian draw, badly conditioned). tight: the draw mapped to its nearest tight frame, (W Wᵀ)^{-t/2} W
    with t = `tightness`, then unit columns (cond(W_p W_pᵀ) near 1 at t = 1). The same M holds on both; the condition
    numbers are in benchmarks/README.md, "The frame and the encoder rows"."""
    tightness: float | None = Field(None, ge=0.0, le=1.0)
    """frame: tight only: t in [0, 1], the continuous knob between the Gaussian draw (t = 0, bit-identical to frame
    gaussian) and the tight frame (t = 1, the default)."""
    interference_eps: float = Field(DEFAULT_EPS, gt=0)
    """Margin ε of the interference loss (see sdlkit.data.lrb.features.make_feature_matrix)."""
    interference_lam: float = Field(DEFAULT_LAM, ge=0)
    """Weight λ of the positive-overlap penalty of the interference loss (>= 0)."""
    interference_lr: float = Field(DEFAULT_LR, gt=0)
    """Base step η of the interference PGD (> 0)."""
    interference_max_iters: int = Field(DEFAULT_MAX_ITERS, ge=1)
    """Iteration limit of the interference PGD (>= 1)."""
    hierarchy: HierarchyConfig | None = None
    """None: all features independent (the paper's bench). Otherwise {n_parents, children_per_parent, depth}: the first
    n_parents·(1 + b + … + b^depth) features form trees in which a parent is active iff one of its children is
    (Def 3.2); see sdlkit.data.lrb.hierarchy for the layout."""

    # ---- validators: ValueError with a message that names the field and the allowed values ----
    @model_validator(mode="before")
    @classmethod
    def _preset(cls, values: Any) -> Any:
        """{preset: NAME, **overrides} -> the preset's settings with the overrides applied."""
        return apply_preset(values, LRB_PRESETS, "LRB")

    @field_validator("n_r")
    @classmethod
    def _n_r(cls, value: int | None, info: ValidationInfo) -> int | None:
        if value is None:
            return value
        mode = info.data.get("mode")
        if mode != "transcoder":
            raise ValueError(f"n_r is only allowed when mode is 'transcoder' (mode is {mode!r}); remove n_r")
        return value

    @field_validator("n_sources")
    @classmethod
    def _n_sources(cls, value: int, info: ValidationInfo) -> int:
        mode = info.data.get("mode")
        if mode == "crosscoder" and value < 2:
            raise ValueError("n_sources must be >= 2 in crosscoder mode")
        if mode in ("sae", "transcoder") and value != 1:
            raise ValueError(f"n_sources must be 1 in {mode} mode (several sources need mode: crosscoder)")
        return value

    @field_validator("S")
    @classmethod
    def _S(cls, value: float) -> float:
        if not 0 <= value < 1:
            raise ValueError("S must be in [0, 1) (it is Pr(x_d = 0))")
        return value

    @model_validator(mode="after")
    def _feasible(self) -> LRBConfig:
        """Refuse an M that is provably out of reach for the matrices this config builds."""
        check_interference_feasible(self.n_p, self.n_features, self.M)
        if self.mode == "transcoder":
            check_interference_feasible(self.target_dims, self.n_features, self.M)
        return self

    @model_validator(mode="after")
    def _tightness(self) -> LRBConfig:
        if self.tightness is not None and self.frame != "tight":
            raise ValueError(f"tightness is only allowed with frame: tight (frame is {self.frame!r}); remove it")
        return self

    @model_validator(mode="after")
    def _hierarchy_fits(self) -> LRBConfig:
        h = self.hierarchy
        if h is not None and h.n_tree_features > self.n_features:
            raise ValueError(
                f"n_features = {self.n_features} is too small for the hierarchy: hierarchy.n_parents = "
                f"{h.n_parents}, children_per_parent = {h.children_per_parent}, depth = {h.depth} need "
                f"{h.n_tree_features} features; raise n_features or shrink the hierarchy"
            )
        return self

    # ---- helpers ----
    @property
    def frame_tightness(self) -> float:
        """t as used: 0 for the Gaussian frame, `tightness` (default 1) for the tight one."""
        if self.frame == "tight":
            return 1.0 if self.tightness is None else self.tightness
        return FRAMES[self.frame]

    @property
    def target_dims(self) -> int:
        """n_r as used: the dimension of each W_r column (n_p unless a transcoder sets n_r)."""
        return self.n_r if self.n_r is not None else self.n_p

    def shape(self) -> DataShape:
        """x_p: n_p, or m blocks of n_p for a crosscoder; x_r: the same, or n_r for a transcoder."""
        if self.mode == "crosscoder":
            blocks = [self.n_p] * self.n_sources
            return DataShape(sum(blocks), sum(blocks), blocks, blocks)
        return DataShape(self.n_p, self.target_dims, [self.n_p], [self.target_dims])


LRB_PRESETS: dict[str, dict[str, Any]] = {
    # Table 3 of the paper.
    "paper": {"n_features": 1000, "n_p": 768, "S": 0.99, "M": 0.1, "n_samples": 100_000},
    # Same superposition ratio n/n_p = 1.30, S and M, about 4x smaller: sized for a CPU.
    "quick": {"n_features": 260, "n_p": 200, "S": 0.99, "M": 0.1, "n_samples": None},
    # For tests: builds in milliseconds; same ratio 1.3, denser codes so small batches have signal.
    "tiny": {"n_features": 26, "n_p": 20, "S": 0.9, "M": 0.3, "n_samples": None},
}
"""Named LRB settings; `lrb_preset(name, **overrides)` validates one with overrides applied."""


def lrb_preset(name: str, **overrides: Any) -> LRBConfig:
    """The preset `name` with `overrides` applied, validated (ConfigError on a bad name or value)."""
    return LRBConfig.from_dict({"preset": name, **overrides})
