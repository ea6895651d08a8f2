"""`report.md` and plots for a bench folder: our numbers beside the paper's, mean ± std over seeds,
and one sentence per method on where we agree and why we think we differ."""

from __future__ import annotations

import statistics
from collections import defaultdict
from pathlib import Path
from typing import Any

import torch

from sdlkit.experiments import paper_tables
from sdlkit.io import load_tensors
from sdlkit.recovery import best_match, max_inner_product
from sdlkit.report import format_table, plot_grouped_bars, plot_lines, plot_recovery_curves

NAMES = {
    "relu": "ReLU SAE",
    "jumprelu": "JumpReLU SAE",
    "topk": "TopK SAE",
    "batchtopk": "BatchTopK SAE",
    "matryoshka": "Matryoshka SAE",
    "transcoder": "Transcoder",
    "crosscoder": "Crosscoder",
    "gated": "Gated SAE",
    "topk-auxk": "TopK + AuxK SAE",
}
PAPER = {
    "Table 1": {"": paper_tables.TABLE1},
    "Table 4": paper_tables.TABLE4,
    "Table 5": paper_tables.TABLE5,
    "Table 6": paper_tables.TABLE6,
    "Table 7": paper_tables.TABLE7,
}

# Why a reproduction may land away from the paper, per method (used when it does).
CAUSES = {
    "relu": "the paper reports no L1 coefficient and a chance-level M_IP; ours is tuned so the L0 is near the true "
    "one, so we read the paper's figure as an untuned recipe, not a limit of ReLU + L1",
    "jumprelu": "the paper reports no threshold, bandwidth or L0 coefficient; ours start θ near the interference "
    "level and aim at the true L0, so we read the paper's chance-level figure as an untuned recipe",
    "topk": "Table 1's k is not stated; ours sits at the 98th percentile of the Poisson active count",
    "batchtopk": "k, learning rate and training length are not stated",
    "matryoshka": "the prefix sizes and weights are not stated; ours are n/16…n with equal weights",
    "transcoder": "the paper does not say how the target W_r is built; ours is an independent feature matrix with the "
    "same M, which a linear-in-x_p encoder can match exactly",
    "crosscoder": "the paper does not describe its sources; ours are 2 independent W_p^(j), and the concatenated "
    "direction of a feature is then better separated than in either source",
}


def _group(records: list[dict[str, Any]]) -> dict[tuple[str, str, bool], list[dict[str, Any]]]:
    groups: dict[tuple[str, str, bool], list[dict[str, Any]]] = defaultdict(list)
    for r in records:
        groups[(r["setting"], r["method"], r["anchored"])].append(r)
    return groups


def _mean(rows: list[dict[str, Any]], key: str) -> float:
    return statistics.fmean(r[key] for r in rows)


def _cell(rows: list[dict[str, Any]], key: str, percent: bool = False) -> str:
    values = [r[key] * (100 if percent else 1) for r in rows]
    mean = statistics.fmean(values)
    digits = 1 if percent else 3
    text = f"{mean:.{digits}f}" + ("%" if percent else "")
    if len(values) > 1:
        text += f" ± {statistics.stdev(values):.{digits}f}"
    return text


def _paper_cell(pair: tuple[float, float] | None) -> tuple[str, str]:
    if pair is None:
        return "–", "–"
    return f"{pair[0] * 100:.1f}%", f"{pair[1]:.3f}"


def chance_level(out: Path, record: dict[str, Any]) -> float:
    """M_IP of a random Gaussian dictionary of the same shape against the same ground truth."""
    truth = load_tensors(out / record["run_dir"] / "ground_truth.safetensors")
    model = record["config"]["model"]
    generator = torch.Generator().manual_seed(0)
    random = torch.randn(model["n_latents"], model["n_in"], generator=generator)
    best, _ = best_match(random, truth["W_p"])
    return max_inner_product(best)


def verdict(method: str, base: list[dict[str, Any]], fa: list[dict[str, Any]], paper: dict, quick: bool) -> str:
    """One sentence: do we agree with the paper for this method, why we think we differ, what anchoring did."""
    gt, ip = _mean(base, "gt_recovery"), _mean(base, "max_inner_product")
    gt_dec, ip_dec = _mean(base, "gt_recovery_decoder"), _mean(base, "max_inner_product_decoder")
    encoder_misses = gt_dec - gt > 0.2  # the decoder found features the encoder-row metric does not see
    sentence = f"**{NAMES.get(method, method)}**: "
    pair = paper.get((method, False))
    scale = ", and this is the quick scale, not the paper's" if quick else ""
    if pair is None:
        sentence += f"not in the paper's table; ours M_GT {gt:.1%}, M_IP {ip:.3f}"
    elif abs(gt - pair[0]) <= 0.05 and abs(ip - pair[1]) <= 0.02:
        sentence += f"agrees with the paper (M_GT {gt:.1%} vs {pair[0]:.1%}, M_IP {ip:.3f} vs {pair[1]:.3f})"
    else:
        more = gt - pair[0] > 0.05 or (abs(gt - pair[0]) <= 0.05 and ip > pair[1])
        sentence += (
            f"on the paper's encoder-row metric ours recovers {'more' if more else 'less'} than reported "
            f"(M_GT {gt:.1%} vs {pair[0]:.1%}, M_IP {ip:.3f} vs {pair[1]:.3f})"
        )
        if more or not encoder_misses:
            sentence += f"; we think because {CAUSES.get(method, 'the paper gives no recipe to match')}{scale}"
    if encoder_misses:
        sentence += (
            f". Its decoder columns recover {gt_dec:.1%} of the features (M_IP {ip_dec:.3f}): the dictionary found "
            "them, but the encoder rows point away from them (we think because an encoder row also has to cancel the "
            "interference of overlapping features), which the encoder-row metric counts as a miss"
        )
    if fa:
        delta, delta_dec = (_mean(fa, "gt_recovery") - gt) * 100, (_mean(fa, "gt_recovery_decoder") - gt_dec) * 100
        paper_fa = paper.get((method, True))
        paper_delta = f" (paper: {(paper_fa[0] - pair[0]) * 100:+.1f} pp)" if paper_fa and pair else ""
        sentence += (
            f". Anchoring changes M_GT of the non-anchored features by {delta:+.1f} pp{paper_delta} on encoder rows "
            f"and {delta_dec:+.1f} pp on decoder columns"
        )
    return sentence + "."


def write_report(out: Path, spec: Any, records: list[dict[str, Any]], wall_seconds: float) -> Path:
    """Write out/report.md and the PNG plots from the records."""
    from sdlkit.experiments.bench import PRESETS, SCALES

    preset = PRESETS[spec.preset]
    quick = spec.quick or preset.scale == "quick"
    scale = SCALES["quick" if quick else preset.scale]
    paper = PAPER[preset.table]
    groups = _group(records)
    settings = list(dict.fromkeys(r["setting"] for r in records))
    methods = [m for m in spec.methods if any(r["method"] == m for r in records)]
    first = records[0] if records else None
    first_model = first["config"]["model"] if first else {}
    first_train = first["config"]["train"] if first else {}
    lines = [
        f"# sdlkit bench `{spec.preset}`{' (quick scale)' if spec.quick else ''}: the paper's {preset.table}",
        "",
        f"{preset.description}. {len(records)} runs, seeds {spec.seeds}; "
        f"{first_model.get('n_latents', scale.n_latents)} latents, "
        f"{first_train.get('steps', scale.steps)} steps of {first_train.get('batch_size', scale.batch_size)}"
        f"{' (overrides: ' + ', '.join(spec.overrides) + ')' if spec.overrides else ''}; τ = {spec.tau}. "
        "Metrics on the features that "
        "are not anchored (anchored and unanchored twins are scored on the same features).",
        "",
        f"Wall time of this invocation: {wall_seconds:.0f} s on {spec.device}; training time summed over the runs: "
        f"{sum(r['train_seconds'] for r in records):.0f} s.",
        "",
    ]
    if first is not None:
        n_anchors = max(r["n_anchors"] for r in records)
        lines += [
            f"Anchoring: {n_anchors} features ({spec.anchor_mode}, λ_anchor = {spec.anchor_weight}). Chance level "
            f"(a random dictionary of the same shape): M_IP = {chance_level(out, first):.3f}, M_GT = 0%.",
            "",
        ]
    if records:
        enc = statistics.fmean(r["gt_recovery"] for r in records)
        dec = statistics.fmean(r["gt_recovery_decoder"] for r in records)
        lines += [
            f"**Encoder rows against decoder columns.** Over all runs here, decoder columns recover {dec:.1%} of the "
            f"features on average and encoder rows {enc:.1%} (τ = {spec.tau}). "
            + (
                "The gap is large: the dictionaries find the features, and the encoder rows that decide which latent "
                "fires point away from them; we think because a good encoder row must also cancel the interference "
                "of overlapping features (longer training moves encoder rows further from the features while the "
                "decoder stays on them). The paper scores encoder rows only; we report both and read the decoder "
                "as what a latent means."
                if dec - enc > 0.2
                else "The two agree to within 20 points here."
            ),
            "",
        ]
    for setting in settings:
        rows = []
        for method in methods:
            for anchored in (False, True):
                runs = groups.get((setting, method, anchored))
                if not runs:
                    continue
                p_gt, p_ip = _paper_cell(paper.get(setting, {}).get((method, anchored)))
                rows.append(
                    {
                        "Method": ("  + FA" if anchored else NAMES.get(method, method)),
                        "M_GT": _cell(runs, "gt_recovery", percent=True),
                        "M_IP": _cell(runs, "max_inner_product"),
                        "paper M_GT": p_gt,
                        "paper M_IP": p_ip,
                        "M_GT dec": _cell(runs, "gt_recovery_decoder", percent=True),
                        "M_IP dec": _cell(runs, "max_inner_product_decoder"),
                        "matched M_GT": _cell(runs, "matched_gt_recovery", percent=True),
                        "FVU": _cell(runs, "fvu"),
                        "L0": f"{_mean(runs, 'l0'):.2f}",
                        "true L0": f"{runs[0]['true_l0']:.2f}",
                        "dead": f"{_mean(runs, 'dead_fraction'):.1%}",
                    }
                )
        title = f"## {setting}" if setting else "## Results beside the paper"
        lines += [title, "", format_table(rows, list(rows[0])) if rows else "(no runs)", ""]
        lines += ["Where we agree and where we do not:", ""]
        for method in methods:
            base = groups.get((setting, method, False), [])
            if base:
                lines.append(
                    "- " + verdict(method, base, groups.get((setting, method, True), []), paper.get(setting, {}), quick)
                )
        lines.append("")
    lines += ["## Recipes", ""]
    for method in methods:
        example = next(r for r in records if r["method"] == method)
        sweep = (
            f" Sweep chose {example['sweep']['field']} = {example['sweep']['chosen']:g}."
            if example.get("sweep")
            else ""
        )
        lines.append(
            f"- **{NAMES.get(method, method)}**: {example['recipe']}; method config "
            f"`{example['config']['model']['method']}`.{sweep}"
        )
    lines += ["", "## Plots", ""]
    lines += _plots(out, settings, methods, groups, preset.table)
    lines += ["", "## Reproduce", "", "```", _command(spec), "```", ""]
    path = out / "report.md"
    path.write_text("\n".join(lines))
    return path


def _plots(out: Path, settings: list[str], methods: list[str], groups: dict, table: str) -> list[str]:
    if len(settings) == 1:
        setting = settings[0]
        curves = {}
        for method in methods:
            for anchored in (False, True):
                runs = groups.get((setting, method, anchored))
                if runs:
                    label = NAMES.get(method, method) + (" + FA" if anchored else "")
                    curves[label] = {
                        key: [statistics.fmean(v) for v in zip(*(r["recovery_curve"][key] for r in runs), strict=True)]
                        for key in ("encoder", "decoder")
                    } | {"tau": runs[0]["recovery_curve"]["tau"]}
        plot_recovery_curves(curves, out / "recovery_curves.png", f"GT recovery against τ ({table} setting)")
        names = [NAMES.get(m, m) for m in methods]
        for metric, ylabel in (("gt_recovery", "M_GT (τ = 0.95)"), ("max_inner_product", "M_IP")):
            series = {}
            for part, suffix in (("encoder", ""), ("decoder", "_decoder")):
                for anchored in (False, True):
                    series[f"{part}{' + FA' if anchored else ''}"] = [
                        _mean(groups[(setting, m, anchored)], metric + suffix)
                        if groups.get((setting, m, anchored))
                        else 0.0
                        for m in methods
                    ]
            plot_grouped_bars(
                names, series, out / f"bars_{metric}.png", f"{ylabel}: encoder vs decoder, ± anchoring", ylabel
            )
        return [
            "![recovery against τ](recovery_curves.png)",
            "",
            "![M_GT bars](bars_gt_recovery.png)",
            "",
            "![M_IP bars](bars_max_inner_product.png)",
        ]
    series = {}
    for method in methods:
        for anchored in (False, True):
            values = [
                _mean(groups[(s, method, anchored)], "gt_recovery")
                if groups.get((s, method, anchored))
                else float("nan")
                for s in settings
            ]
            series[NAMES.get(method, method) + (" + FA" if anchored else "")] = values
    plot_lines(
        settings, series, out / "ablation_gt_recovery.png", f"M_GT across the {table} settings", "M_GT (τ = 0.95)"
    )
    return ["![M_GT across settings](ablation_gt_recovery.png)"]


def _command(spec: Any) -> str:
    parts = [
        f"sdlkit bench --preset {spec.preset}",
        f"--methods {','.join(spec.methods)}",
        f"--seeds {','.join(map(str, spec.seeds))}",
        f"--tau {spec.tau}",
        f"--anchor-weight {spec.anchor_weight}",
        f"--anchor-mode {spec.anchor_mode}",
        f"--device {spec.device}",
    ]
    if spec.quick:
        parts.append("--quick")
    if spec.anchors is not None:
        parts.append(f"--anchors {spec.anchors}")
    if spec.steps is not None:
        parts.append(f"--steps {spec.steps}")
    if spec.sweep:
        parts.append("--sweep")
    parts += [f"--set {assignment}" for assignment in spec.overrides]
    return " ".join(parts)
