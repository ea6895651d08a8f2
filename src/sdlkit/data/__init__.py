"""Data: the (x_p, x_r) batch protocol and the Linear Representation Bench."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from sdlkit.data.lrb.source import LRB_PRESETS, LRBConfig, LRBSource, lrb_preset
from sdlkit.data.source import Batch, DataSource

if TYPE_CHECKING:
    from sdlkit.store import StoreDataConfig


def build_source(config: LRBConfig | StoreDataConfig, device: str | torch.device = "cpu") -> DataSource:
    """The data source a config describes: the LRB, or an activation store."""
    from sdlkit.store import StoreDataConfig, StoreSource  # the store reads LRB seeding: import it late

    if isinstance(config, StoreDataConfig):
        return StoreSource(config, device=device)
    return LRBSource(config, device=device)


__all__ = ["LRB_PRESETS", "Batch", "DataSource", "LRBConfig", "LRBSource", "build_source", "lrb_preset"]
