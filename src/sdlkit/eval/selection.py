"""σ's training form against its inference form on the same rows.

Most activations compute the same codes in training and at inference. BatchTopK does not: training keeps
the k·B largest pre-activations of each batch of B samples, inference keeps every pre-activation above a
learned threshold θ. This check runs both forms on held-out rows and says whether θ reproduces the
training L0 and which latents fire under each; `fired_train_only` names the latents training uses that
inference never does (they count as alive in training's dead_fraction but never fire in `sdlkit eval`).
"""

from __future__ import annotations

from typing import Any

import torch

from sdlkit.core.model import SparseDictionary
from sdlkit.data.source import Batch


@torch.no_grad()
def _fired(model: SparseDictionary, x_p: torch.Tensor, rows: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(latents fired on some row, bool [n_latents]; non-zero codes in total, 0-dim) of `model`'s current
    form on x_p, `rows` rows per forward."""
    fired = torch.zeros(model.n_latents, dtype=torch.bool, device=model.W_E.device)
    nonzero = torch.zeros((), dtype=torch.int64, device=fired.device)
    for start in range(0, len(x_p), rows):
        out = model(x_p[start : start + rows].to(fired.device))
        fired |= out.fired()
        nonzero += out.count_nonzero()
    return fired, nonzero


@torch.no_grad()
def selection_agreement(
    model: SparseDictionary, batch: Batch, batch_size: int, chunk_size: int = 8192
) -> dict[str, Any]:
    """On `batch`'s rows: `l0_train` (mean non-zero codes per row under σ's training form, the rows taken
    `batch_size` at a time as training takes them; a tail shorter than `batch_size` is left out, so every
    batch is a full one), `l0_inference` (σ's inference form, `chunk_size` rows at a time: per-row codes do
    not depend on it), `fired_train` and `fired_inference` (how many latents fire on some row under each),
    `fired_train_only` and `fired_inference_only` (the indices of latents firing under one form only), and
    `n_samples` (rows in the training form's batches). The model's mode and buffers (e.g. BatchTopK's θ,
    which a training-form forward moves) are restored afterwards."""
    n = len(batch) if len(batch) < batch_size else len(batch) - len(batch) % batch_size
    was_training = model.training
    buffers = {name: buffer.clone() for name, buffer in model.named_buffers()}
    try:
        model.eval()  # first: the training form's forwards move θ
        fired_inference, nonzero_inference = _fired(model, batch.x_p[:n], chunk_size)
        model.train()
        fired_train, nonzero_train = _fired(model, batch.x_p[:n], min(batch_size, n))
    finally:
        for name, buffer in model.named_buffers():
            buffer.copy_(buffers[name])
        model.train(was_training)
    return {
        "l0_train": nonzero_train.item() / n,
        "l0_inference": nonzero_inference.item() / n,
        "fired_train": int(fired_train.sum()),
        "fired_inference": int(fired_inference.sum()),
        "fired_train_only": (fired_train & ~fired_inference).nonzero().flatten().tolist(),
        "fired_inference_only": (fired_inference & ~fired_train).nonzero().flatten().tolist(),
        "n_samples": n,
    }
