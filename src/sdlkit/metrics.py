"""Reconstruction metrics on a held-out set: MSE, FVU, L0 (recovery metrics arrive with the bench).

All are computed in chunks under no_grad, in float64 accumulators, so large eval sets fit in memory
and the numbers do not depend on the chunk size beyond float rounding.
"""

from __future__ import annotations

import torch

from sdlkit.data.source import Batch
from sdlkit.model import SparseDictionary


@torch.no_grad()
def reconstruction_metrics(model: SparseDictionary, batch: Batch, chunk_size: int = 8192) -> dict[str, float]:
    """mse = E‖x_r − x̂_r‖² (per sample, summed over dims), fvu = Σ‖x_r − x̂_r‖² / Σ‖x_r − x̄_r‖²,
    l0 = mean non-zero codes per sample, and per-latent firing counts (as `fired`, a tensor)."""
    was_training = model.training
    model.eval()
    n = len(batch)
    x_r_all = batch.x_r.to(torch.float64)
    mean = x_r_all.mean(dim=0)
    sq_err = sq_total = nonzeros = 0.0
    fired = torch.zeros(model.n_latents, dtype=torch.bool, device=model.W_E.device)
    for start in range(0, n, chunk_size):
        x_p = batch.x_p[start : start + chunk_size]
        x_r = x_r_all[start : start + chunk_size]
        out = model(x_p)
        sq_err += (x_r - out.x_hat.to(torch.float64)).pow(2).sum().item()
        sq_total += (x_r - mean).pow(2).sum().item()
        active = out.x_q != 0
        nonzeros += active.sum().item()
        fired |= active.any(dim=0)
    model.train(was_training)
    return {
        "mse": sq_err / n,
        "fvu": sq_err / sq_total if sq_total > 0 else float("nan"),
        "l0": nonzeros / n,
        "never_fired_fraction": 1.0 - fired.float().mean().item(),
    }
