"""Plain-text and Markdown tables for the terminal and reports, and the number formats of their cells.

Every table sdlkit prints formats its numbers here: `percent` and `fixed` for one value, `mean_spread` for a
value over seeds, `cell` for whatever a row holds; a missing value is `MISSING` everywhere.
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from typing import Any

MISSING = "–"
"""The cell of a value that is not there (None, or no run has it)."""


def percent(x: float | None, digits: int = 1) -> str:
    """A fraction as a percentage with `digits` decimals and a percent sign (Python's `%` format); None -> '–'."""
    return MISSING if x is None else f"{x:.{digits}%}"


def fixed(x: float | None, digits: int = 3) -> str:
    """A number with `digits` decimals: 0.91234 -> '0.912'; None -> '–'."""
    return MISSING if x is None else f"{x:.{digits}f}"


def mean_spread(values: Sequence[float], digits: int, as_percent: bool = False) -> str:
    """The mean of `values` with `digits` decimals, '± ' their standard deviation after it when they are two
    or more and it does not round to zero (a ±0.0 says nothing): '0.600 ± 0.141'. `as_percent` scales each
    value by 100 and puts a percent sign after the mean (the spread is in points). No values -> '–'."""
    if not values:
        return MISSING
    scaled = [v * 100 for v in values] if as_percent else list(values)
    text = f"{statistics.fmean(scaled):.{digits}f}" + ("%" if as_percent else "")
    spread = statistics.stdev(scaled) if len(scaled) > 1 else 0.0
    if round(spread, digits) > 0:
        text += f" ± {spread:.{digits}f}"
    return text


def cell(value: Any, digits: int = 4) -> str:
    """Any value as a table cell: a float to `digits` significant digits (below 1e-3 in scientific notation,
    NaN as 'nan'), anything else as `str` gives it."""
    if isinstance(value, float):
        if value != value:  # NaN
            return "nan"
        return f"{value:.{digits}g}" if abs(value) >= 1e-3 or value == 0 else f"{value:.2e}"
    return str(value)


def format_table(rows: Sequence[dict[str, Any]], columns: Sequence[str], digits: int = 4) -> str:
    """A Markdown table of `columns` (keys of each row), aligned so it also reads well in a terminal."""
    cells = [[cell(row.get(col, ""), digits) for col in columns] for row in rows]
    widths = [max(len(col), *(len(r[i]) for r in cells)) if cells else len(col) for i, col in enumerate(columns)]
    lines = [
        "| " + " | ".join(col.ljust(w) for col, w in zip(columns, widths, strict=True)) + " |",
        "|" + "|".join("-" * (w + 2) for w in widths) + "|",
    ]
    lines += ["| " + " | ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) + " |" for r in cells]
    return "\n".join(lines)


# ----- plots (matplotlib, written as PNG; no display needed) -----------------------------------------
def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_recovery_curves(curves: dict[str, dict[str, list[float]]], path, title: str) -> None:
    """M_GT against τ (the paper's Figure 6): `curves[label] = {"tau": [...], "encoder": [...],
    "decoder": [...]}`; labels ending in '+ FA' are drawn dashed in their method's colour."""
    plt = _pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2), sharey=True)
    colours: dict[str, Any] = {}
    for label, curve in curves.items():
        base = label.removesuffix(" + FA")
        colour = colours.setdefault(base, f"C{len(colours) % 10}")
        style = "--" if label.endswith("+ FA") else "-"
        for ax, key in zip(axes, ("encoder", "decoder"), strict=True):
            ax.plot(curve["tau"], curve[key], style, color=colour, label=label, linewidth=1.5)
    for ax, key in zip(axes, ("encoder rows (the paper's metric)", "decoder columns"), strict=True):
        ax.set_title(key)
        ax.set_xlabel("threshold τ")
        ax.grid(alpha=0.3)
        ax.set_xlim(0.5, 1.0)
    axes[0].set_ylabel("GT recovery M_GT(τ)")
    axes[1].legend(fontsize=7, loc="lower left")
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_grouped_bars(groups: list[str], series: dict[str, list[float]], path, title: str, ylabel: str) -> None:
    """One group of bars per entry of `groups`, one bar per series (`series[name][i]` for group i)."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(max(6.0, 1.2 * len(groups) + 2), 4.2))
    width = 0.8 / max(1, len(series))
    for j, (name, values) in enumerate(series.items()):
        xs = [i + (j - (len(series) - 1) / 2) * width for i in range(len(groups))]
        ax.bar(xs, values, width, label=name, color=f"C{j}", hatch="//" if "FA" in name else None, alpha=0.9)
    ax.set_xticks(range(len(groups)), groups, rotation=20)
    ax.set_ylim(0, 1.05)
    _finish(fig, ax, path, title, ylabel)


def plot_lines(xs: list[str], series: dict[str, list[float]], path, title: str, ylabel: str) -> None:
    """One line per series over categorical `xs` (an ablation's settings); '+ FA' series dashed."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.2))
    colours: dict[str, Any] = {}
    for name, values in series.items():
        colour = colours.setdefault(name.removesuffix(" + FA"), f"C{len(colours) % 10}")
        ax.plot(xs, values, "--o" if name.endswith("+ FA") else "-o", color=colour, label=name, markersize=4)
    ax.set_ylim(0, 1.05)
    _finish(fig, ax, path, title, ylabel)


def plot_xy(
    xs: list[float],
    series: dict[str, list[float]],
    path,
    title: str,
    xlabel: str,
    ylabel: str,
    log: str = "",
    vline: tuple[float, str] | None = None,
) -> None:
    """Lines over numeric `xs`, one per series; `log` holds 'x' and/or 'y' for log axes; `vline` is
    (x, label) for a marked threshold."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    for j, (name, values) in enumerate(series.items()):
        ax.plot(xs, values, ["o-", "s--", "^:"][j % 3], label=name)
    if "x" in log:
        ax.set_xscale("log")
    if "y" in log:
        ax.set_yscale("log")
    if vline is not None:
        ax.axvline(vline[0], color="grey", linestyle=":", label=vline[1])
    ax.set_xlabel(xlabel)
    _finish(fig, ax, path, title, ylabel)


def _finish(fig, ax, path, title: str, ylabel: str) -> None:
    """The common end of every figure: labels, grid, legend, title, PNG on disk, figure closed."""
    plt = _pyplot()
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)
    ax.set_title(title)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
