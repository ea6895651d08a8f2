"""The on-disk activation store: harvested activations in sharded safetensors files, read back as a DataSource.

`StoreWriter` appends rows crash-safely (resumable); `ActivationStore` is a checked, memory-mapped
read-only view; `StoreSource` streams shuffled (x_p, x_r) batches from it for training;
`fold_scales` turns a dictionary trained on normalised activations into one for raw activations.
"""

from sdlkit.store.config import StoreDataConfig
from sdlkit.store.format import StoreManifest, read_manifest, shard_name
from sdlkit.store.normalize import fold_scales
from sdlkit.store.reader import ActivationStore
from sdlkit.store.source import StoreSource
from sdlkit.store.stats import recompute_stats
from sdlkit.store.writer import StoreWriter, truncate_store

__all__ = [
    "ActivationStore",
    "StoreDataConfig",
    "StoreManifest",
    "StoreSource",
    "StoreWriter",
    "fold_scales",
    "read_manifest",
    "recompute_stats",
    "shard_name",
    "truncate_store",
]
