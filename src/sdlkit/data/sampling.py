"""Sampling helpers shared by the synthetic data sources (LRB, SynthSAEBench)."""

from __future__ import annotations

import torch


def bernoulli_positions(total: int, p: float, gen: torch.Generator, device: torch.device) -> torch.Tensor:
    """Ascending positions in [0, total) of independent Bernoulli(p) successes, drawn as geometric gaps
    between them: the same distribution at a cost ∝ the successes."""
    if p >= 1:
        return torch.arange(total, device=device)
    chunks, last = [], -1
    while True:
        remaining = (total - 1 - last) * p
        gaps = torch.empty(int(remaining + 6 * remaining**0.5 + 64), dtype=torch.int64, device=device)
        positions = last + gaps.geometric_(p, generator=gen).cumsum(0)
        chunks.append(positions)
        last = int(positions[-1])
        if last >= total:
            positions = torch.cat(chunks)
            return positions[positions < total]
