"""Running the models on prepared batches and turning what the hooks recorded into store rows.

A module output [B, T, D] gives one row per token (text: the masked tokens only, so no padding and by default
no special tokens; images: every token); [B, D] (or a pooled `NAME:mean`) gives one row per sample. Each row
carries its provenance: dataset sample, token id and position in its sample (-1 where a row stands for the
whole sample, or has no token id). A step's rows come back in sample order, tokens in order.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from sdlkit.errors import ConfigError
from sdlkit.harvest.batching import sample_order
from sdlkit.harvest.hooks import Recorder
from sdlkit.harvest.models import POOLED_SUFFIXES, LoadedModel, ModuleSpec
from sdlkit.harvest.pooling import pool_tokens
from sdlkit.harvest.prepare import Prepared, Step

Rows = tuple[dict[str, torch.Tensor], torch.Tensor, torch.Tensor, torch.Tensor]
"""Rows per module ([rows, D]) and, per row, its dataset sample, token id and position (int64 [rows])."""


def record_batch(
    loaded: list[LoadedModel], specs: list[ModuleSpec], batch: Prepared, device: torch.device
) -> dict[str, torch.Tensor]:
    """The tensors of every spec for one batch, as the modules give them (on `device`)."""
    records: dict[str, torch.Tensor] = {}
    pooled = set(POOLED_SUFFIXES.values())
    with torch.inference_mode():
        for i, item in enumerate(loaded):
            mine = [spec for spec in specs if spec.model_index == i]
            if not mine:
                continue
            inputs = {k: _to_model(v, item.model, device) for k, v in batch.inputs[i].items()}
            with Recorder(item.model, mine) as recorder:
                records.update(recorder.run(lambda m=item.model, x=inputs: _forward(m, x)))
            for spec in mine:
                if spec.role in pooled:
                    attention = inputs.get("attention_mask")
                    records[spec.key] = pool_tokens(records[spec.key], attention, spec.role, spec.key)
    return {spec.key: records[spec.key] for spec in specs}


def step_rows(loaded: list[LoadedModel], specs: list[ModuleSpec], step: Step, device: torch.device) -> Rows | None:
    """Run the models on one step's forward passes: its rows in sample order, or None when it gives none."""
    parts = [_rows(record_batch(loaded, specs, batch, device), batch) for batch in step.passes]
    parts = [part for part in parts if len(part[1])]
    if not parts:
        return None
    acts = {key: torch.cat([part[0][key] for part in parts]) for key in parts[0][0]}
    sample, token, position = (torch.cat([part[i] for part in parts]) for i in (1, 2, 3))
    if bool((sample[1:] < sample[:-1]).any()):  # passes (and samples within one) ran sorted by length
        order = sample_order(sample)
        acts = {key: x[order.to(x.device)] for key, x in acts.items()}
        sample, token, position = sample[order], token[order], position[order]
    return acts, sample, token, position


def _rows(records: dict[str, torch.Tensor], batch: Prepared) -> Rows:
    """Rows per module ([rows, D]) and, per row, its dataset sample, token id and position in the sample
    (int64 [rows]; -1 where a row stands for the whole sample, or has no token id: image patches).
    Per-token outputs keep the masked tokens."""
    acts: dict[str, torch.Tensor] = {}
    sample = batch.index
    token = position = torch.full_like(sample, -1)
    for key, x in records.items():
        if x.ndim == 2:
            acts[key] = x
            continue
        mask = batch.mask if batch.mask is not None else torch.ones(x.shape[:2], dtype=torch.bool)
        if tuple(x.shape[:2]) != tuple(mask.shape):
            raise ConfigError(
                f"module {key!r} gives shape {list(x.shape)}, not one vector per token of the batch {list(mask.shape)}"
            )
        acts[key] = x[mask.to(x.device)]
        sample = batch.index[:, None].expand(mask.shape)[mask]
        position = torch.arange(mask.shape[1]).expand(mask.shape)[mask]
        ids = batch.inputs[0].get("input_ids") if batch.inputs else None
        token = ids[mask] if ids is not None and ids.shape == mask.shape else torch.full_like(sample, -1)
    return acts, sample, token, position


def _forward(model: nn.Module, inputs: dict[str, torch.Tensor]) -> Any:
    """One forward pass; a full CLIPModel runs its image path only (no text needed)."""
    if type(model).__name__ == "CLIPModel":
        return model.get_image_features(**inputs)
    return model(**inputs)


def _to_model(x: torch.Tensor, model: nn.Module, device: torch.device) -> torch.Tensor:
    if x.is_floating_point():
        return x.to(device, next(model.parameters()).dtype)
    return x.to(device)


def probe_dims(
    loaded: list[LoadedModel], specs: list[ModuleSpec], probe: Prepared, device: torch.device
) -> dict[str, int]:
    """Module key -> width, from one small forward pass; all modules must give rows the same way."""
    records = record_batch(loaded, specs, probe, device)
    per_token = {key: x.ndim == 3 for key, x in records.items()}
    for key, x in records.items():
        if x.ndim not in (2, 3):
            raise ConfigError(
                f"module {key!r} gives shape {list(x.shape)}; a harvest needs [batch, dim] or [batch, tokens, dim]"
            )
    if len(set(per_token.values())) > 1:
        token = next(k for k, v in per_token.items() if v)
        sample = next(k for k, v in per_token.items() if not v)
        raise ConfigError(
            f"modules give rows differently: {token!r} one per token [B, T, D], {sample!r} one per sample [B, D]; "
            "harvest them into separate stores"
        )
    return {key: int(x.shape[-1]) for key, x in records.items()}
