"""RUN/curves.png: a run's loss, FVU, L0 and dead-latent curves against training samples, drawn from its
metrics.jsonl (so a resumed run shows its whole history) when the run ends."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from sdlkit.train.runlog import CURVES_FILE, METRICS_FILE, X_AXIS, read_records

PANELS: list[tuple[str, dict[str, str], bool]] = [
    ("loss", {"loss": "training batches"}, True),
    ("FVU", {"fvu": "training batches", "eval_fvu": "held-out"}, True),
    ("L0 (active latents per sample)", {"l0": "training batches", "eval_l0": "held-out (σ's inference form)"}, False),
    (
        "dead latents (%)",
        {"dead_fraction": "silent for the last dead_window samples", "eval_never_fired_fraction": "never on held-out"},
        False,
    ),
]
"""(title, {record field: legend label}, log y axis) of each panel; the dead panel is drawn in percent."""


def plot_curves(records: list[dict[str, Any]], path: Path, title: str) -> None:
    """Four panels (see PANELS) of `records`, metrics.jsonl's lines, against their samples; a field
    missing from some lines (held-out figures are measured every train.eval_every steps) is drawn where
    present. A bare Agg figure (no pyplot state): one run's picture costs a fraction of a second."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.ticker import EngFormatter, FuncFormatter, NullFormatter

    fig = Figure(figsize=(9, 6))
    FigureCanvasAgg(fig)
    axes = fig.subplots(2, 2, sharex=True)
    plain = FuncFormatter(lambda value, _: f"{value:g}")
    for ax, (name, fields, log_y) in zip(axes.flat, PANELS, strict=True):
        scale = 100.0 if name.startswith("dead") else 1.0
        for j, (field, label) in enumerate(fields.items()):
            points = [(r[X_AXIS], r[field] * scale) for r in records if isinstance(r.get(field), int | float)]
            if points:
                xs, ys = zip(*points, strict=True)
                ax.plot(xs, ys, "-o" if j else "-", color=f"C{j}", markersize=3, linewidth=1.3, label=label)
        values = [y for line in ax.get_lines() for y in line.get_ydata()]
        if log_y and values and min(values) > 0:
            ax.set_yscale("log")
            ax.yaxis.set_major_formatter(plain)
            if max(values) < 10 * min(values):  # within a decade the minor ticks are the only labels
                ax.yaxis.set_minor_formatter(plain)
                ax.tick_params(axis="y", which="minor", labelsize=7)
            else:
                ax.yaxis.set_minor_formatter(NullFormatter())
        elif scale != 1.0:
            ax.set_ylim(0, max([1.0, *values]) * 1.05)
        ax.set_title(name, fontsize=10)
        ax.grid(alpha=0.3, which="both")
        if ax.get_lines():
            ax.legend(fontsize=7)
    for ax in axes[1]:
        ax.set_xlabel("training samples")
        ax.xaxis.set_major_formatter(EngFormatter())
    fig.suptitle(title, fontsize=11)
    fig.subplots_adjust(left=0.08, right=0.98, bottom=0.09, top=0.9, hspace=0.25, wspace=0.2)
    fig.savefig(path, dpi=100, format="png")


def write_curves(run_dir: Path, title: str) -> Path | None:
    """Draw `run_dir`/metrics.jsonl into `run_dir`/curves.png; None (and nothing written) when it has no records."""
    records = read_records(Path(run_dir) / METRICS_FILE)
    if not records:
        return None
    path = Path(run_dir) / CURVES_FILE
    tmp = path.with_name(f".{CURVES_FILE}.tmp")  # replaced in one rename: never a half-written picture
    try:
        plot_curves(records, tmp, title)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path
