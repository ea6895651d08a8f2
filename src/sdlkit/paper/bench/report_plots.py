"""The report's plots, written as PNGs beside report.md: per frame, recovery against τ and encoder-vs-decoder
bars (one setting), or M_GT across the settings of an ablation; returns the Markdown lines that show them.
"""

from __future__ import annotations

import statistics
from pathlib import Path
from typing import Any

from sdlkit.paper.bench.recipes import NAMES
from sdlkit.paper.bench.report_cells import Group, mean_of
from sdlkit.report import plot_grouped_bars, plot_lines, plot_recovery_curves, plot_xy


def _curves(groups: Group, frame: str, setting: str, rows: list[str]) -> dict[str, dict[str, list[float]]]:
    """Per row (± FA): the seeds' mean recovery curves, encoder and decoder, against their τ grid."""
    curves = {}
    for row in rows:
        for anchored in (False, True):
            runs = groups.get((frame, setting, row, anchored))
            if runs:
                label = NAMES.get(row, row) + (" + FA" if anchored else "")
                curves[label] = {
                    key: [statistics.fmean(v) for v in zip(*(r["recovery_curve"][key] for r in runs), strict=True)]
                    for key in ("encoder", "decoder")
                } | {"tau": runs[0]["recovery_curve"]["tau"]}
    return curves


def single_setting_plots(out: Path, groups: Group, frame: str, setting: str, rows: list[str], tau: float) -> list[str]:
    title = f"{frame} frame"
    plot_recovery_curves(
        _curves(groups, frame, setting, rows), out / f"recovery_curves_{frame}.png", f"M_GT against τ ({title})"
    )
    names = [NAMES.get(row, row) for row in rows]
    for metric, ylabel in (("gt_recovery", f"M_GT (τ = {tau:g})"), ("max_inner_product", "M_IP")):
        series = {}
        for part, suffix in (("encoder", ""), ("decoder", "_decoder")):
            for anchored in (False, True):
                series[f"{part}{' + FA' if anchored else ''}"] = [
                    mean_of(groups[(frame, setting, row, anchored)], metric + suffix) or 0.0
                    if groups.get((frame, setting, row, anchored))
                    else 0.0
                    for row in rows
                ]
        plot_grouped_bars(
            names,
            series,
            out / f"bars_{metric}_{frame}.png",
            f"{ylabel}, {title}: encoder vs decoder, ± anchoring",
            ylabel,
        )
    return [
        f"![recovery against τ, {title}](recovery_curves_{frame}.png)",
        f"![M_GT bars, {title}](bars_gt_recovery_{frame}.png)",
        f"![M_IP bars, {title}](bars_max_inner_product_{frame}.png)",
    ]


def ablation_plots(
    out: Path,
    groups: Group,
    records: list[dict[str, Any]],
    frame: str,
    settings: list[str],
    rows: list[str],
    x_axis: str | None,
    tau: float,
) -> list[str]:
    ylabel = f"M_GT (τ = {tau:g})"
    series: dict[str, list[float]] = {}
    for row in rows:
        for part, suffix in (("encoder", ""), ("decoder", "_decoder")):
            for anchored in (False, True):
                values = [
                    mean_of(groups[(frame, s, row, anchored)], "gt_recovery" + suffix)
                    if groups.get((frame, s, row, anchored))
                    else None
                    for s in settings
                ]
                if any(v is not None for v in values):
                    label = f"{NAMES.get(row, row)} {part}" + (" + FA" if anchored else "")
                    series[label] = [float("nan") if v is None else v for v in values]
    path = f"ablation_gt_recovery_{frame}.png"
    if x_axis is None:
        plot_lines(settings, series, out / path, f"{ylabel} across the settings, {frame} frame", ylabel)
    else:
        geometry = {r["setting"]: r["frame_geometry"][x_axis] for r in records if r["frame"] == frame}
        xs = [geometry[s] for s in settings]
        plot_xy(
            xs,
            series,
            out / path,
            f"{ylabel} against {x_axis.replace('_', ' ')}",
            x_axis.replace("_", " "),
            ylabel,
            log="x",
        )
    return [f"![M_GT across settings, {frame} frame]({path})"]
