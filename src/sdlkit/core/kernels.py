"""The sparse fast path of the TopK family: codes as (row, latent, value) entries instead of [B, n_q].

The dense path (the reference) computes z = x_p W_Eᵀ + b_E [B, n_q], x_q = σ(z) [B, n_q] and
x̂ = x_q W_Dᵀ + b_D; its backward multiplies [B, n_q] gradients, so a step costs about five GEMMs of
B·n_in·n_q each. A TopK-family σ keeps only nnz ≈ k·B entries, where σ(z) = ReLU(z) (eq. 10), so:

- `encode_entries`: the active entries of z with a gradient whose backward builds ∇W_E, ∇b_E (and
  ∇x_p) from those entries alone (an embedding bag over x_p, one bag per latent): cost nnz·n_in, no
  [B, n_q] gradient. z itself is computed without autograd, a block of rows at a time (the
  `select_*` functions read it so), only to choose the entries: [B, n_q] never exists whole.
- `decode_entries`: x̂[b] = Σ_entries v · W_D[:, latent] as an embedding bag over the columns of W_D
  (cost nnz·n_out); its backward takes ∇v from a sampled matmul (only the nnz dot products of the
  pattern) and ∇W_D from an embedding bag over ∇x̂, one bag per latent.

So a training step costs one GEMM (the encoder's forward) plus O(nnz·(n_in + n_out)) work. Everything is
plain PyTorch and runs on any device; the entries are kept in CSR order (rows ascending, latents
ascending within a row) so the sampled matmul accepts them on CPU and CUDA alike.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterable

import numpy as np
import torch
from torch.autograd.function import once_differentiable
from torch.nn import functional as F


def _sort(values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(sorted values, permutation) of a 1-D integer tensor; equal values in a deterministic, not
    necessarily stable, order. On CPU through numpy's single-threaded sort: torch's parallel CPU sort
    of a 1-D tensor is far slower when the cores are busy (benchmarks/README.md, "Two CPU kernel choices")."""
    if values.device.type == "cpu":
        perm = torch.from_numpy(np.argsort(values.numpy()))
        return values[perm], perm
    return torch.sort(values)


class SparsePattern:
    """Which entries of a [n_rows, n_latents] code matrix are stored: `rows`, `latents` (int64 [nnz]),
    rows ascending and latents ascending within a row (CSR order). Groupings used by the kernels
    (row offsets, the order by latent) are computed once and cached."""

    def __init__(self, rows: torch.Tensor, latents: torch.Tensor, n_rows: int, n_latents: int):
        self.rows = rows
        self.latents = latents
        self.n_rows = n_rows
        self.n_latents = n_latents
        self._row_offsets: torch.Tensor | None = None
        self._by_latent: tuple[torch.Tensor, torch.Tensor] | None = None

    @classmethod
    def cat(cls, patterns: list[SparsePattern]) -> SparsePattern:
        """The patterns of consecutive row blocks as one pattern (same n_latents)."""
        if len(patterns) == 1:
            return patterns[0]
        row_starts = [0]
        for p in patterns[:-1]:
            row_starts.append(row_starts[-1] + p.n_rows)
        rows = torch.cat([p.rows + start for p, start in zip(patterns, row_starts, strict=True)])
        latents = torch.cat([p.latents for p in patterns])
        return cls(rows, latents, row_starts[-1] + patterns[-1].n_rows, patterns[0].n_latents)

    @property
    def nnz(self) -> int:
        return self.rows.numel()

    def row_offsets(self) -> torch.Tensor:
        """Index of each row's first entry [n_rows] (embedding-bag offsets; empty rows allowed)."""
        if self._row_offsets is None:
            counts = torch.bincount(self.rows, minlength=self.n_rows)
            self._row_offsets = counts.cumsum(0) - counts
        return self._row_offsets

    def by_latent(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(perm [nnz], offsets [n_latents]): entries perm[offsets[i]:offsets[i+1]] are those of latent i."""
        if self._by_latent is None:
            _, perm = _sort(self.latents)
            counts = torch.bincount(self.latents, minlength=self.n_latents)
            self._by_latent = (perm, counts.cumsum(0) - counts)
        return self._by_latent

    def with_rows(self, rows: torch.Tensor, n_rows: int) -> SparsePattern:
        """The same entries assigned to other rows (e.g. row·J + group), which must keep CSR order;
        shares the cached order by latent."""
        pattern = SparsePattern(rows, self.latents, n_rows, self.n_latents)
        pattern._by_latent = self._by_latent
        return pattern

    def dense(self, values: torch.Tensor) -> torch.Tensor:
        """The [n_rows, n_latents] matrix holding `values` [nnz] at the pattern (differentiable)."""
        out = values.new_zeros(self.n_rows, self.n_latents)
        return out.index_put((self.rows, self.latents), values)


class SparseCodes:
    """Codes x_q as entries: `values` [nnz] (with their gradient) at `pattern`. Zero values may be
    stored (a selected latent whose pre-activation was ≤ 0); they did not fire."""

    def __init__(self, pattern: SparsePattern, values: torch.Tensor):
        self.pattern = pattern
        self.values = values

    def to_dense(self) -> torch.Tensor:
        """x_q [B, n_latents] (differentiable)."""
        return self.pattern.dense(self.values)

    def fired(self) -> torch.Tensor:
        """bool [n_latents]: latents with a non-zero code in some row."""
        fired = torch.zeros(self.pattern.n_latents, dtype=torch.bool, device=self.values.device)
        return fired.index_fill_(0, self.pattern.latents[self.values.detach() != 0], True)

    def count_nonzero(self) -> torch.Tensor:
        """Number of non-zero codes (a 0-dim tensor)."""
        return torch.count_nonzero(self.values.detach())


# ----- selection ----------------------------------------------------------------------------------
# σ reads z as consecutive row blocks ("chunks", each [rows, n_latents]), so that the [B, n_latents]
# pre-activation matrix never has to exist at once; each selection returns the pattern it keeps and
# z at those entries ("pre", [nnz], in pattern order). A chunk is only valid until the next one is
# drawn (the model reuses its memory): a selection copies what it keeps.
Chunks = Iterable[torch.Tensor]


def rows_entries(latents: torch.Tensor, pre: torch.Tensor, n_latents: int) -> tuple[SparsePattern, torch.Tensor]:
    """The pattern of `latents` [n_rows, k] (any order within a row, no repeats) and `pre` [n_rows, k]
    reordered to match it."""
    n_rows, k = latents.shape
    latents, order = latents.sort(dim=1)
    pattern = SparsePattern(
        torch.arange(n_rows, device=latents.device).repeat_interleave(k), latents.reshape(-1), n_rows, n_latents
    )
    pattern._row_offsets = torch.arange(0, n_rows * k, k, device=latents.device)
    return pattern, pre.gather(1, order).reshape(-1)


def select_topk(chunks: Chunks, k: int) -> tuple[SparsePattern, torch.Tensor]:
    """The k largest entries of each row (the same choice as `z.topk(k)`)."""
    latents, pre = [], []
    for z in chunks:
        values, indices = z.topk(k, dim=-1, sorted=False)
        latents.append(indices)
        pre.append(values)
    return rows_entries(torch.cat(latents), torch.cat(pre), z.shape[1])


_PREFILTER_MIN = 1 << 20
"""Batch-wide selections over fewer entries than this go straight to topk."""


def top_flat(flat: torch.Tensor, m: int, period: int = 1) -> torch.Tensor:
    """Indices (any order) of the m largest entries of the 1-D `flat` (ties broken arbitrarily); `period`:
    its row length, which the sample's stride avoids sharing a factor with.

    A topk of a few entries out of millions is slow on CPU, so a threshold is first read off a strided
    sample with a wide margin (6 standard deviations plus 25%), the entries at or above it are
    gathered, and topk runs on those; if too few pass it falls back to the full topk. Exact either way."""
    total = flat.numel()
    if m >= total:
        return torch.arange(total, device=flat.device)
    if total >= _PREFILTER_MIN and 16 * m <= total:
        stride = total // (1 << 16)
        while math.gcd(stride, period) != 1:  # visit every column, not one residue class
            stride -= 1
        sample = flat[::stride]
        expected = m * sample.numel() / total
        rank = min(sample.numel(), math.ceil(1.25 * expected + 6 * math.sqrt(expected) + 16))
        low = sample.topk(rank, sorted=False).values.min()
        candidates = (flat >= low).nonzero().squeeze(1)
        if candidates.numel() >= m:
            return candidates[flat[candidates].topk(m, sorted=False).indices]
    return flat.topk(m, sorted=False).indices


def select_batch_topk(chunks: Chunks, m: int) -> tuple[SparsePattern, torch.Tensor]:
    """The m largest entries of the whole batch (BatchTopK; ties broken arbitrarily).

    A pool of candidates (flat index, value) is kept over the chunks: each chunk adds its own top m
    entries, or once the pool has held m entries, only those at or above the pool's m-th largest value
    (no later entry below it can be among the final m). The pool is cut back to its top m whenever it
    exceeds 2m."""
    pool_index: list[torch.Tensor] = []
    pool_value: list[torch.Tensor] = []
    pool_size, low, offset, n_latents = 0, None, 0, 0
    for z in chunks:
        flat = z.reshape(-1)
        n_latents = z.shape[1]
        keep = top_flat(flat, m, n_latents) if low is None else (flat >= low).nonzero().squeeze(1)
        if low is not None and keep.numel() > m:
            keep = keep[flat[keep].topk(m, sorted=False).indices]
        pool_index.append(keep + offset)
        pool_value.append(flat[keep])
        pool_size += keep.numel()
        offset += flat.numel()
        if pool_size > 2 * m:
            values, index = torch.cat(pool_value), torch.cat(pool_index)
            top = values.topk(m, sorted=False)
            pool_value, pool_index, pool_size = [top.values], [index[top.indices]], m
            low = top.values.min()
    values, index = torch.cat(pool_value), torch.cat(pool_index)
    if values.numel() > m:
        top = values.topk(m, sorted=False)
        values, index = top.values, index[top.indices]
    index, order = _sort(index)
    return SparsePattern(index // n_latents, index % n_latents, offset // n_latents, n_latents), values[order]


def select_above(chunks: Chunks, threshold: torch.Tensor) -> tuple[SparsePattern, torch.Tensor]:
    """The entries above `threshold` (BatchTopK at inference)."""
    patterns, pre = [], []
    for z in chunks:
        mask = z > threshold
        rows, latents = mask.nonzero(as_tuple=True)
        patterns.append(SparsePattern(rows, latents, z.shape[0], z.shape[1]))
        pre.append(z[mask])
    return SparsePattern.cat(patterns), torch.cat(pre)


# ----- the encoder --------------------------------------------------------------------------------
class _EncodeEntries(torch.autograd.Function):
    """Forward: the given pre-activations z at the pattern (already computed). Backward: ∇W_E, ∇b_E,
    ∇x_p from the entries' gradients alone."""

    @staticmethod
    def forward(ctx, pre, x_p, W_E, b_E, pattern: SparsePattern):
        ctx.pattern = pattern
        ctx.has_bias = b_E is not None
        ctx.save_for_backward(x_p, W_E)
        return pre.clone()

    @staticmethod
    @once_differentiable
    def backward(ctx, grad: torch.Tensor):
        x_p, W_E = ctx.saved_tensors
        pattern: SparsePattern = ctx.pattern
        grad = grad.to(W_E.dtype).contiguous()
        grad_x = grad_W = grad_b = None
        if ctx.needs_input_grad[1]:  # ∇x_p[b] = Σ_entries of row b  g · W_E[latent]
            grad_x = F.embedding_bag(
                pattern.latents, W_E.contiguous(), pattern.row_offsets(), mode="sum", per_sample_weights=grad
            ).to(x_p.dtype)
        if ctx.needs_input_grad[2]:  # ∇W_E[i] = Σ_entries of latent i  g · x_p[row]
            perm, offsets = pattern.by_latent()
            grad_W = F.embedding_bag(
                pattern.rows[perm], x_p.contiguous(), offsets, mode="sum", per_sample_weights=grad[perm]
            )
        if ctx.has_bias and ctx.needs_input_grad[3]:
            grad_b = torch.zeros(pattern.n_latents, dtype=grad.dtype, device=grad.device)
            grad_b.index_add_(0, pattern.latents, grad)
        return None, grad_x, grad_W, grad_b, None


def encode_entries(
    pre: torch.Tensor, x_p: torch.Tensor, W_E: torch.Tensor, b_E: torch.Tensor | None, pattern: SparsePattern
) -> torch.Tensor:
    """z at the pattern [nnz] with the gradient of z = x_p W_Eᵀ + b_E. `pre` [nnz] holds those values
    (read off a z computed without autograd, which can then be freed); x_p [B, n_in] in W_E's dtype."""
    return _EncodeEntries.apply(pre, x_p, W_E, b_E, pattern)


# ----- the decoder --------------------------------------------------------------------------------
_SAMPLED_DTYPES = (torch.float32, torch.float64)
"""dtypes torch.sparse.sampled_addmm supports; others take the chunked-gather fallback."""


def _sampled_dots(pattern: SparsePattern, left: torch.Tensor, right_t: torch.Tensor) -> torch.Tensor:
    """d[e] = left[rows[e]] · right_t[latents[e]] for every entry e [nnz]; left [n_rows, d],
    right_t [n_latents, d] (the sampled dense-dense matmul left · right_tᵀ at the pattern)."""
    if left.dtype in _SAMPLED_DTYPES and pattern.nnz > 0:
        crow = torch.cat([pattern.row_offsets(), pattern.rows.new_full((1,), pattern.nnz)])
        with warnings.catch_warnings():  # "sparse CSR support is in beta": the one op used here is tested
            warnings.simplefilter("ignore", UserWarning)
            mask = torch.sparse_csr_tensor(
                crow,
                pattern.latents,
                left.new_zeros(pattern.nnz),
                (pattern.n_rows, pattern.n_latents),
                check_invariants=False,
            )
        return torch.sparse.sampled_addmm(mask, left, right_t.t(), beta=0.0).values()
    out = left.new_empty(pattern.nnz)
    chunk = max(1, (1 << 22) // max(1, left.shape[1]))
    for start in range(0, pattern.nnz, chunk):
        rows, latents = pattern.rows[start : start + chunk], pattern.latents[start : start + chunk]
        out[start : start + chunk] = (left[rows] * right_t[latents]).sum(dim=1)
    return out


class _DecodeEntries(torch.autograd.Function):
    """x̂[r] = Σ_entries of row r  v · W_D[:, latent] (+ b_D)."""

    @staticmethod
    def forward(ctx, values, W_D, b_D, pattern: SparsePattern):
        W_t = W_D.t().contiguous()  # [n_latents, n_out]: one row per latent, as the bag reads them
        out = F.embedding_bag(
            pattern.latents, W_t, pattern.row_offsets(), mode="sum", per_sample_weights=values.to(W_t.dtype)
        )
        if b_D is not None:
            out = out + b_D
        ctx.pattern = pattern
        ctx.has_bias = b_D is not None
        ctx.values_dtype = values.dtype
        ctx.save_for_backward(values)
        ctx.W_t = W_t  # an attribute, not a saved tensor, so the backward can free it before building ∇W_D
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx, grad: torch.Tensor):
        (values,) = ctx.saved_tensors
        W_t, ctx.W_t = ctx.W_t, None
        pattern: SparsePattern = ctx.pattern
        grad = grad.to(W_t.dtype).contiguous()
        grad_values = grad_W = grad_b = None
        if ctx.needs_input_grad[0]:
            grad_values = _sampled_dots(pattern, grad, W_t).to(ctx.values_dtype)
        del W_t
        if ctx.needs_input_grad[1]:  # ∇W_D[:, i] = Σ_entries of latent i  v · ∇x̂[row]
            perm, offsets = pattern.by_latent()
            grad_W = F.embedding_bag(
                pattern.rows[perm], grad, offsets, mode="sum", per_sample_weights=values[perm].to(grad.dtype)
            ).t()
        if ctx.has_bias and ctx.needs_input_grad[2]:
            grad_b = grad.sum(dim=0)
        return grad_values, grad_W, grad_b, None


def decode_entries(
    values: torch.Tensor, W_D: torch.Tensor, b_D: torch.Tensor | None, pattern: SparsePattern
) -> torch.Tensor:
    """W_D x_q + b_D for codes given as `values` [nnz] at `pattern`: [n_rows, n_out]."""
    return _DecodeEntries.apply(values, W_D, b_D, pattern)
