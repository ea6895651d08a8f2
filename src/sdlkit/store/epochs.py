"""Which rows of a store a StoreSource trains on: all but the last `eval_rows` rows (moved back to a sample
boundary), which are held out. How each epoch shuffles the training rows is sdlkit.data.windows'.
"""

from __future__ import annotations

import bisect

from sdlkit.errors import ConfigError
from sdlkit.store.format import SAMPLE_KEY
from sdlkit.store.reader import ActivationStore


def train_rows(store: ActivationStore, eval_rows: int) -> int:
    """Training rows: all but the last eval_rows, moved back to the start of the boundary's sample."""
    rows = store.rows
    if eval_rows >= rows:
        raise ConfigError(
            f"data.eval_rows = {eval_rows} leaves no training rows: the store {store.path} has {rows} "
            "rows; lower eval_rows or harvest more"
        )
    boundary = rows - eval_rows
    i = bisect.bisect_right(store.offsets, boundary) - 1
    lo = store.offsets[i]
    samples = store.read_rows(lo, boundary + 1, [])[SAMPLE_KEY]
    differs = (samples[:-1] != samples[-1]).nonzero()
    boundary = lo + (int(differs[-1]) + 1 if len(differs) else 0)
    if boundary == 0:
        raise ConfigError(
            f"data.eval_rows = {eval_rows} leaves no training rows once whole dataset samples are held out; "
            "lower eval_rows"
        )
    return boundary
