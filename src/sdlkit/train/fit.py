"""`fit`: train a dictionary on activations a Python program already holds (a tensor, or batches), recording
where they came from (`data.kind` tensor or batches, with shape and fingerprint) instead of a made-up source."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from sdlkit.config import run_config
from sdlkit.data.array.batches import Batches, BatchesSource, batches_config
from sdlkit.data.array.source import Rows, TensorRows, TensorSource, tensor_config
from sdlkit.errors import ConfigError
from sdlkit.train.trainer import Trainer, TrainResult


def fit(
    data: Rows | Batches,
    values: Mapping[str, Any],
    run_dir: str | Path | None = None,
    *,
    targets: Rows | None = None,
    resume: bool = False,
) -> TrainResult:
    """Train on `data` as `values` say, logging and checkpointing in `run_dir` when given.

    `data`: a tensor or NumPy array [rows, n_in] (or [..., n_in]), with `targets` [rows, n_out] for a
    transcoder: shuffled in windows and its last `data.eval_rows` rows held out, as an array file. Or batches:
    a list or DataLoader of tensors [b, n_in] (or (x_p, x_r) pairs), or a function returning a fresh iterator
    of them: the first `data.eval_batches` are held out, the rest cut into `train.batch_size` rows.
    `values`: a run config as a mapping (`model`, `train`, `seed`, `device`); its optional `data` holds only
    settings (tensor: normalize, shuffle_buffer, eval_rows, seed; batches: eval_batches, description). n_in
    and n_out come from the data. `resume` continues from `run_dir`'s latest checkpoint: exact for a tensor,
    and for batches exact when they replay the same rows in the same order.
    """
    settings = dict(values.get("data") or {})
    in_memory = isinstance(data, torch.Tensor | np.ndarray)
    kind = "tensor" if in_memory else "batches"
    if settings.pop("kind", kind) != kind:
        raise ConfigError(f"data.kind: fit trains on the {kind} it is given; leave data.kind out")
    if in_memory:
        x, rows = (
            TensorRows(data, "the tensor x"),
            TensorRows(targets, "the tensor targets") if targets is not None else None,
        )
        section = tensor_config(x, rows, **settings)
    elif targets is not None:
        raise ConfigError("targets go with a tensor; batches carry their x_r as (x_p, x_r) pairs")
    else:
        section = batches_config(data, **settings)
    config = run_config({**values, "data": section.model_dump(mode="json")})
    if in_memory:
        source = TensorSource(config.data, config.device, x=x, targets=rows)
    else:
        source = BatchesSource(config.data, config.device, batches=data)
    return Trainer(config, source, run_dir).fit(resume=resume)
