"""Length-sorted forward passes: padding is where a text harvest loses its time.

A harvest step takes `sort_window` × `batch_size` consecutive samples, sorts them by token count and runs
them as forward passes of `batch_size` similar-length texts, each padded to its own longest text, which
cuts the padding several-fold on texts of mixed length (benchmarks/README.md, "Harvest on a real model").
The rows are then put back in sample order, so the store is the same as an unsorted harvest's (up to float
rounding, the forward passes having other padding), and the step, not the pass, is the unit of resume and of
`max_rows`.
"""

from __future__ import annotations

import torch


def sorted_passes(lengths: torch.Tensor, batch_size: int) -> list[torch.Tensor]:
    """Indices [≤ batch_size] into the step's samples, one tensor per forward pass: samples sorted by
    `lengths` [N] (stable, so equal lengths keep sample order), then cut into consecutive passes."""
    order = torch.sort(lengths, stable=True).indices
    return list(torch.split(order, batch_size))


def pad_ids(ids: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-padded input ids int64 [B, T_max] and attention mask int64 [B, T_max] of B token lists."""
    lengths = torch.tensor([len(row) for row in ids], dtype=torch.int64)
    flat = torch.tensor([token for row in ids for token in row], dtype=torch.int64)
    width = int(lengths.max()) if len(ids) else 0
    attention = torch.arange(width)[None, :] < lengths[:, None]
    padded = torch.full((len(ids), width), pad_id, dtype=torch.int64)
    padded[attention] = flat  # row-major boolean indexing fills each row's first len(row) slots in order
    return padded, attention.to(torch.int64)


def sample_order(sample: torch.Tensor) -> torch.Tensor:
    """The permutation that puts rows back in sample order: a stable sort by sample id, so the tokens of a
    sample (one pass each, in order) stay in order."""
    return torch.sort(sample, stable=True).indices
