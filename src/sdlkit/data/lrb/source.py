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

`LRBConfig` (sdlkit.data.lrb.config) validates the settings, `LRB_PRESETS` / `lrb_preset` name the standard
ones, and `LRBSource` is the random-access `DataSource`: it builds the feature matrices and maps codes (drawn
by sdlkit.data.lrb.codes) through them. Batch `index` is a pure function of (seed, index, batch_size), so
a stream position is one integer. Shapes: codes [batch, n], x_p [batch, n_in], x_r [batch, n_out].
"""

from __future__ import annotations

from typing import Any

import torch
from torch.nn import functional as F

from sdlkit.data.lrb.codes import CodeStream, Entries, seeded_generator
from sdlkit.data.lrb.config import LRB_PRESETS, LRBConfig, lrb_preset
from sdlkit.data.lrb.features import PGDSettings, dual_frame, frame_properties, make_feature_matrix
from sdlkit.data.lrb.hierarchy import Hierarchy, HierarchyConfig
from sdlkit.data.source import Batch, DataSource, DirectionKind, KnownDirections, register_source
from sdlkit.errors import ConfigError

# LRBConfig, LRB_PRESETS and lrb_preset are defined in sdlkit.data.lrb.config and importable from here too.
__all__ = ["LRB_PRESETS", "Hierarchy", "HierarchyConfig", "LRBConfig", "LRBSource", "lrb_preset"]


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
        self._eval: tuple[Entries, Batch] | None = None
        self._frame: dict[str, Any] | None = None
        self._dual: torch.Tensor | None = None
        self._codes = CodeStream(config, self.hierarchy, self.device, dtype)

    # ---- public API ----
    def codes(self, index: int, batch_size: int) -> torch.Tensor:
        """Sparse codes x [batch_size, n] of training batch `index` (dense tensor, zeros where inactive)."""
        return self._codes.dense(self._codes.entries(index, batch_size))

    def batch(self, index: int, batch_size: int) -> Batch:
        """Training batch `index`: x_p = codes @ W_pᵀ, x_r = x_p (sae, crosscoder) or codes @ W_rᵀ."""
        return self._to_batch(self._codes.entries(index, batch_size))

    def eval_codes(self) -> torch.Tensor:
        """Codes [eval_size, n] of the fixed held-out set (its own seed stream)."""
        return self._codes.dense(self._eval_cache()[0])

    def eval_batch(self) -> Batch:
        """The fixed held-out evaluation set as a Batch (cached after the first call)."""
        return self._eval_cache()[1]

    def training_set_codes(self) -> torch.Tensor:
        """The whole fixed training set as dense codes [n_samples, n] (n_samples mode only; to inspect)."""
        if self._codes.fixed_set is None:
            raise ConfigError("training_set_codes() needs data.n_samples to be set (this source is an infinite stream)")
        return self._codes.dense(self._codes.set_rows(torch.arange(self.config.n_samples or 0, device=self.device)))

    def sample_codes(self, n_samples: int, stream: str = "extra", index: int = 0) -> torch.Tensor:
        """`n_samples` fresh codes [n_samples, n] from the named seed stream (`stream`, `index`), e.g.
        for an evaluation that needs more samples than the eval set. Streams never share random numbers
        with training, the fixed set or the eval set (their names are prefixed with "user:"); the same
        arguments always give the same codes."""
        if n_samples < 1:
            raise ConfigError(f"n_samples must be >= 1, got {n_samples}")
        return self._codes.dense(self._codes.sample(n_samples, self._generator(f"user:{stream}", index)))

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
        return seeded_generator(self.config.seed, stream, index, self.device)

    def _project(self, entries: Entries, side: str) -> torch.Tensor:
        """codes @ W_sideᵀ [rows, n_side]: the sum of the active features' columns, weighted."""
        row_ptr, col, val = entries
        return F.embedding_bag(col.long(), self._columns[side], row_ptr[:-1], mode="sum", per_sample_weights=val)

    def _to_batch(self, entries: Entries) -> Batch:
        x_p = self._project(entries, "p")
        x_r = x_p if self.W_r is self.W_p else self._project(entries, "r")
        return Batch(x_p=x_p, x_r=x_r)

    def _eval_cache(self) -> tuple[Entries, Batch]:
        if self._eval is None:
            entries = self._codes.sample(self.config.eval_size, self._generator("eval", 0))
            self._eval = (entries, self._to_batch(entries))
        return self._eval


register_source("lrb", LRBConfig, LRBSource)
