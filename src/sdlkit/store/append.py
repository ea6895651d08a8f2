"""Checking and casting what StoreWriter.append is given: one harvest part as the tensors a shard will hold.

Activations become [rows, dim] in the store dtype, cast where they live (a GPU's copy to the CPU is then
smaller); index tensors (sample, label, token, position) become int64 [rows] on the CPU. Each bad input is a
StoreError naming the module or tensor and the shape or values the store needs.
"""

from __future__ import annotations

import torch

from sdlkit.errors import StoreError
from sdlkit.store.format import LABEL_KEY, SAMPLE_KEY
from sdlkit.store.stats import row_stats


def index_tensor(what: str, value: torch.Tensor, rows: int) -> torch.Tensor:
    """`value` as int64 [rows] on the CPU; StoreError on another shape or a non-integer dtype."""
    if not isinstance(value, torch.Tensor) or value.shape != (rows,):
        shape = tuple(value.shape) if isinstance(value, torch.Tensor) else type(value).__name__
        raise StoreError(f"{what} has shape {shape}; the store needs one int64 per row: [{rows}]")
    if value.is_floating_point() or value.is_complex() or value.dtype == torch.bool:
        raise StoreError(f"{what} has dtype {value.dtype}; the store needs integer ids (int64)")
    return value.detach().to("cpu", torch.int64).contiguous()


def cast_acts(
    acts: dict[str, torch.Tensor], dims: dict[str, int], dtype: torch.dtype
) -> tuple[dict[str, torch.Tensor], int]:
    """Every module's activations [rows, dim] in `dtype` (still on their device), and the row count;
    StoreError on a missing or unexpected module or a bad shape. `dims`: module -> width, in store order."""
    names = list(dims)
    missing = [name for name in names if name not in acts]
    extra = [name for name in acts if name not in dims]
    if missing or extra:
        raise StoreError(
            f"append got modules {list(acts)}; the store holds {names} (missing {missing}, unexpected {extra})"
        )
    rows = None
    part: dict[str, torch.Tensor] = {}
    for name in names:
        x = acts[name]
        dim = dims[name]
        if not isinstance(x, torch.Tensor) or x.ndim != 2 or x.shape[1] != dim:
            shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
            raise StoreError(f"activations of module {name!r} have shape {shape}; the store needs [rows, {dim}]")
        if rows is None:
            rows = x.shape[0]
        elif x.shape[0] != rows:
            raise StoreError(
                f"module {name!r} has {x.shape[0]} rows but {names[0]!r} has {rows}; "
                "every module needs one row per token"
            )
        part[name] = x.detach().to(dtype)
    assert rows is not None
    return part, rows


def add_labels(part: dict[str, torch.Tensor], label: torch.Tensor | None, labels: list[str] | None, rows: int) -> None:
    """Check `label` against the store's `labels` (given iff it is labelled, ids in range) and add it to `part`."""
    if labels is None:
        if label is not None:
            raise StoreError("append got labels but the store was created unlabelled (labels=None)")
        return
    if label is None:
        raise StoreError("append got no labels but the store is labelled; pass label int64 [rows]")
    part[LABEL_KEY] = index_tensor("label", label, rows)
    n_labels = len(labels)
    if rows and (part[LABEL_KEY].min() < 0 or part[LABEL_KEY].max() >= n_labels):
        raise StoreError(
            f"labels must be label ids in [0, {n_labels}); got values in "
            f"[{int(part[LABEL_KEY].min())}, {int(part[LABEL_KEY].max())}]"
        )


def part_stats(
    part: dict[str, torch.Tensor], names: list[str], dtype: str
) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Per module (Σx, Σ‖x‖²) of the stored values; StoreError naming the first sample with NaN or inf
    (`dtype`: the store dtype's name, for the message)."""
    stats = {}
    for name in names:
        stats[name] = row_stats(part[name])
        if not torch.isfinite(stats[name][1]):  # only then look for the row (isfinite is slow on CPUs)
            first = int((~torch.isfinite(part[name]).all(dim=1)).nonzero()[0, 0])
            raise StoreError(
                f"module {name!r} has NaN or inf activations (as {dtype}) for dataset sample "
                f"{int(part[SAMPLE_KEY][first])}; skip that sample, or harvest in float32 if float16 overflowed"
            )
    return stats
