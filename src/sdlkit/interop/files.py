"""Reading another library's files with checks: a missing file, a folder holding several dictionaries, a
tensor of the wrong shape or with NaNs, or one no conversion knows, each stop with one line naming it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from sdlkit.errors import CheckpointError
from sdlkit.io import read_json_object


def read_json(path: Path) -> dict[str, Any]:
    """A JSON object from `path`, or a CheckpointError naming the file."""
    if not path.is_file():
        raise CheckpointError(f"{path} is missing")
    return read_json_object(path)


def find_folder(in_dir: Path, config_file: str, fmt: str) -> Path:
    """The folder holding `config_file`: `in_dir` itself, or its only sub-folder that has one (libraries
    save one folder per hook point); several such sub-folders are listed for the user to choose."""
    if not in_dir.is_dir():
        raise CheckpointError(f"no {fmt} checkpoint at {in_dir}: it is not a folder")
    if (in_dir / config_file).is_file():
        return in_dir
    found = sorted(p for p in in_dir.iterdir() if p.is_dir() and (p / config_file).is_file())
    if len(found) == 1:
        return found[0]
    if not found:
        raise CheckpointError(f"{in_dir} is not a {fmt} checkpoint: {config_file} is missing")
    names = ", ".join(p.name for p in found)
    raise CheckpointError(f"{in_dir} holds {len(found)} {fmt} dictionaries ({names}): give one of these sub-folders")


def take(tensors: dict[str, torch.Tensor], name: str, shape: tuple[int, ...], path: Path, why: str) -> torch.Tensor:
    """tensors[name] as float64 after checking it exists with `shape` (`why` names the config fields)."""
    if name not in tensors:
        raise CheckpointError(f"{path} has no tensor {name!r} (it holds {sorted(tensors)})")
    tensor = tensors[name]
    if tuple(tensor.shape) != shape:
        raise CheckpointError(f"{path}: tensor {name} has shape {list(tensor.shape)} but {why} needs {list(shape)}")
    if not tensor.is_floating_point():
        raise CheckpointError(f"{path}: tensor {name} has dtype {tensor.dtype}; a floating-point tensor is needed")
    if not torch.isfinite(tensor).all():
        raise CheckpointError(f"{path}: tensor {name} holds NaN or inf values")
    return tensor.to(torch.float64)


def refuse_extra(tensors: dict[str, torch.Tensor], known: set[str], path: Path) -> None:
    """Tensors the format does not define would be silently dropped: refuse them instead."""
    extra = sorted(set(tensors) - known)
    if extra:
        raise CheckpointError(f"{path} holds tensors {extra} that this conversion does not know ({sorted(known)})")
