"""Reconstruction metrics on held-out data: MSE, FVU (overall and per source), L0, dead and dense latents.

One streaming pass with float64 accumulators, so an evaluation set larger than memory (an activation
store) costs one read, and the numbers do not depend on the chunking beyond float rounding. FVU uses
Σ‖x − x̄‖² = Σ‖x‖² − N‖x̄‖² per dimension, which needs no second pass for the mean.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch

from sdlkit.core.model import SparseDictionary
from sdlkit.data.source import Batch

DENSE_THRESHOLD = 0.1
"""A latent is dense when it fires on more than this fraction of the samples (SAELens' dashboards and
sparsify flag such latents: they read like biases, not features)."""


@torch.no_grad()
def streaming_metrics(
    model: SparseDictionary, batches: Iterable[Batch], dense_threshold: float = DENSE_THRESHOLD
) -> dict[str, float]:
    """mse = E‖x_r − x̂_r‖² (summed over dims), fvu = Σ‖x_r − x̂_r‖² / Σ‖x_r − x̄_r‖², l0 = mean non-zero
    codes per sample, never_fired_fraction = latents silent on every sample, dense_fraction = latents
    firing on more than `dense_threshold` of the samples, n_samples. Crosscoders (several output
    blocks) also get `fvu_source_j` for each source j."""
    was_training = model.training
    model.eval()
    device = model.W_E.device
    sq_err = torch.zeros(model.n_out, dtype=torch.float64, device=device)
    sum_x = torch.zeros_like(sq_err)
    sum_sq = torch.zeros_like(sq_err)
    fire_counts = torch.zeros(model.n_latents, dtype=torch.float64, device=device)
    n = 0
    try:
        for batch in batches:
            x_r = batch.x_r.to(device, torch.float64)
            # row blocks: codes [rows, n_latents] stay bounded (and sparse where the kernel is)
            for start, out in model.blocks(batch.x_p.to(device)):
                x_hat = out.x_hat.to(torch.float64)
                sq_err += (x_r[start : start + len(x_hat)] - x_hat).pow(2).sum(dim=0)
                fire_counts += out.fire_counts()
            sum_x += x_r.sum(dim=0)
            sum_sq += x_r.pow(2).sum(dim=0)
            n += len(batch)
    finally:
        model.train(was_training)
    if n == 0:
        raise ValueError("no samples to evaluate on")
    sq_total = (sum_sq - sum_x.pow(2) / n).clamp_min(0)

    def fvu(err: torch.Tensor, total: torch.Tensor) -> float:
        return (err.sum() / total.sum()).item() if total.sum() > 0 else float("nan")

    frequency = fire_counts / n
    metrics = {
        "mse": sq_err.sum().item() / n,
        "fvu": fvu(sq_err, sq_total),
        "l0": fire_counts.sum().item() / n,
        "never_fired_fraction": (frequency == 0).double().mean().item(),
        "dense_fraction": (frequency > dense_threshold).double().mean().item(),
        "n_samples": n,
    }
    blocks = model.config.out_blocks or [model.n_out]
    if len(blocks) > 1:
        for j, (err, total) in enumerate(zip(sq_err.split(blocks), sq_total.split(blocks), strict=True)):
            metrics[f"fvu_source_{j}"] = fvu(err, total)
    return metrics


def batch_fvu(x_r: torch.Tensor, x_hat: torch.Tensor) -> torch.Tensor:
    """Σ‖x_r − x̂_r‖² / Σ‖x_r − x̄_r‖² over one batch (x̄_r its mean), in float32 and without gradient:
    x_r, x_hat [..., B, n] → [...] (a stack of runs gives one value per run). The training log's `fvu`."""
    x_r, x_hat = x_r.detach().float(), x_hat.detach().float()
    error = (x_r - x_hat).pow(2).sum(dim=(-2, -1))
    return error / (x_r - x_r.mean(dim=-2, keepdim=True)).pow(2).sum(dim=(-2, -1))


def reconstruction_metrics(model: SparseDictionary, batch: Batch, chunk_size: int = 8192) -> dict[str, float]:
    """`streaming_metrics` over one in-memory batch, taken `chunk_size` rows at a time."""
    chunks = (
        Batch(batch.x_p[start : start + chunk_size], batch.x_r[start : start + chunk_size])
        for start in range(0, len(batch), chunk_size)
    )
    return streaming_metrics(model, chunks)
