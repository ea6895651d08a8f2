"""`report.md` and plots for a bench folder: a headline sentence (which frame reproduces the paper), the
frames' measured geometry, what the measurements say about the encoder rows, one table per frame and
setting with the paper's column and the reference rows, one sentence per row, recipes, plots.

Every sentence is computed from the records; the words that compare two numbers come from `compare`.
"""

from __future__ import annotations

import statistics
from collections import defaultdict
from pathlib import Path
from typing import Any

import yaml

from sdlkit.io import write_text_atomically
from sdlkit.paper import paper_tables
from sdlkit.paper.bench.consistency import consistency_section
from sdlkit.paper.bench.presets import BENCH_PRESETS
from sdlkit.paper.bench.recipes import NAMES
from sdlkit.paper.bench.scoring import BENCH_METRICS
from sdlkit.report import format_table, plot_grouped_bars, plot_lines, plot_recovery_curves, plot_xy

PAPER = {
    "Table 1": {"": paper_tables.TABLE1},
    "Table 4": paper_tables.TABLE4,
    "Table 5": paper_tables.TABLE5,
    "Table 6": paper_tables.TABLE6,
    "Table 7": paper_tables.TABLE7,
}
TOPK_FAMILY = ("topk", "batchtopk", "matryoshka")
"""The SAE rows the paper reports as recovering features; the headline compares frames on these."""
REPRODUCES_WITHIN = 0.02
"""A frame reproduces the paper when the TopK-family encoder M_IP is within this of Table 1 on average."""
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

Group = dict[tuple[str, str, str, bool], list[dict[str, Any]]]


# ----- numbers and comparisons --------------------------------------------------------------------------
def _group(records: list[dict[str, Any]]) -> Group:
    groups: Group = defaultdict(list)
    for r in records:
        groups[(r["frame"], r["setting"], r["row"], r["anchored"])].append(r)
    return groups


def _mean(rows: list[dict[str, Any]], key: str) -> float | None:
    values = [r[key] for r in rows if r.get(key) is not None]
    return statistics.fmean(values) if values else None


def _cell(rows: list[dict[str, Any]], key: str, percent: bool = False) -> str:
    values = [r[key] * (100 if percent else 1) for r in rows if r.get(key) is not None]
    if not values:
        return "–"
    digits = 1 if percent else 3
    text = f"{statistics.fmean(values):.{digits}f}" + ("%" if percent else "")
    spread = statistics.stdev(values) if len(values) > 1 else 0.0
    if round(spread, digits) > 0:  # a ±0.0 says nothing
        text += f" ± {spread:.{digits}f}"
    return text


def compare(name: str, ours: float, paper: float, percent: bool) -> str:
    """'M_GT 91.2% vs the paper's 84.9% (+6.3 pp, higher)': one metric against the paper, never a
    direction for a difference that rounds to zero."""
    if percent:
        diff = round((ours - paper) * 100, 1)
        text = f"{name} {ours:.1%} vs the paper's {paper:.1%}"
        delta = f"{diff:+.1f} pp"
    else:
        diff = round(ours - paper, 3)
        text = f"{name} {ours:.3f} vs the paper's {paper:.3f}"
        delta = f"{diff:+.3f}"
    if diff == 0:
        return text + " (equal)"
    return text + f" ({delta}, {'higher' if diff > 0 else 'lower'})"


def verdict(row: str, base: list[dict[str, Any]], fa: list[dict[str, Any]], paper: dict) -> str:
    """One sentence for a row on one frame: encoder M_GT and M_IP against the paper, separately; the
    decoder columns; what anchoring changed (only where it changed something)."""
    gt, ip = _mean(base, "gt_recovery"), _mean(base, "max_inner_product")
    gt_dec, ip_dec = _mean(base, "gt_recovery_decoder"), _mean(base, "max_inner_product_decoder")
    pair = paper.get((row, False))
    sentence = f"**{NAMES.get(row, row)}**: "
    if pair is None:
        sentence += f"not in the paper's table; encoder rows M_GT {gt:.1%}, M_IP {ip:.3f}"
    else:
        sentence += f"encoder rows {compare('M_GT', gt, pair[0], True)}; {compare('M_IP', ip, pair[1], False)}"
    sentence += f". Decoder columns: M_GT {gt_dec:.1%}, M_IP {ip_dec:.3f}"
    if fa:
        changes = []
        for key, where in (("gt_recovery", "encoder"), ("gt_recovery_decoder", "decoder")):
            delta = round((_mean(fa, key) - _mean(base, key)) * 100, 1)
            if delta != 0:
                changes.append(f"{delta:+.1f} pp on {where} M_GT")
        paper_fa = paper.get((row, True))
        paper_delta = round((paper_fa[0] - pair[0]) * 100, 1) if paper_fa and pair else None
        if changes:
            sentence += ". Anchoring: " + ", ".join(changes)
            if paper_delta:
                sentence += f" (paper: {paper_delta:+.1f} pp on encoder M_GT)"
        else:
            sentence += ". Anchoring changed neither M_GT"
    return sentence + "."


def headline(records: list[dict[str, Any]], table: dict) -> str | None:
    """Which frame reproduces the paper's TopK-family encoder rows (Table 1's setting), from the mean
    |M_IP − paper| over the TopK-family rows without anchoring; None when fewer than two frames or no
    TopK-family row with a paper number was run."""
    groups = _group(records)
    frames = list(dict.fromkeys(r["frame"] for r in records))
    paper = table.get("", {})
    rows = [row for row in TOPK_FAMILY if (row, False) in paper]
    gaps: dict[str, tuple[float, float, float]] = {}
    for frame in frames:
        cells = [(groups.get((frame, "", row, False)), paper[(row, False)]) for row in rows]
        cells = [(runs, pair) for runs, pair in cells if runs]
        if cells:
            gap = statistics.fmean(abs(_mean(runs, "max_inner_product") - pair[1]) for runs, pair in cells)
            gt = statistics.fmean(_mean(runs, "gt_recovery") for runs, _ in cells)
            ip = statistics.fmean(_mean(runs, "max_inner_product") for runs, _ in cells)
            gaps[frame] = (gap, gt, ip)
    if len(gaps) < 2:
        return None
    paper_gt = statistics.fmean(paper[(row, False)][0] for row in rows)
    paper_ip = statistics.fmean(paper[(row, False)][1] for row in rows)
    best = min(gaps, key=lambda f: gaps[f][0])
    parts = [f"the {f} frame {gaps[f][1]:.1%} / {gaps[f][2]:.3f}" for f in gaps]
    numbers = f"(TopK-family encoder rows, mean M_GT / M_IP: {', '.join(parts)}; paper {paper_gt:.1%} / {paper_ip:.3f})"
    if gaps[best][0] <= REPRODUCES_WITHIN:
        others = " and ".join(f for f in gaps if f != best)
        return (
            f"**The {best} frame reproduces the paper's encoder-row recovery; the {others} frame does not** {numbers}."
        )
    return f"**Neither frame reproduces the paper's encoder-row recovery; the {best} frame comes closest** {numbers}."


# ----- sections ---------------------------------------------------------------------------------------
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


def mechanism(records: list[dict[str, Any]], references: list[dict[str, Any]]) -> list[str]:
    """Per frame: where the least-squares oracle's and TopK's encoder rows sit between the features and
    the dual frame (measured M_IP against each), beside the frame's own dual cosine."""
    lines = []
    for frame in dict.fromkeys(r["frame"] for r in records):
        runs = [r for r in records if r["frame"] == frame and r["row"] == "topk" and not r["anchored"]]
        oracle = [r for r in references if r["frame"] == frame and r["reference"] == "oracle"]
        if not runs:
            continue
        setting = runs[0]["setting"]
        runs = [r for r in runs if r["setting"] == setting]
        oracle = [r for r in oracle if r["setting"] == setting]
        g = runs[0]["frame_geometry"]
        ip, dual, dec = (
            _mean(runs, k) for k in ("max_inner_product", "max_inner_product_dual", "max_inner_product_decoder")
        )
        text = (
            f"- **{frame}** frame{f' ({setting})' if setting else ''}, cond(W_p W_pᵀ) = {g['condition_number']:.1f}: "
            f"each feature's dual vector has mean cos {g['dual_cosine']:.3f} with the feature. "
        )
        if oracle:
            text += (
                f"The least-squares oracle's encoder rows score M_IP {_mean(oracle, 'max_inner_product'):.3f} against "
                f"the features and {_mean(oracle, 'max_inner_product_dual'):.3f} against the dual vectors. "
            )
        closer = "the features" if ip > dual else "the dual vectors"
        text += (
            f"TopK's trained encoder rows score {ip:.3f} against the features and {dual:.3f} against the dual "
            f"vectors (closer to {closer}); its decoder columns score {dec:.3f} against the features."
        )
        lines.append(text)
    return lines


REFERENCE_NAMES = {
    "chance": "chance (random dictionary)",
    "oracle": "oracle (W_r + least-squares encoder)",
    "dictionary-learning": "dictionary learning (scikit-learn)",
}


def _table_row(name: str, runs: list[dict[str, Any]], pair: tuple[float, float] | None) -> dict[str, str]:
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
        "L0": "–" if _mean(runs, "l0") is None else f"{_mean(runs, 'l0'):.2f}",
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


# ----- plots --------------------------------------------------------------------------------------------
def _curves(groups: Group, frame: str, setting: str, rows: list[str]) -> dict[str, dict[str, list[float]]]:
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


def _single_setting_plots(out: Path, groups: Group, frame: str, setting: str, rows: list[str], tau: float) -> list[str]:
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
                    _mean(groups[(frame, setting, row, anchored)], metric + suffix) or 0.0
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


def _ablation_plots(
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
                    _mean(groups[(frame, s, row, anchored)], "gt_recovery" + suffix)
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


def _command(spec: Any) -> str:
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
    groups = _group(records)
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
            plots += _single_setting_plots(out, groups, frame, settings[0], rows, spec.tau)
        else:
            plots += _ablation_plots(out, groups, records, frame, settings, rows, preset.x_axis, spec.tau)
    lines += consistency_section(out, records)
    lines += ["## Recipes", "", *recipes_section(records, rows), ""]
    lines += ["## Plots", "", *[p + "\n" for p in plots]]
    lines += ["## Reproduce", "", "```", _command(spec), "```", ""]
    path = out / "report.md"
    write_text_atomically(path, "\n".join(lines))
    return path
