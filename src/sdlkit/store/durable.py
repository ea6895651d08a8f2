"""Crash-safe file writes for the store: write under a temporary name, fsync, rename into place, fsync the folder.

A reader (or a resumed harvest) therefore sees either the old file or the whole new one, never a torn write.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from sdlkit.io import save_file_checked


def _fsync_path(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def save_atomically(path: Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None = None) -> None:
    """Write a safetensors file under a temporary name, fsync it, rename it into place, fsync the folder."""
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        save_file_checked(tensors, tmp, metadata)
        _fsync_path(tmp)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_path(path.parent)
