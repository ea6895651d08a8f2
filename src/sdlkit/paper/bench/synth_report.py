"""`report.md` of a synth bench: the scale it ran at against the published one, then one table per setting with
sdlkit's SynthSAEBench metrics beside the published numbers (sdlkit.paper.published.synthsaebench), and the recipes."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sdlkit.io import write_text_atomically
from sdlkit.paper.bench.presets import BENCH_PRESETS
from sdlkit.paper.bench.recipes import NAMES
from sdlkit.paper.bench.report_cells import mean_of, values_of
from sdlkit.paper.bench.spec import BenchSpec
from sdlkit.paper.published.synthsaebench import METRICS, SYNTHSAEBENCH_16K
from sdlkit.report import MISSING, fixed, format_table, mean_spread

PUBLISHED_SETTINGS = ("L0=20", "L0=25")
"""The published settings, in the order of every synth preset's settings (0.8 and 1.0 × the width's true L0)."""
PUBLISHED_SCALE = "16,384 features, d = 768, width 4,096, 200 M samples (batch 1,024, lr 3e-4), eval on 500,000"
TITLES = {"f1": "F1", "mcc": "MCC", "uniqueness": "Uniq.", "explained_variance": "Var. expl."}


def _scale_line(spec: BenchSpec, records: list[dict[str, Any]]) -> str:
    scale = spec.scale
    config = records[0]["config"] if records else {}
    data = config.get("data", {})
    steps = spec.steps if spec.steps is not None else scale.steps
    samples = steps * scale.batch_size
    return (
        f"sdlkit: {data.get('n_features', '?')} features, d = {data.get('hidden_dim', '?')}, width "
        f"{scale.n_latents}, {samples:,} samples (batch {scale.batch_size}, lr {scale.lr:g}), eval on "
        f"{records[0]['eval_samples']:,} samples"
        if records
        else "no runs"
    ) + f". Published: {PUBLISHED_SCALE}."


def _setting_table(setting: str, published: str, records: list[dict[str, Any]]) -> str:
    rows = []
    for row in dict.fromkeys(r["row"] for r in records):
        ours = [r for r in records if r["row"] == row]
        cells = {"SAE": NAMES.get(row, row)}
        cells |= {TITLES[m]: mean_spread(values_of(ours, m), 4) for m in METRICS}
        cells["L0 (target)"] = f"{fixed(mean_of(ours, 'l0_eval'), 1)} ({ours[0]['target_l0']})"
        cells["dead"] = fixed(mean_of(ours, "dead_latents"), 0)
        paper = SYNTHSAEBENCH_16K[published].get(row, {})
        cells |= {f"{TITLES[m]} (pub.)": fixed(paper[m][0], 4) if m in paper else MISSING for m in METRICS}
        rows.append(cells)
    return f"### {setting} (published: {published})\n\n" + format_table(rows, list(rows[0]))


def write_synth_report(out: Path, spec: BenchSpec, records: list[dict[str, Any]], wall: float) -> str:
    """Write out/report.md; return the tables (for the terminal)."""
    preset = BENCH_PRESETS[spec.preset]
    tables = []
    for setting, published in zip(preset.settings, PUBLISHED_SETTINGS, strict=True):
        ours = [r for r in records if r["setting"] == setting.label]
        if ours:
            tables.append(_setting_table(setting.label, published, ours))
    notes = [
        "Scale. " + _scale_line(spec, records) + " Published numbers are means over seeds at their scale; ours "
        "are from far shorter training on a smaller model, so they show the ordering and the pipeline, not the "
        "published values.",
        "Metrics are SAELens's definitions (sdlkit.eval.synth_metrics, cross-checked against sae_lens in "
        "benchmarks/synth_crosscheck.py); 'L0 (target)' is the achieved L0 on the evaluation samples; 'dead' "
        "counts latents that never fire on them.",
        "Recipes: BatchTopK and Matryoshka take k = the target L0, with AuxK; L1 (ReLU) and JumpReLU coefficients "
        "are calibrated to the target by short trials (each record's `calibration`). The published MatchPursuit "
        "row has no sdlkit method and is left out.",
    ]
    body = "\n\n".join(tables) if tables else "(no runs)"
    text = f"# {preset.table}: {preset.description}\n\n" + "\n\n".join(f"- {n}" for n in notes) + f"\n\n{body}\n"
    text += f"\n{len(records)} runs; {wall:.0f} s of wall time in this session.\n"
    write_text_atomically(out / "report.md", text)
    return body
