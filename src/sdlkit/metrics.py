"""Reconstruction metrics on a held-out set: MSE, FVU (overall and per source), L0.

Computed in chunks under no_grad with float64 accumulators, so large eval sets fit in memory and the
numbers do not depend on the chunk size beyond float rounding. Recovery metrics arrive with the bench.
"""

from __future__ import annotations

import torch

from sdlkit.data.source import Batch
from sdlkit.model import SparseDictionary


@torch.no_grad()
def reconstruction_metrics(model: SparseDictionary, batch: Batch, chunk_size: int = 8192) -> dict[str, float]:
    """mse = E‖x_r − x̂_r‖² (summed over dims), fvu = Σ‖x_r − x̂_r‖² / Σ‖x_r − x̄_r‖², l0 = mean non-zero
    codes per sample, never_fired_fraction = latents silent on the whole set. Crosscoders (several
    output blocks) also get `fvu_source_j` for each source j."""
    was_training = model.training
    model.eval()
    n = len(batch)
    mean = batch.x_r.to(torch.float64).mean(dim=0)
    sq_err = torch.zeros(model.n_out, dtype=torch.float64, device=mean.device)
    sq_total = torch.zeros_like(sq_err)
    nonzeros = torch.zeros((), dtype=torch.float64, device=mean.device)
    fired = torch.zeros(model.n_latents, dtype=torch.bool, device=model.W_E.device)
    for start in range(0, n, chunk_size):
        x_r = batch.x_r[start : start + chunk_size].to(torch.float64)
        out = model(batch.x_p[start : start + chunk_size])
        sq_err += (x_r - out.x_hat.to(torch.float64)).pow(2).sum(dim=0)
        sq_total += (x_r - mean).pow(2).sum(dim=0)
        active = out.x_q != 0
        nonzeros += active.sum()
        fired |= active.any(dim=0)
    model.train(was_training)

    def fvu(err: torch.Tensor, total: torch.Tensor) -> float:
        return (err.sum() / total.sum()).item() if total.sum() > 0 else float("nan")

    metrics = {
        "mse": sq_err.sum().item() / n,
        "fvu": fvu(sq_err, sq_total),
        "l0": nonzeros.item() / n,
        "never_fired_fraction": 1.0 - fired.float().mean().item(),
    }
    blocks = model.config.out_blocks or [model.n_out]
    if len(blocks) > 1:
        for j, (err, total) in enumerate(zip(sq_err.split(blocks), sq_total.split(blocks), strict=True)):
            metrics[f"fvu_source_{j}"] = fvu(err, total)
    return metrics
