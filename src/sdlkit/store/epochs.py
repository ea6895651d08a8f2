"""Which rows of a store a StoreSource trains on, and how each epoch groups them for shuffling.

The last `eval_rows` rows (moved back to a sample boundary) are held out. The training rows are cut into
"units" (the training part of each shard, in pieces of at most `shuffle_buffer` rows); an epoch visits the
units in a seeded order, grouped into consecutive windows of at most `shuffle_buffer` rows, so that only
one window need be in memory. Pure functions of their arguments: the seeded order is the caller's.
"""

from __future__ import annotations

import bisect
import itertools

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


def shuffle_units(offsets: list[int], n_train: int, cap: int) -> list[tuple[int, int]]:
    """(first row, rows) of each shuffling unit: the training part of each shard (`offsets`: first global row
    of each shard, plus the total at the end), in pieces of at most `cap` rows."""
    units = []
    for i in range(len(offsets) - 1):
        lo, hi = offsets[i], min(offsets[i + 1], n_train)
        if hi <= lo:
            continue
        pieces = -(-(hi - lo) // cap)
        bounds = [lo + (hi - lo) * k // pieces for k in range(pieces + 1)]
        units.extend((a, b - a) for a, b in itertools.pairwise(bounds))
    return units


def epoch_windows(units: list[tuple[int, int]], order: list[int], cap: int) -> tuple[list[list[int]], list[int]]:
    """The units in `order` grouped into consecutive windows of at most `cap` rows (a unit starts a new window
    when it would not fit): each window's units (in load order) and each window's end offset in the epoch."""
    windows: list[list[int]] = []
    ends: list[int] = []
    rows = 0
    for unit in order:
        size = units[unit][1]
        if windows and rows + size <= cap:
            windows[-1].append(unit)
            rows += size
        else:
            if windows:
                ends.append((ends[-1] if ends else 0) + rows)
            windows.append([unit])
            rows = size
    ends.append((ends[-1] if ends else 0) + rows)
    return windows, ends
