"""Plain-text and Markdown tables for the terminal and reports."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any


def _cell(value: Any, digits: int) -> str:
    if isinstance(value, float):
        if value != value:  # NaN
            return "nan"
        return f"{value:.{digits}g}" if abs(value) >= 1e-3 or value == 0 else f"{value:.2e}"
    return str(value)


def format_table(rows: Sequence[dict[str, Any]], columns: Sequence[str], digits: int = 4) -> str:
    """A Markdown table of `columns` (keys of each row), aligned so it also reads well in a terminal."""
    cells = [[_cell(row.get(col, ""), digits) for col in columns] for row in rows]
    widths = [max(len(col), *(len(r[i]) for r in cells)) if cells else len(col) for i, col in enumerate(columns)]
    lines = [
        "| " + " | ".join(col.ljust(w) for col, w in zip(columns, widths, strict=True)) + " |",
        "|" + "|".join("-" * (w + 2) for w in widths) + "|",
    ]
    lines += ["| " + " | ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) + " |" for r in cells]
    return "\n".join(lines)
