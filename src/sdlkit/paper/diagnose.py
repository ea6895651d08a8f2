"""`sdlkit diagnose`: a trained dictionary's activation-pattern census in the paper's terms (Def 3.1).

Each ground-truth feature is presented alone, at the mean active magnitude c_min + β, through the model's
own encoder (biases, thresholds and σ included): latent i "fires for" feature d when its code is
non-zero (or above `min_activation`). The pattern is then read by `sdlkit.paper.theory.classify`: latents are
monosemantic, polysemantic or dead; features recovered, absorbed (only polysemantic latents fire for
them) or lost.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from sdlkit.config import load_yaml, validate
from sdlkit.core.model import SparseDictionary
from sdlkit.data.lrb.config import LRBConfig
from sdlkit.data.lrb.source import LRBSource
from sdlkit.errors import CheckpointError, ConfigError
from sdlkit.io import read_config, resolve_checkpoint
from sdlkit.paper.theory import classify
from sdlkit.report import format_table


def bench_data_config(checkpoint: Path, bench_config: str | None) -> LRBConfig:
    """The LRB config of a checkpoint: from `--bench-config` (a run config or its data section, YAML or
    JSON), else the one its training recorded in config.json."""
    if bench_config is not None:
        values = load_yaml(bench_config)
        return validate(LRBConfig, values.get("data", values), "data")
    run = read_config(resolve_checkpoint(checkpoint)).get("run")
    if not run or "data" not in run:
        raise ConfigError(
            f"{checkpoint} does not record the bench data it was trained on: pass --bench-config FILE.yaml"
        )
    data = run["data"]
    if isinstance(data, dict) and (data.get("kind") == "store" or "store" in data):
        raise ConfigError(
            f"{checkpoint} was trained on the activation store {data.get('store')}, which has no ground truth: "
            "diagnose needs bench (LRB) data; pass --bench-config FILE.yaml with the bench data to present "
            "(e.g. data: {preset: quick}), or measure it on its store with sdlkit eval"
        )
    return validate(LRBConfig, data, "data")


@torch.no_grad()
def census(model: SparseDictionary, source: LRBSource, min_activation: float = 0.0) -> dict[str, Any]:
    """The activation-pattern census of `model` against `source`'s ground truth."""
    if (model.n_in, model.n_out) != (source.n_in, source.n_out):
        raise CheckpointError(
            f"the dictionary maps {model.n_in} → {model.n_out} dims but the bench data has "
            f"{source.n_in} → {source.n_out}: pass the --bench-config it was trained on"
        )
    model.eval()
    magnitude = source.config.c_min + source.config.beta
    W_p = source.W_p.to(model.W_E.device, model.W_E.dtype)
    codes = model.encode(magnitude * W_p.T)  # [n, n_latents]: each feature alone
    pattern = (codes.abs() > min_activation).T.cpu()  # [n_latents, n]
    result = classify(pattern, model.W_D.detach().cpu(), source.W_r.cpu())
    result["magnitude"] = magnitude
    result["min_activation"] = min_activation
    return result


def census_table(result: dict[str, Any]) -> str:
    """The counts as a two-part table (latents, features)."""
    latents = {k: result[k] for k in ("n_monosemantic", "n_polysemantic", "n_dead") if k in result}
    features = {k: result[k] for k in ("n_recovered", "n_absorbed", "n_lost") if k in result}
    rows = [{"what": k.removeprefix("n_"), "count": v} for k, v in {**latents, **features}.items()]
    return format_table(rows, ["what", "count"])


def to_json(value: Any) -> Any:
    """The census with tensors as lists and integer keys as strings (JSON)."""
    if isinstance(value, torch.Tensor):
        return value.tolist()
    if isinstance(value, dict):
        return {str(k): to_json(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [to_json(v) for v in value]
    return value
