"""The dataset a store was harvested from, opened again in the store's sample order.

A store keeps activations, not texts. Where a row stands for a whole sample (a pooled sentence embedding),
the feature browser shows that sample's text by reading the data again: the path, columns and shuffle seed
the store's manifest recorded, checked against the recorded fingerprint so that a file edited since the
harvest never puts another text beside a row.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sdlkit.errors import ConfigError
from sdlkit.harvest.datasets import Dataset, open_dataset


def harvested_dataset(source: dict[str, Any], data: str | None = None) -> Dataset:
    """The text dataset a store's manifest `source` records, in the store's sample order (its sample ids
    index `Dataset.texts`). `data`: where the data is now (default: the recorded path, which must be a
    local file). ConfigError when it is missing, not text, or not the data the store was harvested from."""
    if source.get("kind") != "text":
        raise ConfigError("the store was not harvested from text, so it has no sample text to show")
    path = data if data is not None else source.get("data")
    if path is None:
        raise ConfigError("the store records no data path; pass --data with the file it was harvested from")
    if data is None and not Path(path).exists():
        raise ConfigError(f"the store's data {path} is not a local file here; pass --data with that file")
    dataset = open_dataset(
        path,
        text_column=source.get("text_column") or "text",
        label_column=source.get("label_column"),
        split=source.get("split") or "train",
    )
    recorded = source.get("data_fingerprint")
    if recorded is None:
        raise ConfigError(
            f"the store records no fingerprint of its data, so {path} cannot be checked to be that data; "
            "re-harvest to show sample text"
        )
    if dataset.fingerprint() != recorded:
        raise ConfigError(
            f"{path} is not the data the store was harvested from (its fingerprint differs); "
            "pass --data with the original file"
        )
    seed = source.get("shuffle_seed")
    return dataset.shuffled(seed) if seed is not None else dataset
