"""The Linear Representation Bench (paper Sec. 5.1, App. C): synthetic data with known features.

Every sample is a sparse non-negative code x ∈ R^n over n ground-truth features, mapped linearly:

    x_d = Bernoulli(1 − S) · (c_min + Exp(scale beta))        (independent over samples and features)
    x_p = W_p x        W_p [n_p, n], unit-norm columns, max_{i != j} <w_i, w_j> <= M
                       (frame: App. C's Gaussian draw, or its nearest tight frame; see `frame`)
    x_r = W_r x        SAE: W_r is W_p (so x_r is x_p); transcoder: an independent [n_r, n] matrix

No noise, no correlation between features, unless `hierarchy` is set: then the first features form
trees of parents and children (paper Def 3.2, see sdlkit.data.lrb.hierarchy): leaves are drawn as above,
and every parent is active iff at least one of its children is, with its own magnitude
c_min + Exp(beta); a depth-1 parent is active with probability 1 − S^children_per_parent. The other
features stay independent, and with `hierarchy` unset the codes are bit-identical to the plain bench.

The paper leaves transcoder and crosscoder data undescribed; here a transcoder learns
x_p -> x_r = W_r x with W_r drawn like W_p (same M), and a crosscoder reads m sources
x_p^(j) = W_p^(j) x, each W_p^(j) an independent draw, concatenated into one [m·n_p] vector
(x_r is x_p: it reconstructs all sources).

`LRBConfig` validates the settings, `LRB_PRESETS` / `lrb_preset` name the standard ones, and `LRBSource`
is the random-access `DataSource`: batch `index` is a pure function of (seed, index, batch_size), so
a stream position is one integer. Shapes: codes [batch, n], x_p [batch, n_in], x_r [batch, n_out].
"""

from __future__ import annotations

from typing import Any, Literal

import torch
from pydantic import Field, ValidationInfo, field_validator, model_validator
from torch.nn import functional as F

from sdlkit.data.lrb.features import (
    DEFAULT_EPS,
    DEFAULT_LAM,
    DEFAULT_LR,
    DEFAULT_MAX_ITERS,
    FRAMES,
    PGDSettings,
    check_interference_feasible,
    dual_frame,
    frame_properties,
    make_feature_matrix,
)
from sdlkit.data.lrb.hierarchy import Hierarchy, HierarchyConfig, impose_hierarchy
from sdlkit.data.sampling import bernoulli_positions
from sdlkit.data.source import (
    Batch,
    DataConfig,
    DataShape,
    DataSource,
    DirectionKind,
    KnownDirections,
    apply_preset,
    register_source,
)
from sdlkit.errors import ConfigError
from sdlkit.seeding import derive_seed

__all__ = ["LRB_PRESETS", "Hierarchy", "HierarchyConfig", "LRBConfig", "LRBSource", "lrb_preset"]


class LRBConfig(DataConfig):
    """Settings of the Linear Representation Bench (the `data:` section of a run config). `preset: NAME`
    starts from the named `LRB_PRESETS` entry; the other keys override it."""

    kind: Literal["lrb"] = Field("lrb", description="Data kind tag: the Linear Representation Bench.")
    mode: Literal["sae", "transcoder", "crosscoder"] = Field(
        "sae",
        description="sae: x_r is x_p. transcoder: x_r = W_r x with an independent W_r [n_r, n]. "
        "crosscoder: n_sources independent W_p^(j), x_p = x_r = their outputs concatenated.",
    )
    n_features: int = Field(gt=0, description="n, the number of ground-truth features (> 0).")
    n_p: int = Field(gt=0, description="Dimension of x_p (of each source for a crosscoder) (> 0).")
    n_r: int | None = Field(
        None, gt=0, description="Transcoder only: dimension of x_r (> 0); None = n_p. Not allowed in other modes."
    )
    n_sources: int = Field(1, description="Crosscoder m, the number of sources (>= 2); must be 1 otherwise.")
    S: float = Field(description="Sparsity Pr(x_d = 0), in [0, 1); each feature is active with probability 1 − S.")
    M: float = Field(description="Maximum interference: max_{i != j} <w_i, w_j> <= M for the columns of W_p (and W_r).")
    c_min: float = Field(
        0.5,
        ge=0,
        description="Minimum activation of an active feature (>= 0). Default 0.5 (paper gives none): with "
        "beta = 0.5 an active feature has mean magnitude c_min + beta = 1, and it never falls below half "
        "of that, so every active feature stays visible above the interference (<= M each) of the "
        "~n(1 − S) other active ones instead of hiding in a tail of near-zero activations.",
    )
    beta: float = Field(
        0.5,
        gt=0,
        description="Scale (= mean = std) of the exponential part of an active feature's magnitude (> 0). "
        "Default 0.5 so that the mean magnitude c_min + beta is 1 with a 2:1 spread of typical values.",
    )
    n_samples: int | None = Field(
        None,
        gt=0,
        description="None: a fresh sample for every batch (infinite stream). N: a fixed training set of N "
        "samples (the paper's N = 100,000), stored sparsely on the device and reshuffled every epoch.",
    )
    eval_size: int = Field(
        4096, ge=1, description="Size of the fixed held-out evaluation set (> 0), from its own seed stream."
    )
    seed: int = Field(0, description="Seeds everything in the data: W_p, W_r, training samples, evaluation set.")
    frame: Literal["gaussian", "tight"] = Field(
        "gaussian",
        description="How W_p (and W_r, and every crosscoder block) is drawn before the interference PGD. "
        "gaussian: App. C as written (an i.i.d. Gaussian draw; cond(W_p W_pᵀ) ≈ 150-210 at the presets). "
        "tight: the draw mapped to its nearest tight frame, (W Wᵀ)^{-t/2} W with t = `tightness`, then "
        "unit columns (cond ≈ 1.1-1.3 at t = 1). The same M holds on both.",
    )
    tightness: float | None = Field(
        None,
        ge=0.0,
        le=1.0,
        description="frame: tight only: t in [0, 1], the continuous knob between the Gaussian draw (t = 0, "
        "bit-identical to frame gaussian) and the tight frame (t = 1, the default).",
    )
    interference_eps: float = Field(
        DEFAULT_EPS,
        gt=0,
        description="Margin ε of the interference loss (see sdlkit.data.lrb.features.make_feature_matrix).",
    )
    interference_lam: float = Field(
        DEFAULT_LAM, ge=0, description="Weight λ of the positive-overlap penalty of the interference loss (>= 0)."
    )
    interference_lr: float = Field(DEFAULT_LR, gt=0, description="Base step η of the interference PGD (> 0).")
    interference_max_iters: int = Field(
        DEFAULT_MAX_ITERS, ge=1, description="Iteration limit of the interference PGD (>= 1)."
    )
    hierarchy: HierarchyConfig | None = Field(
        None,
        description="None: all features independent (the paper's bench). Otherwise {n_parents, "
        "children_per_parent, depth}: the first n_parents·(1 + b + … + b^depth) features form trees in which "
        "a parent is active iff one of its children is (Def 3.2); see sdlkit.data.lrb.hierarchy for the layout.",
    )

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
    # Same superposition ratio n/n_p = 1.30, S and M, about 4x smaller: minutes on a CPU.
    "quick": {"n_features": 260, "n_p": 200, "S": 0.99, "M": 0.1, "n_samples": None},
    # For tests: builds in milliseconds; same ratio 1.3, denser codes so small batches have signal.
    "tiny": {"n_features": 26, "n_p": 20, "S": 0.9, "M": 0.3, "n_samples": None},
}
"""Named LRB settings; `lrb_preset(name, **overrides)` validates one with overrides applied."""


def lrb_preset(name: str, **overrides: Any) -> LRBConfig:
    """The preset `name` with `overrides` applied, validated (ConfigError on a bad name or value)."""
    return LRBConfig.from_dict({"preset": name, **overrides})


_Entries = tuple[torch.Tensor, torch.Tensor, torch.Tensor]
"""Codes as CSR entries: row_ptr [rows + 1] (int64), col [nnz] (feature index), val [nnz] (magnitude)."""

_SET_CHUNK = 4096
"""Rows drawn per generator when building the fixed training set (a constant, so the set is reproducible)."""


class LRBSource(DataSource):
    """Random-access LRB data on `device`: `batch(index, batch_size)`, `eval_batch()`, the ground truth.

    Attributes: `W_p` [n_in, n] (crosscoder: the m blocks W_p^(j) stacked along dim 0, also in
    `W_p_blocks`), `W_r` [n_out, n] (the same tensor as W_p except for a transcoder), `n_in`, `n_out`,
    `in_blocks`, `out_blocks`, `true_l0` = n(1 − S), the expected number of active features per sample
    (with a hierarchy: the independent and leaf features' share plus 1 − S^(b^h) per tree node of
    height h), `hierarchy` (the `Hierarchy` index layout, or None).

    Randomness: every stream has its own generator on `device`, seeded from a hash of
    (config.seed, stream name, index), so W_p, W_r, each training batch, each epoch's permutation, the
    fixed training set and the evaluation set never share random numbers, and batch `index` needs
    no earlier batch. Results are reproducible per device type (CPU and CUDA generators differ).

    Cost: codes are drawn and kept as their active entries (CSR: row_ptr, col, val), and x_p = W_p x
    is an embedding bag over the columns of W_p, so a batch costs O(active entries · n_in), not
    O(batch · n · n_in); a dense [batch, n] code tensor is only built when `codes()` is asked for.
    """

    def __init__(self, config: LRBConfig, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32):
        self.config = config
        self.device = torch.device(device)
        self.dtype = dtype
        n, m = config.n_features, config.n_sources
        pgd = PGDSettings(
            config.interference_eps, config.interference_lam, config.interference_lr, config.interference_max_iters
        )
        knobs = {"pgd": pgd, "dtype": dtype, "tightness": config.frame_tightness}
        blocks = [
            make_feature_matrix(config.n_p, n, config.M, generator=self._generator("W_p", j), **knobs) for j in range(m)
        ]
        self.W_p: torch.Tensor = blocks[0] if m == 1 else torch.cat(blocks, dim=0)
        self.W_p_blocks: list[torch.Tensor] = list(self.W_p.split(config.n_p, dim=0))
        if config.mode == "transcoder":
            self.W_r: torch.Tensor = make_feature_matrix(
                config.target_dims, n, config.M, generator=self._generator("W_r", 0), **knobs
            )
        else:
            self.W_r = self.W_p
        shape = config.shape()
        self.n_in, self.n_out = shape.n_in, shape.n_out
        self.in_blocks, self.out_blocks = shape.in_blocks, shape.out_blocks
        self.hierarchy: Hierarchy | None = config.hierarchy.build() if config.hierarchy is not None else None
        if self.hierarchy is None:
            self.true_l0 = n * (1 - config.S)
        else:
            n_tree = self.hierarchy.n_tree
            self.true_l0 = (n - n_tree) * (1 - config.S) + self.hierarchy.expected_active(config.S)
        self._columns = {"p": self.W_p.T.contiguous(), "r": self.W_r.T.contiguous()}  # [n, n_in], [n, n_out]
        self._eval: tuple[_Entries, Batch] | None = None
        self._frame: dict[str, Any] | None = None
        self._dual: torch.Tensor | None = None
        self._perms: dict[int, torch.Tensor] = {}
        self._set: _Entries | None = None
        if config.n_samples is not None:
            self._set = self._build_training_set(config.n_samples)

    # ---- public API ----
    def codes(self, index: int, batch_size: int) -> torch.Tensor:
        """Sparse codes x [batch_size, n] of training batch `index` (dense tensor, zeros where inactive)."""
        return self._dense(self._entries(index, batch_size))

    def batch(self, index: int, batch_size: int) -> Batch:
        """Training batch `index`: x_p = codes @ W_pᵀ, x_r = x_p (sae, crosscoder) or codes @ W_rᵀ."""
        return self._to_batch(self._entries(index, batch_size))

    def eval_codes(self) -> torch.Tensor:
        """Codes [eval_size, n] of the fixed held-out set (its own seed stream)."""
        return self._dense(self._eval_cache()[0])

    def eval_batch(self) -> Batch:
        """The fixed held-out evaluation set as a Batch (cached after the first call)."""
        return self._eval_cache()[1]

    def training_set_codes(self) -> torch.Tensor:
        """The whole fixed training set as dense codes [n_samples, n] (n_samples mode only; to inspect)."""
        if self._set is None:
            raise ConfigError("training_set_codes() needs data.n_samples to be set (this source is an infinite stream)")
        return self._dense(self._set_rows(torch.arange(self.config.n_samples or 0, device=self.device)))

    def sample_codes(self, n_samples: int, stream: str = "extra", index: int = 0) -> torch.Tensor:
        """`n_samples` fresh codes [n_samples, n] from the named seed stream (`stream`, `index`), e.g.
        for an evaluation that needs more samples than the eval set. Streams never share random numbers
        with training, the fixed set or the eval set (their names are prefixed with "user:"); the same
        arguments always give the same codes."""
        if n_samples < 1:
            raise ConfigError(f"n_samples must be >= 1, got {n_samples}")
        return self._dense(self._sample_entries(n_samples, self._generator(f"user:{stream}", index)))

    def frame(self) -> dict[str, Any]:
        """The frame's name, its tightness t and its measured geometry (`frame_properties`) for every
        feature matrix the data use (W_p, each crosscoder block, W_r), reduced to the worst case: the
        largest condition number and interference, the smallest dual cosine. Cached."""
        if self._frame is None:
            matrices = self.W_p_blocks + ([self.W_r] if self.W_r is not self.W_p else [])
            each = [frame_properties(W) for W in matrices]
            self._frame = {
                "frame": self.config.frame,
                "tightness": self.config.frame_tightness,
                "condition_number": max(p["condition_number"] for p in each),
                "max_interference": max(p["max_interference"] for p in each),
                "mean_abs_interference": max(p["mean_abs_interference"] for p in each),
                "dual_cosine": min(p["dual_cosine"] for p in each),
            }
        return dict(self._frame)

    def dual_p(self) -> torch.Tensor:
        """The dual frame of W_p, (W_p W_pᵀ)⁺ W_p [n_in, n] in float64 (cached): the rows of the best
        linear encoder, against which the bench also scores encoder rows."""
        if self._dual is None:
            self._dual = dual_frame(self.W_p)
        return self._dual

    def ground_truth(self) -> dict[str, torch.Tensor]:
        """{"W_p": [n_in, n], "W_r": [n_out, n]}: separate contiguous tensors (safetensors refuses shared
        storage, so W_r is a copy when it is W_p)."""
        W_r = self.W_r.clone() if self.W_r is self.W_p else self.W_r
        return {"W_p": self.W_p.contiguous(), "W_r": W_r.contiguous()}

    def known_directions(self, kind: DirectionKind = "auto") -> KnownDirections | None:
        """The ground-truth features, named by their index (the bench has no labels)."""
        if kind == "labels":
            return None
        truth = self.ground_truth()
        names = [str(i) for i in range(self.config.n_features)]
        return KnownDirections(truth["W_p"], truth["W_r"], names, "ground_truth")

    # ---- internals ----
    def _generator(self, stream: str, index: int) -> torch.Generator:
        gen = torch.Generator(device=self.device)
        gen.manual_seed(derive_seed(self.config.seed, stream, index))
        return gen

    def _entries(self, index: int, batch_size: int) -> _Entries:
        """The active entries of training batch `index` (drawn, or rows of the fixed set)."""
        if index < 0 or batch_size < 1:
            raise ConfigError(
                f"batch index must be >= 0 and batch_size >= 1, got index={index}, batch_size={batch_size}"
            )
        if self._set is None:
            return self._sample_entries(batch_size, self._generator("train", index))
        N = self.config.n_samples
        assert N is not None
        positions = torch.arange(index * batch_size, (index + 1) * batch_size, device=self.device)
        epochs = positions // N
        rows = torch.empty_like(positions)
        for epoch in range(int(epochs[0]), int(epochs[-1]) + 1):
            sel = epochs == epoch
            rows[sel] = self._permutation(epoch)[positions[sel] - epoch * N]
        return self._set_rows(rows)

    def _active_positions(self, total: int, gen: torch.Generator) -> torch.Tensor:
        """Ascending positions in [0, total) where an independent Bernoulli(1 − S) draw is 1 (drawn as
        geometric gaps: a cost ∝ the ones found)."""
        return bernoulli_positions(total, 1 - self.config.S, gen, self.device)

    def _sample_entries(self, rows: int, gen: torch.Generator) -> _Entries:
        """x_d = Bernoulli(1 − S) · (c_min + beta · Exp(1)) for a [rows, n] block, drawn with `gen`,
        as its active entries.

        Magnitudes are drawn for the active entries in row-major order. With a hierarchy, the tree's
        non-leaf entries of the Bernoulli draw are replaced by "any child active" (bottom-up, on a
        dense [rows, n] mask) before the magnitudes are drawn.
        """
        cfg = self.config
        n = cfg.n_features
        positions = self._active_positions(rows * n, gen)
        if self.hierarchy is not None:
            active = torch.zeros(rows * n, dtype=torch.bool, device=self.device)
            active[positions] = True
            impose_hierarchy(active.view(rows, n), self.hierarchy)
            positions = active.nonzero().squeeze(1)
        magnitude = torch.empty(positions.numel(), device=self.device, dtype=self.dtype)
        magnitude.exponential_(1.0, generator=gen)
        row_ptr = torch.zeros(rows + 1, dtype=torch.int64, device=self.device)
        row_ptr[1:] = torch.bincount(positions // n, minlength=rows).cumsum(0)
        return row_ptr, positions % n, magnitude.mul_(cfg.beta).add_(cfg.c_min)

    def _dense(self, entries: _Entries) -> torch.Tensor:
        """Dense codes [rows, n] of CSR entries."""
        row_ptr, col, val = entries
        rows = row_ptr.numel() - 1
        out = torch.zeros(rows, self.config.n_features, device=self.device, dtype=self.dtype)
        row = torch.repeat_interleave(torch.arange(rows, device=self.device), row_ptr.diff())
        out[row, col.long()] = val
        return out

    def _project(self, entries: _Entries, side: str) -> torch.Tensor:
        """codes @ W_sideᵀ [rows, n_side]: the sum of the active features' columns, weighted."""
        row_ptr, col, val = entries
        return F.embedding_bag(col.long(), self._columns[side], row_ptr[:-1], mode="sum", per_sample_weights=val)

    def _to_batch(self, entries: _Entries) -> Batch:
        x_p = self._project(entries, "p")
        x_r = x_p if self.W_r is self.W_p else self._project(entries, "r")
        return Batch(x_p=x_p, x_r=x_r)

    def _eval_cache(self) -> tuple[_Entries, Batch]:
        if self._eval is None:
            entries = self._sample_entries(self.config.eval_size, self._generator("eval", 0))
            self._eval = (entries, self._to_batch(entries))
        return self._eval

    def _permutation(self, epoch: int) -> torch.Tensor:
        """The order of the fixed set in `epoch` (cached for the two most recent epochs)."""
        perm = self._perms.get(epoch)
        if perm is None:
            N = self.config.n_samples
            assert N is not None
            perm = torch.randperm(N, generator=self._generator("epoch", epoch), device=self.device)
            if len(self._perms) >= 2:
                self._perms.pop(min(self._perms))
            self._perms[epoch] = perm
        return perm

    def _build_training_set(self, N: int) -> _Entries:
        """The fixed set in CSR form (row_ptr [N+1], col [nnz] int32, val [nnz]): ~(1 − S)·n·N non-zeros."""
        cols, vals, row_ptrs = [], [], [torch.zeros(1, dtype=torch.int64, device=self.device)]
        for chunk, start in enumerate(range(0, N, _SET_CHUNK)):
            row_ptr, col, val = self._sample_entries(min(_SET_CHUNK, N - start), self._generator("train_set", chunk))
            row_ptrs.append(row_ptr[1:] + row_ptrs[-1][-1])
            cols.append(col.to(torch.int32))
            vals.append(val)
        return torch.cat(row_ptrs), torch.cat(cols), torch.cat(vals)

    def _set_rows(self, rows: torch.Tensor) -> _Entries:
        """The entries (CSR) of the fixed-set samples `rows`, in that order (vectorised gather)."""
        assert self._set is not None
        row_ptr, col, val = self._set
        starts = row_ptr[rows]
        counts = row_ptr[rows + 1] - starts
        out_ptr = torch.zeros(len(rows) + 1, dtype=torch.int64, device=self.device)
        out_ptr[1:] = counts.cumsum(0)
        total = int(out_ptr[-1])
        offsets = torch.arange(total, device=self.device) - torch.repeat_interleave(out_ptr[:-1], counts)
        positions = torch.repeat_interleave(starts, counts) + offsets
        return out_ptr, col[positions].long(), val[positions]


register_source("lrb", LRBConfig, LRBSource)
