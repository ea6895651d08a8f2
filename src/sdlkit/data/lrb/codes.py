"""The LRB's codes x as their active entries: fresh draws per batch, or rows of a fixed set reshuffled per epoch.

    x_d = Bernoulli(1 − S) · (c_min + Exp(scale beta))        over a [rows, n] block, row-major

Codes are kept in CSR form (`Entries`), so drawing and storing them costs ∝ the active entries, not rows · n.
Every stream draws from its own generator, seeded from (seed, stream name, index): batch `index` needs no
earlier batch, and no two streams share random numbers.
"""

from __future__ import annotations

import torch

from sdlkit.data.lrb.config import LRBConfig
from sdlkit.data.lrb.hierarchy import Hierarchy, impose_hierarchy
from sdlkit.data.sampling import bernoulli_positions
from sdlkit.errors import ConfigError
from sdlkit.seeding import derive_seed

Entries = tuple[torch.Tensor, torch.Tensor, torch.Tensor]
"""Codes as CSR entries: row_ptr [rows + 1] (int64), col [nnz] (feature index), val [nnz] (magnitude)."""

SET_CHUNK = 4096
"""Rows drawn per generator when building the fixed training set (a constant, so the set is reproducible)."""


def seeded_generator(seed: int, stream: str, index: int, device: torch.device) -> torch.Generator:
    """A generator on `device` for draw `index` of the named stream (seeded from a hash of all three)."""
    gen = torch.Generator(device=device)
    gen.manual_seed(derive_seed(seed, stream, index))
    return gen


class CodeStream:
    """Codes of one LRB config on `device`: `entries(index, batch_size)` for training batches, `sample` for any
    named stream, `dense` to turn entries into a [rows, n] tensor.

    With `config.n_samples` = N, training batches are rows of a fixed set (`fixed_set`, CSR, built once) in
    a fresh permutation every epoch; otherwise every batch is a fresh draw.
    """

    def __init__(self, config: LRBConfig, hierarchy: Hierarchy | None, device: torch.device, dtype: torch.dtype):
        self.config, self.hierarchy, self.device, self.dtype = config, hierarchy, device, dtype
        self._perms: dict[int, torch.Tensor] = {}
        self.fixed_set: Entries | None = None
        """The fixed training set (row_ptr [N+1], col [nnz] int32, val [nnz]), or None for an infinite stream."""
        if config.n_samples is not None:
            self.fixed_set = self._build_training_set(config.n_samples)

    def generator(self, stream: str, index: int) -> torch.Generator:
        return seeded_generator(self.config.seed, stream, index, self.device)

    def entries(self, index: int, batch_size: int) -> Entries:
        """The active entries of training batch `index` (drawn, or rows of the fixed set)."""
        if index < 0 or batch_size < 1:
            raise ConfigError(
                f"batch index must be >= 0 and batch_size >= 1, got index={index}, batch_size={batch_size}"
            )
        if self.fixed_set is None:
            return self.sample(batch_size, self.generator("train", index))
        N = self.config.n_samples
        assert N is not None
        positions = torch.arange(index * batch_size, (index + 1) * batch_size, device=self.device)
        epochs = positions // N
        rows = torch.empty_like(positions)
        for epoch in range(int(epochs[0]), int(epochs[-1]) + 1):
            sel = epochs == epoch
            rows[sel] = self._permutation(epoch)[positions[sel] - epoch * N]
        return self.set_rows(rows)

    def sample(self, rows: int, gen: torch.Generator) -> Entries:
        """x_d = Bernoulli(1 − S) · (c_min + beta · Exp(1)) for a [rows, n] block, drawn with `gen`,
        as its active entries.

        The Bernoulli ones are drawn as geometric gaps (a cost ∝ the ones found); magnitudes are drawn for
        the active entries in row-major order. With a hierarchy, the tree's non-leaf entries of the Bernoulli
        draw are replaced by "any child active" (bottom-up, on a dense [rows, n] mask) before the magnitudes
        are drawn.
        """
        cfg = self.config
        n = cfg.n_features
        positions = bernoulli_positions(rows * n, 1 - cfg.S, gen, self.device)
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

    def dense(self, entries: Entries) -> torch.Tensor:
        """Dense codes [rows, n] of CSR entries."""
        row_ptr, col, val = entries
        rows = row_ptr.numel() - 1
        out = torch.zeros(rows, self.config.n_features, device=self.device, dtype=self.dtype)
        row = torch.repeat_interleave(torch.arange(rows, device=self.device), row_ptr.diff())
        out[row, col.long()] = val
        return out

    def set_rows(self, rows: torch.Tensor) -> Entries:
        """The entries (CSR) of the fixed-set samples `rows`, in that order (vectorised gather)."""
        assert self.fixed_set is not None
        row_ptr, col, val = self.fixed_set
        starts = row_ptr[rows]
        counts = row_ptr[rows + 1] - starts
        out_ptr = torch.zeros(len(rows) + 1, dtype=torch.int64, device=self.device)
        out_ptr[1:] = counts.cumsum(0)
        total = int(out_ptr[-1])
        offsets = torch.arange(total, device=self.device) - torch.repeat_interleave(out_ptr[:-1], counts)
        positions = torch.repeat_interleave(starts, counts) + offsets
        return out_ptr, col[positions].long(), val[positions]

    def _permutation(self, epoch: int) -> torch.Tensor:
        """The order of the fixed set in `epoch` (cached for the two most recent epochs)."""
        perm = self._perms.get(epoch)
        if perm is None:
            N = self.config.n_samples
            assert N is not None
            perm = torch.randperm(N, generator=self.generator("epoch", epoch), device=self.device)
            if len(self._perms) >= 2:
                self._perms.pop(min(self._perms))
            self._perms[epoch] = perm
        return perm

    def _build_training_set(self, N: int) -> Entries:
        """The fixed set in CSR form (row_ptr [N+1], col [nnz] int32, val [nnz]): ~(1 − S)·n·N non-zeros."""
        cols, vals, row_ptrs = [], [], [torch.zeros(1, dtype=torch.int64, device=self.device)]
        for chunk, start in enumerate(range(0, N, SET_CHUNK)):
            row_ptr, col, val = self.sample(min(SET_CHUNK, N - start), self.generator("train_set", chunk))
            row_ptrs.append(row_ptr[1:] + row_ptrs[-1][-1])
            cols.append(col.to(torch.int32))
            vals.append(val)
        return torch.cat(row_ptrs), torch.cat(cols), torch.cat(vals)
