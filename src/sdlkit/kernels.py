"""The sparse fast path of the TopK family: codes as (row, latent, value) entries instead of [B, n_q].

The dense path (the reference) computes z = x_p W_Eᵀ + b_E [B, n_q], x_q = σ(z) [B, n_q] and
x̂ = x_q W_Dᵀ + b_D; its backward multiplies [B, n_q] gradients, so a step costs about five GEMMs of
B·n_in·n_q each. A TopK-family σ keeps only nnz ≈ k·B entries, where σ(z) = ReLU(z) (eq. 10), so:

- `encode_entries`: the active entries of z with a gradient whose backward builds ∇W_E, ∇b_E (and
  ∇x_p) from those entries alone (an embedding bag over x_p, one bag per latent): cost nnz·n_in, no
  [B, n_q] gradient. z itself is computed once, without autograd, only to choose the entries.
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

import numpy as np
import torch
from torch.nn import functional as F


def _sort(values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(sorted values, permutation) of a 1-D integer tensor, stable. On CPU through numpy: torch's
    CPU sort of a long 1-D integer tensor is ~100x slower here when its threads compete for cores."""
    if values.device.type == "cpu":
        perm = torch.from_numpy(np.argsort(values.numpy(), kind="stable"))
        return values[perm], perm
    return torch.sort(values, stable=True)


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
    def from_rows(cls, latents: torch.Tensor, n_latents: int) -> SparsePattern:
        """The pattern with the same number of entries in every row: latents [n_rows, k], any order
        within a row (e.g. from topk)."""
        n_rows, k = latents.shape
        latents = latents.sort(dim=1).values.reshape(-1)
        rows = torch.arange(n_rows, device=latents.device).repeat_interleave(k)
        pattern = cls(rows, latents, n_rows, n_latents)
        pattern._row_offsets = torch.arange(0, n_rows * k, k, device=latents.device)
        return pattern

    @classmethod
    def from_flat(cls, flat: torch.Tensor, n_rows: int, n_latents: int) -> SparsePattern:
        """The pattern of the flat (row-major) indices `flat` [nnz] into [n_rows, n_latents], any order."""
        flat = _sort(flat)[0]
        return cls(flat // n_latents, flat % n_latents, n_rows, n_latents)

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
def topk_pattern(z: torch.Tensor, k: int) -> SparsePattern:
    """The k largest entries of each row of z [B, n_latents] (the same choice as `z.topk(k)`)."""
    return SparsePattern.from_rows(z.topk(k, dim=-1, sorted=False).indices, z.shape[1])


_PREFILTER_MIN = 1 << 20
"""Batch-wide selections over fewer entries than this go straight to topk."""


def batch_topk_pattern(z: torch.Tensor, m: int) -> SparsePattern:
    """The m largest entries of the whole of z [B, n_latents] (BatchTopK; ties broken arbitrarily).

    A full topk over B·n_q entries is slow on CPU, so a threshold is first read off a strided sample
    with a wide margin (6 standard deviations plus 25%), the entries at or above it are gathered, and
    topk runs on those; if the threshold turns out too high (fewer than m entries pass) it falls back
    to the full topk. The result is exact either way."""
    flat = z.reshape(-1)
    n_rows, n_latents = z.shape
    total = flat.numel()
    if m >= total:
        return SparsePattern.from_flat(torch.arange(total, device=z.device), n_rows, n_latents)
    if total >= _PREFILTER_MIN and 16 * m <= total:
        stride = total // (1 << 16)
        while math.gcd(stride, n_latents) != 1:  # visit every column, not one residue class
            stride -= 1
        sample = flat[::stride]
        expected = m * sample.numel() / total
        rank = min(sample.numel(), math.ceil(1.25 * expected + 6 * math.sqrt(expected) + 16))
        low = sample.topk(rank, sorted=False).values.min()
        candidates = (flat >= low).nonzero().squeeze(1)
        if candidates.numel() >= m:
            keep = flat[candidates].topk(m, sorted=False).indices
            return SparsePattern.from_flat(candidates[keep], n_rows, n_latents)
    return SparsePattern.from_flat(flat.topk(m, sorted=False).indices, n_rows, n_latents)


def threshold_pattern(z: torch.Tensor, threshold: torch.Tensor) -> SparsePattern:
    """The entries of z [B, n_latents] above `threshold` (BatchTopK at inference)."""
    rows, latents = (z > threshold).nonzero(as_tuple=True)
    return SparsePattern(rows, latents, z.shape[0], z.shape[1])


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
        ctx.save_for_backward(values, W_t)
        return out

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        values, W_t = ctx.saved_tensors
        pattern: SparsePattern = ctx.pattern
        grad = grad.to(W_t.dtype).contiguous()
        grad_values = grad_W = grad_b = None
        if ctx.needs_input_grad[0]:
            grad_values = _sampled_dots(pattern, grad, W_t).to(ctx.values_dtype)
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
