"""The one device resolver: a device name as the user gave it -> a device this machine has."""

from __future__ import annotations

import torch

from sdlkit.errors import ConfigError

CHOICES = "cpu, cuda, cuda:N or auto"


def resolve_device(device: str | torch.device, option: str = "device") -> str:
    """'auto' → 'cuda' if this machine has CUDA, else 'cpu'; any other name is returned as given once torch
    knows it and this machine has it. Anything else is a one-line ConfigError naming `option`, the config
    field or flag the name came from (e.g. "device", "--device")."""
    device = str(device)
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    try:
        parsed = torch.device(device)
    except (RuntimeError, TypeError):
        raise ConfigError(f"{option} {device!r} is unknown; use {CHOICES}") from None
    if parsed.type not in ("cpu", "cuda"):
        raise ConfigError(f"{option} {device!r} is not supported; use {CHOICES}")
    if parsed.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"{option} {device!r} needs CUDA, which this machine does not have; use cpu or auto")
    return device
