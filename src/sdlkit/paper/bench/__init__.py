"""`sdlkit bench`: the paper's Table 1 and its ablations (Tables 4–7), and the frame-conditioning ablation, on
the Linear Representation Bench; and SynthSAEBench's published comparison on its synthetic data.

presets.py (tables, settings, scales), recipes.py (rows and their recipes), spec.py (BenchSpec and the run
plan), scoring.py (recovery and encoder geometry), reference.py (chance, oracle, dictionary learning),
run.py (training, resume, records), report.py (report.md, from report_text.py, report_tables.py and
report_plots.py); synth.py and synth_report.py (the SynthSAEBench presets `synth` and `synth-16k`).
"""

from sdlkit.paper.bench.presets import BENCH_PRESETS, SCALES, Preset, Scale, Setting
from sdlkit.paper.bench.recipes import ALL_ROWS, NAMES, TABLE1_ROWS, Recipe, recipe
from sdlkit.paper.bench.run import run_bench, summary_table
from sdlkit.paper.bench.spec import BenchSpec, RunPlan, plan_runs
from sdlkit.paper.bench.synth import run_synth_bench

__all__ = [
    "ALL_ROWS",
    "BENCH_PRESETS",
    "NAMES",
    "SCALES",
    "TABLE1_ROWS",
    "BenchSpec",
    "Preset",
    "Recipe",
    "RunPlan",
    "Scale",
    "Setting",
    "plan_runs",
    "recipe",
    "run_bench",
    "run_synth_bench",
    "summary_table",
]
