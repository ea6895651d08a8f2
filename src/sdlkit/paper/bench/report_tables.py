"""The report's tables: results per frame and setting beside the paper, the frames' geometry, and the recipes.

A cell shows the mean over seeds, with ± the standard deviation when it does not round to zero; every
registered bench metric (sdlkit.paper.bench.scoring) adds its columns.
"""

from __future__ import annotations

from typing import Any

import yaml

from sdlkit.paper.bench.recipes import NAMES
from sdlkit.paper.bench.report_cells import Group, mean_of, values_of
from sdlkit.paper.bench.scoring import BENCH_METRICS
from sdlkit.report import MISSING, fixed, format_table, mean_spread, percent

REFERENCE_NAMES = {
    "chance": "chance (random dictionary)",
    "oracle": "oracle (W_r + least-squares encoder)",
    "dictionary-learning": "dictionary learning (scikit-learn)",
}


def _over_seeds(runs: list[dict[str, Any]], key: str, as_percent: bool = False) -> str:
    """The cell of `key` over a row's runs: percentages to 1 decimal, other numbers to 3."""
    return mean_spread(values_of(runs, key), 1 if as_percent else 3, as_percent)


def geometry_table(records: list[dict[str, Any]]) -> str:
    """The measured geometry of every (frame, setting)'s feature matrices."""
    seen: dict[tuple[str, str], dict[str, Any]] = {}
    for r in records:
        seen.setdefault((r["frame"], r["setting"]), r["frame_geometry"])
    rows = [
        {
            "frame": frame,
            "setting": setting or MISSING,
            "t": f"{g['tightness']:g}",
            "cond(W_p W_pᵀ)": fixed(g["condition_number"], 1),
            "max interference": fixed(g["max_interference"]),
            "mean |interference|": fixed(g["mean_abs_interference"], 4),
            "cos(w_i, dual_i)": fixed(g["dual_cosine"]),
        }
        for (frame, setting), g in seen.items()
    ]
    return format_table(rows, list(rows[0])) if rows else ""


def _table_row(name: str, runs: list[dict[str, Any]], pair: tuple[float, float] | None) -> dict[str, str]:
    """One table row: the runs' cells beside the paper's (M_GT, M_IP) `pair`, when it has one."""
    return {
        "Method": name,
        "M_GT": _over_seeds(runs, "gt_recovery", as_percent=True),
        "paper M_GT": percent(pair[0]) if pair else MISSING,
        "M_IP": _over_seeds(runs, "max_inner_product"),
        "paper M_IP": fixed(pair[1]) if pair else MISSING,
        **{
            title: _over_seeds(runs, key, as_percent=key in metric.percent)
            for metric in BENCH_METRICS.values()
            for key, title in metric.columns.items()
        },
        "M_GT dec": _over_seeds(runs, "gt_recovery_decoder", as_percent=True),
        "M_IP dec": _over_seeds(runs, "max_inner_product_decoder"),
        "matched M_GT dec": _over_seeds(runs, "matched_gt_recovery_decoder", as_percent=True),
        "FVU": _over_seeds(runs, "fvu"),
        "L0": fixed(mean_of(runs, "l0"), 2),
        "dead": _over_seeds(runs, "dead_fraction", as_percent=True),
        "unused": _over_seeds(runs, "never_fired_fraction", as_percent=True),
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
