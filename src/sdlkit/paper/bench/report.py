"""`report.md` for a bench folder, assembled: the header, a headline sentence (which frame reproduces the
paper), the frames' measured geometry, what the measurements say about the encoder rows, one table per frame
and setting with the paper's column and the reference rows, one sentence per row, recipes, plots, and the
command that reproduces it.

The parts come from report_text.py (sentences), report_tables.py (tables) and report_plots.py (PNG plots);
this module holds what the report says once (the paper's tables, where the paper is silent) and the order.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sdlkit.io import write_text_atomically
from sdlkit.paper.bench.consistency import consistency_section
from sdlkit.paper.bench.presets import BENCH_PRESETS
from sdlkit.paper.bench.report_cells import group_records
from sdlkit.paper.bench.report_plots import ablation_plots, single_setting_plots
from sdlkit.paper.bench.report_tables import geometry_table, recipes_section, results_table
from sdlkit.paper.bench.report_text import headline, mechanism, verdict
from sdlkit.paper.published.paper import TABLE1, TABLE4, TABLE5, TABLE6, TABLE7

PAPER = {
    "Table 1": {"": TABLE1},
    "Table 4": TABLE4,
    "Table 5": TABLE5,
    "Table 6": TABLE6,
    "Table 7": TABLE7,
}
SILENT = [
    "Table 1's k, learning rates, training lengths and sparsity coefficients are not stated: our recipes "
    "(below) aim at the data's true L0.",
    "The paper's ReLU and JumpReLU rows sit at chance level (M_IP ≈ 0.2); with coefficients that reach the true "
    "L0, ours do not, so we read the paper's figures as untuned recipes rather than limits of these methods.",
    "The paper does not say how a transcoder's target W_r or a crosscoder's sources are built; ours are "
    "independent feature matrices with the same M and frame.",
    "App. C draws W_p from a Gaussian and stops its interference PGD as soon as max ⟨w_i, w_j⟩ ≤ M; the frame "
    "this gives is badly conditioned. The `tight` frame is that draw moved to its nearest tight frame, with the "
    "same M.",
]
"""Where the paper is silent or differs from us: said once, in the header."""


def _command(spec: Any) -> str:
    """The `sdlkit bench` command line that reruns this bench."""
    parts = [
        f"sdlkit bench --preset {spec.preset}",
        f"--methods {','.join(spec.rows)}",
        f"--frames {','.join(spec.frames)}",
        f"--seeds {','.join(map(str, spec.seeds))}",
        f"--tau {spec.tau}",
        f"--anchor-weight {spec.anchor_weight}",
        f"--anchor-mode {spec.anchor_mode}",
        f"--device {spec.device}",
    ]
    parts += ["--quick"] if spec.quick else []
    parts += [f"--anchors {spec.anchors}"] if spec.anchors is not None else []
    parts += [f"--steps {spec.steps}"] if spec.steps is not None else []
    parts += ["--sweep"] if spec.sweep else []
    parts += ["--no-references"] if not spec.references else []
    parts += [f"--set {assignment}" for assignment in spec.overrides]
    return " ".join(parts)


# ----- the report ---------------------------------------------------------------------------------------
def _header(spec: Any, records: list[dict[str, Any]], references: list[dict[str, Any]], wall: float) -> list[str]:
    preset = BENCH_PRESETS[spec.preset]
    scale = spec.scale
    first = records[0]["config"] if records else {"model": {}, "train": {}}
    title = f"# sdlkit bench `{spec.preset}`{' (quick scale)' if spec.quick else ''}: "
    title += f"the paper's {preset.table}" if preset.table in PAPER else preset.description
    lines = [title, ""]
    sentence = headline(records, PAPER.get(preset.table, {}))
    if sentence:
        lines += [sentence, ""]
    lines += [
        f"{preset.description}. {len(records)} runs on the {' and '.join(spec.frames)} frame"
        f"{'s' if len(spec.frames) > 1 else ''}, seeds {spec.seeds}; "
        f"{first['model'].get('n_latents', scale.n_latents)} latents, {first['train'].get('steps', scale.steps)} steps "
        f"of {first['train'].get('batch_size', scale.batch_size)}"
        f"{' (overrides: ' + ', '.join(spec.overrides) + ')' if spec.overrides else ''}; τ = {spec.tau:g}. "
        f"Wall time {wall:.0f} s on {spec.device}; training time summed over the runs "
        f"{sum(r['train_seconds'] for r in records):.0f} s.",
        "",
        "**How to read the tables.** M_GT is the share of ground-truth features whose best-matching latent has "
        "|cos| > τ, M_IP the mean best |cos|; on encoder rows (the paper's metric), against the dual frame's "
        "vectors (M_IP dual), and on decoder columns (dec; matched = one-to-one Hungarian matching). Scores leave "
        "out the anchored features, in the anchored and the unanchored twin alike"
        + (
            f" ({max(r['n_anchors'] for r in records)} features, {spec.anchor_mode}, λ_anchor = {spec.anchor_weight:g})"
            if records
            else ""
        )
        + ". *Dead*: latents silent through the trainer's last window of 100 batches, the failure a recipe "
        "should avoid and the one resampling acts on. "
        "*Unused*: latents silent on all 4,096 held-out rows; with about twice as many latents as features, "
        "this is spare capacity, not a fault, unless features go unrecovered (benchmarks/README.md, "
        '"Which dead-latent figure to report"). '
        "Reference rows are computed on the same data and scored the same way.",
        "",
        "**Where the paper is silent or differs from us** (said once here, not per row):",
        "",
        *[f"- {item}" for item in SILENT],
        "",
    ]
    if records:
        lines += ["## The frames", "", geometry_table(records + references), ""]
        found = mechanism(records, references)
        if found:
            lines += ["What the encoder rows are, measured (no more than these numbers say):", "", *found, ""]
    return lines


def write_report(
    out: Path, spec: Any, records: list[dict[str, Any]], references: list[dict[str, Any]], wall_seconds: float
) -> Path:
    """Write out/report.md and the PNG plots from the run records and the reference rows."""
    preset = BENCH_PRESETS[spec.preset]
    paper = PAPER.get(preset.table, {})
    groups = group_records(records)
    settings = list(dict.fromkeys(r["setting"] for r in records))
    rows = [row for row in spec.rows if any(r["row"] == row for r in records)]
    lines = _header(spec, records, references, wall_seconds)
    plots: list[str] = []
    for frame in spec.frames:
        if not any(r["frame"] == frame for r in records):
            continue
        for setting in settings:
            lines += [f"## {frame} frame{f', {setting}' if setting else ''}", ""]
            lines += [results_table(groups, references, frame, setting, rows, paper.get(setting, {})), ""]
            for row in rows:
                base = groups.get((frame, setting, row, False), [])
                if base:
                    fa = groups.get((frame, setting, row, True), [])
                    lines.append("- " + verdict(row, base, fa, paper.get(setting, {})))
            lines.append("")
        if len(settings) == 1:
            plots += single_setting_plots(out, groups, frame, settings[0], rows, spec.tau)
        else:
            plots += ablation_plots(out, groups, records, frame, settings, rows, preset.x_axis, spec.tau)
    lines += consistency_section(out, records)
    lines += ["## Recipes", "", *recipes_section(records, rows), ""]
    lines += ["## Plots", "", *[p + "\n" for p in plots]]
    lines += ["## Reproduce", "", "```", _command(spec), "```", ""]
    path = out / "report.md"
    write_text_atomically(path, "\n".join(lines))
    return path
