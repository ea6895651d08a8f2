"""The one device resolver: a device name as the user gave it -> a device this machine has."""

from __future__ import annotations

import torch


def resolve_device(device: str) -> str:
    """'auto' → cuda if available else cpu; refuse (ValueError) a device this machine does not have."""
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    try:
        parsed = torch.device(device)
    except (RuntimeError, TypeError):
        raise ValueError(f"unknown device {device!r}; use cpu, cuda, cuda:N or auto") from None
    if parsed.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {device!r} was asked for but CUDA is not available here; use cpu or auto")
    if parsed.type not in ("cpu", "cuda"):
        raise ValueError(f"device {device!r} is not supported; use cpu, cuda, cuda:N or auto")
    return device
