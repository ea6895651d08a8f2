"""Data: the (x_p, x_r) source interface and its registry, known directions, and the Linear Representation Bench.

Importing this package registers the bench (kind "lrb"); the activation store registers kind "store" from
sdlkit.store, which builds on this package (never the reverse).
"""

from sdlkit.data.lrb.config import LRB_PRESETS, LRBConfig, lrb_preset
from sdlkit.data.lrb.source import LRBSource
from sdlkit.data.source import (
    SOURCES,
    Batch,
    BlockScales,
    DataConfig,
    DataShape,
    DataSource,
    KnownDirections,
    build_source,
    data_config,
    register_source,
)

__all__ = [
    "LRB_PRESETS",
    "SOURCES",
    "Batch",
    "BlockScales",
    "DataConfig",
    "DataShape",
    "DataSource",
    "KnownDirections",
    "LRBConfig",
    "LRBSource",
    "build_source",
    "data_config",
    "lrb_preset",
    "register_source",
]
