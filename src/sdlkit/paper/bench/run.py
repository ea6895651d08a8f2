"""Running a bench: train every planned run (resumable), score it, write `results.json` after each run,
score the reference rows of every data setting (`references.json`), then the report.

Anchored and unanchored twins (same frame, setting, row and seed) are scored on the same features: the
anchored run's anchors are left out of both (paper: "evaluation is performed only on features not used
for anchoring"). A run folder keeps the checkpoint and `ground_truth.safetensors`, so every number can
be recomputed independently.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from sdlkit.config import RunConfig, run_config
from sdlkit.data import LRBSource, build_source
from sdlkit.data.source import DataSource
from sdlkit.errors import ConfigError
from sdlkit.io import (
    check_output_folder,
    mark_folder,
    read_json,
    remove_owned_folder,
    save_tensors,
    write_json_atomically,
)
from sdlkit.paper.bench.recipes import SWEPT
from sdlkit.paper.bench.reference import reference_records
from sdlkit.paper.bench.report import write_report
from sdlkit.paper.bench.scoring import score
from sdlkit.paper.bench.spec import BenchSpec, RunPlan, plan_runs
from sdlkit.report import fixed, format_table, percent
from sdlkit.train import Trainer, TrainResult
from sdlkit.train.anchoring import ground_truth_anchors
from sdlkit.train.checkpoint import list_checkpoints
from sdlkit.train.ensemble import EnsembleTrainer, ensemble_refusal, worth_batching

RESULTS, REFERENCES, META = "results.json", "references.json", "bench.json"


def prepare_folder(out: Path, spec: BenchSpec, resume: bool, overwrite: bool) -> list[dict[str, Any]]:
    """Make `out` ready; return the records already finished there (resume) or none. `overwrite` deletes
    only a bench folder (sdlkit.io.remove_owned_folder); a bench that never finished a run nor wrote a
    checkpoint does not lock its folder (a corrected command takes it over)."""
    if overwrite and resume:
        raise ConfigError("--overwrite and --resume contradict each other: choose one")
    meta_path, results_path = out / META, out / RESULTS
    if overwrite:
        remove_owned_folder(out, "bench")
    check_output_folder(out, "bench")
    records = read_json(results_path, ConfigError, kind=list) if results_path.is_file() else []
    if records or any(list_checkpoints(run) for run in out.glob("*") if run.is_dir()):
        saved = read_json(meta_path, ConfigError) if meta_path.is_file() else {}
        if saved != spec.comparable():
            changed = sorted(k for k in set(saved) | set(spec.comparable()) if saved.get(k) != spec.comparable().get(k))
            raise ConfigError(
                f"output folder {out} holds results of a different bench ({', '.join(changed)} differ): "
                "choose another --out or pass --overwrite"
            )
        if not resume:
            raise ConfigError(
                f"output folder {out} already holds this bench: pass --resume to finish it or --overwrite"
            )
        return records
    mark_folder(out, "bench")
    write_json_atomically(meta_path, spec.comparable())
    return []


def should_stack(configs: list[RunConfig], stack: bool | None) -> bool:
    """Whether to train `configs` as one ensemble: `stack` True = whenever they can, False = never,
    None = where it is expected to be faster (`worth_batching`)."""
    if stack is False or len(configs) < 2 or ensemble_refusal(configs) is not None:
        return False
    return stack is True or worth_batching(configs)


def coefficient_trials(
    values: dict[str, Any], field: str, factors: Sequence[float], source: DataSource, stack: bool | None
) -> list[dict[str, float]]:
    """Train the run `values` (unanchored) at `factors` × its method's `field` for half the steps; each
    trial's coefficient, held-out L0 and FVU. The trials train as one ensemble where that pays (`should_stack`)."""
    base = values["model"]["method"][field]
    configs = []
    for factor in factors:
        trial = json.loads(json.dumps(values))
        trial["model"]["method"][field] = base * factor
        trial["train"].update(steps=max(1, trial["train"]["steps"] // 2), progress=False)
        trial["train"].pop("anchors", None)
        trial["train"].pop("checkpoint_every", None)
        configs.append(run_config(trial))
    if should_stack(configs, stack):
        results = EnsembleTrainer(configs, [source] * len(configs)).fit()
    else:
        results = [Trainer(config, source).fit() for config in configs]
    return [
        {"coefficient": base * factor, "l0": result.metrics["l0"], "fvu": result.metrics["fvu"]}
        for factor, result in zip(factors, results, strict=True)
    ]


def sweep_coefficient(
    plan: RunPlan,
    source: LRBSource,
    factors: tuple[float, ...] = (0.25, 0.5, 1.0, 2.0, 4.0),
    stack: bool | None = None,
) -> tuple[float, list[dict[str, float]]]:
    """Train the unanchored recipe at `factors` × its sparsity coefficient for half the steps and
    return (the coefficient whose held-out L0 is closest to the true L0 in log ratio, the trials).
    The trials train as one ensemble (sdlkit.train.ensemble) when `stack` (None: where it pays)."""
    trials = coefficient_trials(plan.values, SWEPT[plan.row], factors, source, stack)
    true_l0 = source.true_l0
    best = min(trials, key=lambda t: (abs(math.log(max(t["l0"], 1e-3) / true_l0)), t["fvu"]))
    return best["coefficient"], trials


def run_groups(plans: list[RunPlan], stack: bool | None) -> list[list[RunPlan]]:
    """Consecutive runs that differ only in their seed (same frame, setting, row, anchoring): each group
    may train as one ensemble (see `should_stack`); with `stack` False every run is its own group."""
    groups: list[list[RunPlan]] = []
    for plan in plans:
        key = (plan.frame, plan.setting, plan.row, plan.anchored)
        last = groups[-1][-1] if groups else None
        if stack is not False and last is not None and (last.frame, last.setting, last.row, last.anchored) == key:
            groups[-1].append(plan)
        else:
            groups.append([plan])
    return groups


def excluded_features(source: LRBSource, plan: RunPlan) -> list[int]:
    """The features the anchored twin of `plan` pins: left out of both twins' scores (none without a twin)."""
    if plan.n_anchors == 0:
        return []
    truth = source.ground_truth()
    return ground_truth_anchors(truth["W_p"], truth["W_r"], plan.n_anchors, plan.seed).indices


def run_record(
    plan: RunPlan,
    config: RunConfig,
    source: LRBSource,
    result: TrainResult,
    anchor_indices: list[int],
    sweep_info: dict[str, Any] | None,
    tau: float,
) -> dict[str, Any]:
    """One results.json record: the run's scores, held-out metrics, the frame's geometry and the full
    config. The ground truth is saved beside the checkpoint, so every number can be recomputed."""
    save_tensors(Path(result.run_dir) / "ground_truth.safetensors", source.ground_truth())
    excluded = excluded_features(source, plan)
    return {
        "run_id": plan.run_id,
        "row": plan.row,
        "method": plan.method,
        "frame": plan.frame,
        "setting": plan.setting,
        "anchored": plan.anchored,
        "n_anchors": plan.n_anchors if plan.anchored else 0,
        "anchor_indices": anchor_indices,
        "excluded_features": excluded,
        **score(result.model, source, excluded, tau),
        # held-out mse, fvu, l0, never_fired_fraction (per-source fvu); dead_fraction over the training window
        **result.metrics,
        "true_l0": source.true_l0,
        "frame_geometry": source.frame(),
        "train_seconds": result.train_seconds,
        "samples_seen": result.samples_seen,
        "seed": plan.seed,
        "run_dir": plan.run_id,
        "recipe": plan.note,
        "sweep": sweep_info,
        "config": config.model_dump(mode="json"),
    }


def _train_group(
    group: list[RunPlan], configs: list[RunConfig], sources: list[LRBSource], out: Path, stack: bool | None
) -> tuple[list[Trainer], list[TrainResult]]:
    run_dirs = [out / plan.run_id for plan in group]
    fresh = not any(list_checkpoints(d) for d in run_dirs)  # a run cut off mid-way resumes on its own
    if fresh and should_stack(configs, stack):
        ensemble = EnsembleTrainer(configs, sources, run_dirs)
        return ensemble.members, ensemble.fit()
    members = [Trainer(c, s, d) for c, s, d in zip(configs, sources, run_dirs, strict=True)]
    return members, [m.fit(resume=bool(list_checkpoints(m.run_dir))) for m in members]


class _Sources:
    """One data source per data config, not per run; kept while the next group needs it."""

    def __init__(self) -> None:
        self.built: dict[str, LRBSource] = {}

    def get(self, config: RunConfig) -> tuple[str, LRBSource]:
        key = json.dumps(config.data.model_dump(mode="json"), sort_keys=True)
        if key not in self.built:
            self.built[key] = build_source(config.data, config.device)
        return key, self.built[key]

    def keep_only(self, keys: list[str]) -> None:
        self.built = {key: self.built[key] for key in keys}


def _references(spec: BenchSpec, plans: list[RunPlan], out: Path, done: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Reference rows for every (frame, setting) whose SAE data the bench trains on (cached in
    references.json, so a resumed bench does not refit them)."""
    finished = {(r["frame"], r["setting"]) for r in done}
    records = list(done)
    for key in dict.fromkeys(p.data_key for p in plans):
        sae_plans = [p for p in plans if p.data_key == key and p.values["data"].get("mode", "sae") == "sae"]
        if key in finished or not sae_plans:
            continue
        plan = sae_plans[0]
        config = run_config(plan.values)
        source = build_source(config.data, config.device)
        subdir = "references/" + "__".join(part.replace("=", "") for part in key if part)
        base = {"frame": plan.frame, "setting": plan.setting, "frame_geometry": source.frame()}
        print(f"references for {subdir.removeprefix('references/')}", flush=True)
        records += reference_records(
            source, config.model.n_latents, out, subdir, excluded_features(source, plan), spec.tau, base
        )
        write_json_atomically(out / REFERENCES, records)
    return records


def run_bench(
    spec: BenchSpec,
    out: Path = Path("bench-out"),
    *,
    resume: bool = False,
    overwrite: bool = False,
    progress: bool = True,
    stack: bool | None = None,
) -> list[dict[str, Any]]:
    """Run (or finish) a bench; write results.json after every run, then the reference rows, report.md
    and the plots. The seeds of a row (and the trials of a sweep) train as one ensemble (each run's
    `train_seconds` is then its share of the ensemble's time) when `stack` is True, where it is
    expected to be faster when None (see `should_stack`), never when False."""
    plans = plan_runs(spec)
    out = Path(out)
    records = prepare_folder(out, spec, resume, overwrite)
    done = {r["run_id"] for r in records}
    swept: dict[tuple[str, str, str, int], tuple[float, list]] = {}
    started = time.perf_counter()
    order = {plan.run_id: i for i, plan in enumerate(plans, 1)}
    sources = _Sources()
    for group in run_groups([p for p in plans if p.run_id not in done], stack):
        configs, group_sources, sweeps, keys = [], [], [], []
        for plan in group:
            config = run_config(plan.values, [f"train.progress={progress}"])
            key, source = sources.get(config)
            sweep_info = None
            if spec.sweep and plan.row in SWEPT:
                cache_key = (plan.frame, plan.setting, plan.row, plan.seed)
                if cache_key not in swept:
                    swept[cache_key] = sweep_coefficient(plan, source, stack=stack)
                coefficient, trials = swept[cache_key]
                config.model.method = config.model.method.model_copy(update={SWEPT[plan.row]: coefficient})
                sweep_info = {"field": SWEPT[plan.row], "chosen": coefficient, "trials": trials}
            configs.append(config)
            group_sources.append(source)
            sweeps.append(sweep_info)
            keys.append(key)
        sources.keep_only(keys)
        for plan in group:
            print(f"[{order[plan.run_id]}/{len(plans)}] {plan.run_id}", flush=True)
        members, results = _train_group(group, configs, group_sources, out, stack)
        for plan, config, source, sweep_info, member, result in zip(
            group, configs, group_sources, sweeps, members, results, strict=True
        ):
            anchors = member.anchors.indices if member.anchors is not None else []
            records.append(run_record(plan, config, source, result, anchors, sweep_info, spec.tau))
            write_json_atomically(out / RESULTS, records)
    references: list[dict[str, Any]] = []
    if spec.references:
        saved = read_json(out / REFERENCES, ConfigError, kind=list) if (out / REFERENCES).is_file() else []
        references = _references(spec, plans, out, saved)
    wall = time.perf_counter() - started
    write_report(out, spec, records, references, wall)
    print(summary_table(records + references))
    print(f"{len(plans)} runs, {wall:.0f} s; the full comparison with the paper is in {out / 'report.md'}")
    return records


def summary_table(records: list[dict[str, Any]]) -> str:
    """One line per run (and reference row) for the terminal: recovery (encoder and decoder), FVU, L0."""
    rows = [
        {
            "run": r.get("run_id") or f"{r['frame']} {r['setting']} {r['reference']}".replace("  ", " "),
            "M_GT": percent(r["gt_recovery"]),
            "M_IP": fixed(r["max_inner_product"]),
            "M_GT dec": percent(r["gt_recovery_decoder"]),
            "M_IP dec": fixed(r["max_inner_product_decoder"]),
            "fvu": fixed(r.get("fvu")),
            "l0": fixed(r.get("l0"), 2),
        }
        for r in records
    ]
    return format_table(rows, list(rows[0])) if rows else "(no runs)"
