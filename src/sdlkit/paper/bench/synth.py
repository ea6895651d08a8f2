"""`sdlkit bench --preset synth` (and `synth-16k`): SynthSAEBench's published comparison, BatchTopK, Matryoshka,
standard L1 and JumpReLU SAEs at two L0s, trained on sdlkit's SynthSAEBench data and scored with SAELens's
metrics (sdlkit.eval.synth_metrics), beside the published table (sdlkit.paper.published.synthsaebench).

One benchmark model (the data preset's seed) serves every run, as published; `--seeds` vary the SAEs. A setting's
k is its target L0: BatchTopK and Matryoshka (with AuxK, as SAELens trains them) take it as k; L1 and JumpReLU
reach it through their coefficient, calibrated once per row (trials at SWEEP_FACTORS × the base coefficient for
half the steps) and log-log interpolated to every target. A run folder keeps the checkpoint and
`ground_truth.safetensors`; results.json holds one record per run, report.md the comparison.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass
from itertools import pairwise
from pathlib import Path
from typing import Any

from sdlkit.config import RunConfig, apply_override, run_config
from sdlkit.data import build_source
from sdlkit.data.synth import SynthSource
from sdlkit.eval.recovery import dictionary_recovery
from sdlkit.eval.synth_metrics import sample_pairs, synth_metrics
from sdlkit.io import save_tensors, write_json_atomically
from sdlkit.paper.bench.presets import BENCH_PRESETS
from sdlkit.paper.bench.run import RESULTS, coefficient_trials, prepare_folder
from sdlkit.paper.bench.spec import BenchSpec, train_values
from sdlkit.paper.bench.synth_report import write_synth_report
from sdlkit.train import Trainer, TrainResult
from sdlkit.train.checkpoint import list_checkpoints

__all__ = ["SynthPlan", "calibrate", "run_synth_bench", "synth_method", "synth_plans"]

SWEEP_FACTORS = (0.25, 0.5, 1.0, 2.0, 4.0)
"""Multiples of the base coefficient a calibration tries (the LRB sweep's)."""
CALIBRATED = {"relu": ("l1_coefficient", 3.0), "jumprelu": ("l0_coefficient", 4.0)}
"""Rows whose coefficient is calibrated to the target L0: (method field, base value). The bases put the CPU
scale's targets inside the trials' range (benchmarks/README.md, "SynthSAEBench")."""
EVAL_SAMPLES = {"synth-cpu": 20_000, "synth-16k": 500_000}
"""Fresh samples the SynthSAEBench metrics are computed on (published: 500,000)."""


@dataclass
class SynthPlan:
    """One run: its id (= folder), setting, row, seed, target L0 and full run config values."""

    run_id: str
    setting: str
    row: str
    seed: int
    target_l0: int
    values: dict[str, Any]


def synth_method(row: str, l0: int, steps: int) -> dict[str, Any]:
    """The method config of `row` aiming at `l0` active latents per sample (before any calibration)."""
    if row in ("batchtopk", "matryoshka"):
        return {"name": row, "k": l0, "auxk": {}}
    if row == "relu":
        return {"name": "relu", "l1_coefficient": CALIBRATED["relu"][1], "l1_warmup_steps": max(1, steps // 20)}
    if row == "jumprelu":
        # Threshold and bandwidth scaled to SynthSAEBench's magnitudes (μ from 5 to 4; the LRB's are ~1). From
        # θ₀ = 1 the threshold cannot rise far in a short run and L0 hardly answers the coefficient; from θ₀ = 2
        # it falls steadily with it (benchmarks/README.md, "SynthSAEBench").
        return {
            "name": "jumprelu",
            "l0_coefficient": CALIBRATED["jumprelu"][1],
            "bandwidth": 0.5,
            "init_threshold": 2.0,
        }
    raise ValueError(f"the synth bench has no recipe for row {row!r}; rows: batchtopk, matryoshka, relu, jumprelu")


def synth_plans(spec: BenchSpec) -> list[SynthPlan]:
    """Every run of a synth bench, in order (settings × rows × seeds)."""
    preset, scale = BENCH_PRESETS[spec.preset], spec.scale
    steps = spec.steps if spec.steps is not None else scale.steps
    plans = []
    for setting in preset.settings:
        l0 = int(setting.method["k"])
        for row in spec.rows or []:
            for seed in spec.seeds:
                values = {
                    "data": {"kind": "synth", "preset": scale.data},
                    "model": {
                        "n_latents": scale.n_latents,
                        # Encoder rows at the decoder's unit norm: fewer of BatchTopK's latents stay dead than at
                        # the TopK-family default of 0.1 (benchmarks/README.md, "SynthSAEBench").
                        "init_encoder_norm": 1.0,
                        "method": synth_method(row, l0, steps),
                    },
                    "train": train_values(scale, steps, row, dead_batches=50),  # AuxK: dead after 50 silent batches
                    "seed": seed,
                    "device": spec.device,
                }
                for assignment in spec.overrides:
                    apply_override(values, assignment)
                run_id = "__".join([setting.label.replace("=", ""), row, f"seed{seed}"])
                plans.append(SynthPlan(run_id, setting.label, row, seed, l0, values))
    return plans


def _interpolate(trials: list[dict[str, float]], target: float) -> float:
    """The coefficient whose L0 is `target`, log-log interpolated between the two trials around it (the nearest
    end trial when none brackets it)."""
    points = sorted((t["coefficient"], max(t["l0"], 1e-3)) for t in trials)
    for (c0, l0), (c1, l1) in pairwise(points):
        if min(l0, l1) <= target <= max(l0, l1) and l0 != l1:
            w = math.log(target / l0) / math.log(l1 / l0)
            return math.exp(math.log(c0) + w * math.log(c1 / c0))
    return min(points, key=lambda p: abs(math.log(p[1] / target)))[0]


def calibrate(plan: SynthPlan, source: SynthSource, targets: list[int], stack: bool | None) -> dict[str, Any]:
    """Train `plan`'s row at SWEEP_FACTORS × its coefficient for half the steps; return {"field", "trials",
    "chosen": {target L0: coefficient}}. The trials train as one ensemble where that pays (run.should_stack)."""
    field = CALIBRATED[plan.row][0]
    trials = coefficient_trials(plan.values, field, SWEEP_FACTORS, source, stack)
    return {"field": field, "trials": trials, "chosen": {str(t): _interpolate(trials, t) for t in targets}}


def synth_record(
    plan: SynthPlan,
    config: RunConfig,
    source: SynthSource,
    result: TrainResult,
    calibration: dict[str, Any] | None,
    tau: float,
    eval_samples: int,
) -> dict[str, Any]:
    """One results.json record: SynthSAEBench's metrics on `eval_samples` fresh samples, ground-truth recovery
    (encoder rows and decoder columns, as the LRB bench reports it), held-out training metrics, the calibration
    and the full config."""
    truth = source.ground_truth()
    save_tensors(Path(result.run_dir) / "ground_truth.safetensors", truth)
    metrics = synth_metrics(result.model, sample_pairs(source, eval_samples), truth["W_r"])
    return {
        "run_id": plan.run_id,
        "row": plan.row,
        "method": config.model.method.name,
        "setting": plan.setting,
        "target_l0": plan.target_l0,
        "anchored": False,
        "n_anchors": 0,
        "anchor_indices": [],
        "excluded_features": [],
        **{k: v for k, v in metrics.items() if k not in ("l0", "n_samples")},
        "l0_eval": metrics["l0"],
        "eval_samples": metrics["n_samples"],
        "true_l0_width": source.true_l0_within(config.model.n_latents),
        **dictionary_recovery(result.model, truth["W_p"], truth["W_r"], tau=tau),
        **result.metrics,  # held-out mse, fvu, l0, never_fired_fraction, dense_fraction; dead_fraction in training
        "train_seconds": result.train_seconds,
        "samples_seen": result.samples_seen,
        "seed": plan.seed,
        "run_dir": plan.run_id,
        "calibration": calibration,
        "config": config.model_dump(mode="json"),
    }


def _configure(
    plan: SynthPlan, source: SynthSource, calibrations: dict, targets: list[int], progress: bool, stack: bool | None
) -> tuple[RunConfig, dict[str, Any] | None]:
    """`plan`'s run config, with its calibrated coefficient (calibrating its row first if needed)."""
    config = run_config(plan.values, [f"train.progress={progress}"])
    if plan.row not in CALIBRATED:
        return config, None
    key = (plan.row, plan.seed)
    if key not in calibrations:
        calibrations[key] = calibrate(plan, source, targets, stack)
    calibration = calibrations[key]
    coefficient = calibration["chosen"][str(plan.target_l0)]
    config.model.method = config.model.method.model_copy(update={calibration["field"]: coefficient})
    return config, {**calibration, "coefficient": coefficient}


def run_synth_bench(
    spec: BenchSpec,
    out: Path = Path("bench-out"),
    *,
    resume: bool = False,
    overwrite: bool = False,
    progress: bool = True,
    stack: bool | None = None,
) -> list[dict[str, Any]]:
    """Run (or finish) a synth bench; write results.json after every run, then report.md. `stack`: whether a
    calibration's trials train as one ensemble (None: where that is expected to be faster)."""
    plans = synth_plans(spec)
    for plan in plans:  # every config is valid before the first run trains
        run_config(plan.values)
    out = Path(out)
    records = prepare_folder(out, spec, resume, overwrite)
    done = {r["run_id"] for r in records}
    targets = sorted({p.target_l0 for p in plans})
    eval_samples = EVAL_SAMPLES.get(BENCH_PRESETS[spec.preset].scale, 20_000)
    sources: dict[str, SynthSource] = {}
    calibrations: dict[tuple[str, int], dict[str, Any]] = {}
    started = time.perf_counter()
    for number, plan in enumerate(plans, 1):
        if plan.run_id in done:
            continue
        data = run_config(plan.values).data
        key = json.dumps(data.model_dump(mode="json"), sort_keys=True)
        if key not in sources:
            sources[key] = build_source(data, spec.device)
        source = sources[key]
        config, calibration = _configure(plan, source, calibrations, targets, progress, stack)
        print(f"[{number}/{len(plans)}] {plan.run_id}", flush=True)
        run_dir = out / plan.run_id
        result = Trainer(config, source, run_dir).fit(resume=bool(list_checkpoints(run_dir)))
        records.append(synth_record(plan, config, source, result, calibration, spec.tau, eval_samples))
        write_json_atomically(out / RESULTS, records)
    wall = time.perf_counter() - started
    table = write_synth_report(out, spec, records, wall)
    print(table)
    print(f"{len(plans)} runs, {wall:.0f} s; the comparison with the published table is in {out / 'report.md'}")
    return records
