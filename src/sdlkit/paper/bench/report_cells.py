"""The report's cells: bench records grouped by (frame, setting, row, anchored), and a cell's values of a field.

The report's tables, sentences and plots all read the records through these (sdlkit.report formats them).
"""

from __future__ import annotations

import statistics
from collections import defaultdict
from typing import Any

Group = dict[tuple[str, str, str, bool], list[dict[str, Any]]]
"""(frame, setting, row, anchored) -> the records of that cell (one per seed)."""


def group_records(records: list[dict[str, Any]]) -> Group:
    """The records by cell (frame, setting, row, anchored), in record order within a cell."""
    groups: Group = defaultdict(list)
    for r in records:
        groups[(r["frame"], r["setting"], r["row"], r["anchored"])].append(r)
    return groups


def values_of(rows: list[dict[str, Any]], key: str) -> list[Any]:
    """The values of `key` in the records that have it, in record order."""
    return [r[key] for r in rows if r.get(key) is not None]


def mean_of(rows: list[dict[str, Any]], key: str) -> float | None:
    """The mean of `key` over the records that have it (None when none does)."""
    values = values_of(rows, key)
    return statistics.fmean(values) if values else None
