"""The store's running statistics: per module Σx float64 [dim] and Σ‖x‖² float64 [], kept in stats.safetensors.

They are summed from the stored (cast) values, so E‖x‖² (the manifest's `mean_sq_norm`, used to normalise)
describes exactly what training reads. `stats.safetensors` records how many shards and rows its sums cover;
when that does not match the manifest (a crash between the two writes), the sums are recomputed from the shards.
"""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open

from sdlkit.io import save_tensors_atomically
from sdlkit.store.format import STATS_FILE, StoreManifest

STATS_CHUNK = 16384
"""Rows converted to float64 at a time when accumulating statistics (bounds the extra memory)."""


def row_stats(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(Σx float64 [dim], Σ‖x‖² float64 []) over the rows of x, on the CPU; computed where x lives (GPU
    when harvesting there), in fixed-size row chunks. Σ‖x‖² is finite iff every entry of x is."""
    total = torch.zeros(x.shape[1], dtype=torch.float64, device=x.device)
    total_sq = torch.zeros((), dtype=torch.float64, device=x.device)
    for start in range(0, x.shape[0], STATS_CHUNK):
        chunk = x[start : start + STATS_CHUNK].to(torch.float64)
        total += chunk.sum(dim=0)
        flat = chunk.reshape(-1)
        total_sq += torch.dot(flat, flat)
    return total.cpu(), total_sq.cpu()


def save_stats(
    folder: Path, sums: dict[str, torch.Tensor], sq: dict[str, torch.Tensor], shards: int, rows: int
) -> None:
    """Write stats.safetensors atomically, recording the number of `shards` and `rows` the sums cover."""
    tensors = {}
    for name in sums:
        tensors[f"{name}.sum"] = sums[name].clone()
        tensors[f"{name}.sum_sq_norm"] = sq[name].clone()
    save_tensors_atomically(folder / STATS_FILE, tensors, metadata={"shards": str(shards), "rows": str(rows)})


def load_stats(folder: Path, manifest: StoreManifest) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """The running sums of the committed shards: from stats.safetensors when it matches the manifest,
    else recomputed from the shards (a crash between the two writes leaves the stats one shard ahead)."""
    path = folder / STATS_FILE
    try:
        with safe_open(str(path), framework="pt") as handle:
            meta = handle.metadata() or {}
            if meta.get("shards") == str(len(manifest.shards)) and meta.get("rows") == str(manifest.rows):
                sums = {name: handle.get_tensor(f"{name}.sum") for name in manifest.modules}
                sq = {name: handle.get_tensor(f"{name}.sum_sq_norm") for name in manifest.modules}
                return sums, sq
    except (SafetensorError, OSError, ValueError, RuntimeError):
        pass  # missing or damaged: recompute below
    return recompute_stats(folder, manifest)


def recompute_stats(
    folder: str | Path, manifest: StoreManifest
) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """Per module (Σx, Σ‖x‖²) float64 over the manifest's shards (the writer's sums up to float64 rounding)."""
    folder = Path(folder)
    names = list(manifest.modules)
    sums = {name: torch.zeros(dim, dtype=torch.float64) for name, dim in manifest.dims.items()}
    sq = {name: torch.zeros((), dtype=torch.float64) for name in names}
    for info in manifest.shards:
        with safe_open(str(folder / info.file), framework="pt") as handle:
            tensors = {name: handle.get_tensor(name) for name in names}
        for name in names:
            total, total_sq = row_stats(tensors[name])
            sums[name] += total
            sq[name] += total_sq
    return sums, sq
