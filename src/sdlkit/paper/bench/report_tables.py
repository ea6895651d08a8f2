"""The report's tables: results per frame and setting beside the paper, the frames' geometry, and the recipes.

A cell shows the mean over seeds, with ± the standard deviation when it does not round to zero; every
registered bench metric (sdlkit.paper.bench.scoring) adds its columns.
"""

from __future__ import annotations

import statistics
from typing import Any

import yaml

from sdlkit.paper.bench.recipes import NAMES
from sdlkit.paper.bench.report_cells import Group, mean_of
from sdlkit.paper.bench.scoring import BENCH_METRICS
from sdlkit.report import format_table

REFERENCE_NAMES = {
    "chance": "chance (random dictionary)",
    "oracle": "oracle (W_r + least-squares encoder)",
    "dictionary-learning": "dictionary learning (scikit-learn)",
}


def _cell(rows: list[dict[str, Any]], key: str, percent: bool = False) -> str:
    """Mean of `key` over the runs (± the standard deviation unless it rounds to zero); '–' when none has it."""
    values = [r[key] * (100 if percent else 1) for r in rows if r.get(key) is not None]
    if not values:
        return "–"
    digits = 1 if percent else 3
    text = f"{statistics.fmean(values):.{digits}f}" + ("%" if percent else "")
    spread = statistics.stdev(values) if len(values) > 1 else 0.0
    if round(spread, digits) > 0:  # a ±0.0 says nothing
        text += f" ± {spread:.{digits}f}"
    return text


def geometry_table(records: list[dict[str, Any]]) -> str:
    """The measured geometry of every (frame, setting)'s feature matrices."""
    seen: dict[tuple[str, str], dict[str, Any]] = {}
    for r in records:
        seen.setdefault((r["frame"], r["setting"]), r["frame_geometry"])
    rows = [
        {
            "frame": frame,
            "setting": setting or "–",
            "t": f"{g['tightness']:g}",
            "cond(W_p W_pᵀ)": f"{g['condition_number']:.1f}",
            "max interference": f"{g['max_interference']:.3f}",
            "mean |interference|": f"{g['mean_abs_interference']:.4f}",
            "cos(w_i, dual_i)": f"{g['dual_cosine']:.3f}",
        }
        for (frame, setting), g in seen.items()
    ]
    return format_table(rows, list(rows[0])) if rows else ""


def _table_row(name: str, runs: list[dict[str, Any]], pair: tuple[float, float] | None) -> dict[str, str]:
    """One table row: the runs' cells beside the paper's (M_GT, M_IP) `pair`, when it has one."""
    return {
        "Method": name,
        "M_GT": _cell(runs, "gt_recovery", percent=True),
        "paper M_GT": f"{pair[0]:.1%}" if pair else "–",
        "M_IP": _cell(runs, "max_inner_product"),
        "paper M_IP": f"{pair[1]:.3f}" if pair else "–",
        **{
            title: _cell(runs, key, percent=key in metric.percent)
            for metric in BENCH_METRICS.values()
            for key, title in metric.columns.items()
        },
        "M_GT dec": _cell(runs, "gt_recovery_decoder", percent=True),
        "M_IP dec": _cell(runs, "max_inner_product_decoder"),
        "matched M_GT dec": _cell(runs, "matched_gt_recovery_decoder", percent=True),
        "FVU": _cell(runs, "fvu"),
        "L0": "–" if mean_of(runs, "l0") is None else f"{mean_of(runs, 'l0'):.2f}",
        "dead": _cell(runs, "dead_fraction", percent=True),
        "unused": _cell(runs, "never_fired_fraction", percent=True),
    }


def results_table(
    groups: Group, references: list[dict[str, Any]], frame: str, setting: str, rows: list[str], paper: dict
) -> str:
    """One frame and setting: every row ± FA beside the paper, then the reference rows."""
    table = []
    for row in rows:
        for anchored in (False, True):
            runs = groups.get((frame, setting, row, anchored))
            if runs:
                name = "  + FA" if anchored else NAMES.get(row, row)
                table.append(_table_row(name, runs, paper.get((row, anchored))))
    for ref in (r for r in references if r["frame"] == frame and r["setting"] == setting):
        table.append(_table_row(f"*{REFERENCE_NAMES[ref['reference']]}*", [ref], None))
    return format_table(table, list(table[0])) if table else "(no runs)"


def method_yaml(method: dict[str, Any]) -> str:
    """A method config as a `--set` argument that reproduces it: --set 'model.method={name: topk, k: 6}'."""
    flow = yaml.safe_dump(method, default_flow_style=True, sort_keys=False, width=10_000).strip()
    return f"--set 'model.method={flow}'"


def recipes_section(records: list[dict[str, Any]], rows: list[str]) -> list[str]:
    """One line per row: its recipe and the `--set` argument that reproduces its method config."""
    lines = []
    for row in rows:
        example = next((r for r in records if r["row"] == row), None)
        if example is None:
            continue
        sweep = example.get("sweep")
        chosen = f" Sweep chose {sweep['field']} = {sweep['chosen']:g}." if sweep else ""
        lines.append(
            f"- **{NAMES.get(row, row)}**: {example['recipe']}. `{method_yaml(example['config']['model']['method'])}`"
            f"{chosen}"
        )
    return lines
