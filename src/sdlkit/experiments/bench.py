"""`sdlkit bench`: the paper's Table 1 and its ablations (Tables 4–7) on the Linear Representation Bench.

A bench is a grid: settings (a paper table's columns: n, M, activation probability, k) × methods ×
{without, with feature anchoring} × seeds. Each run trains one dictionary with the recipe its own
paper recommends (`recipe`), scores encoder rows and decoder columns against the ground truth, and
appends one record to `DIR/results.json`; `bench_report.write_report` turns the records into
`report.md` and plots. A run folder keeps the checkpoint and `ground_truth.safetensors`, so every
number can be recomputed independently.

Anchored and unanchored twins (same setting, method and seed) are scored on the same features: the
anchored run's anchors are left out of both (paper: "evaluation is performed only on features not
used for anchoring").
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from scipy.stats import poisson

from sdlkit.anchoring import ground_truth_anchors
from sdlkit.config import RunConfig, apply_override, run_config
from sdlkit.data import LRBSource, build_source
from sdlkit.errors import ConfigError
from sdlkit.io import (
    check_output_folder,
    mark_folder,
    read_json,
    remove_owned_folder,
    save_tensors,
    write_json_atomically,
)
from sdlkit.recovery import best_match, dictionary_recovery, recovery_curve
from sdlkit.report import format_table
from sdlkit.train import Trainer, TrainResult
from sdlkit.train.checkpoint import list_checkpoints
from sdlkit.train.ensemble import EnsembleTrainer, ensemble_refusal, worth_batching

TABLE1_METHODS = ["relu", "jumprelu", "topk", "batchtopk", "matryoshka", "transcoder", "crosscoder"]
EXTRA_METHODS = ["gated", "topk-auxk"]
ALL_METHODS = TABLE1_METHODS + EXTRA_METHODS
SWEPT = {"relu": "l1_coefficient", "jumprelu": "l0_coefficient", "gated": "l1_coefficient"}
"""Methods whose sparsity coefficient `--sweep` searches, and the field it sets."""


@dataclass(frozen=True)
class Scale:
    """Data preset plus the model size and training budget every run at this scale gets."""

    data: str
    n_latents: int
    steps: int
    batch_size: int
    lr: float


SCALES = {
    # 512 latents ≈ 2n, 800 steps: the 14 runs of Table 1 take about 3.5 minutes on 2 CPU cores.
    "quick": Scale(data="quick", n_latents=512, steps=800, batch_size=1024, lr=1e-3),
    # The paper's n_q = 16,000. Steps and lr are not reported; 5,000 steps of 4,096 is ~200 passes
    # over N = 100,000 samples. lr follows Gao et al.'s 2e-4 at 16k latents, doubled for the short run.
    "paper": Scale(data="paper", n_latents=16000, steps=5000, batch_size=4096, lr=4e-4),
}


@dataclass(frozen=True)
class Setting:
    """One column of a paper table: data and method overrides, at paper scale and at quick scale."""

    label: str = ""
    data: dict[str, Any] = field(default_factory=dict)
    quick_data: dict[str, Any] | None = None
    method: dict[str, Any] = field(default_factory=dict)
    quick_method: dict[str, Any] | None = None

    def overrides(self, quick: bool) -> tuple[dict[str, Any], dict[str, Any]]:
        if quick:
            data = self.quick_data if self.quick_data is not None else self.data
            method = self.quick_method if self.quick_method is not None else self.method
            return data, method
        return self.data, self.method


@dataclass(frozen=True)
class Preset:
    """A bench: which table it reproduces, its settings and default methods, its default scale."""

    table: str
    settings: list[Setting]
    methods: list[str]
    scale: str  # the scale without --quick
    description: str


def _ratio_n(n: int) -> int:
    """The quick-scale n with the same superposition ratio n / n_p as n features in 768 dims."""
    return round(n * 200 / 768)


PRESETS: dict[str, Preset] = {
    "quick": Preset("Table 1", [Setting()], TABLE1_METHODS, "quick", "Table 1 at quick scale (n=260, n_p=200)"),
    "paper": Preset("Table 1", [Setting()], TABLE1_METHODS, "paper", "Table 1 at the paper's scale (n=1000, n_p=768)"),
    "superposition": Preset(
        "Table 4",
        [Setting(f"n={n}", {"n_features": n}, {"n_features": _ratio_n(n)}) for n in range(800, 1401, 100)],
        ["relu"],
        "paper",
        "superposition ratio n / n_p from 1.04 to 1.82",
    ),
    "interference": Preset(
        "Table 5",
        [Setting(f"M={m}", {"M": m}) for m in (0.05, 0.1, 0.2, 0.5)],
        ["relu", "jumprelu", "topk", "batchtopk", "matryoshka"],
        "paper",
        "maximum interference M",
    ),
    "sparsity": Preset(
        "Table 6",
        [Setting(f"p={p}", {"S": round(1 - p, 6)}) for p in (0.005, 0.01, 0.1)],
        ["relu", "jumprelu", "topk", "batchtopk", "matryoshka"],
        "paper",
        "activation probability p = 1 − S (the paper's 'S' column, read as p)",
    ),
    "topk-k": Preset(
        "Table 7",
        [Setting(f"k={k}", method={"k": k}, quick_method={"k": k // 4}) for k in (32, 64, 128)],
        ["topk"],
        "paper",
        "TopK's k (quick scale: k/4, for 2.6 instead of 10 active features)",
    ),
}


# ----- recipes ----------------------------------------------------------------------------------------
def recipe(name: str, true_l0: float, steps: int) -> tuple[dict[str, Any], dict[str, Any], str]:
    """(method config, data overrides, one-line rationale) of bench row `name` for data with mean L0
    `true_l0`. Active counts are Poisson(true_l0): per-sample TopK gets k at the 98th percentile (with
    k = mean it cannot reconstruct the busier samples and plateaus), BatchTopK and Matryoshka, whose k
    is a per-batch mean, get k = round(true L0). Sparsity coefficients were tuned on the quick preset
    to reach the true L0 (`--sweep` re-tunes them for other data)."""
    k_mean = max(1, round(true_l0))
    k_tail = max(1, int(poisson.ppf(0.98, true_l0)))
    warmup = max(1, steps // 20)
    recipes: dict[str, tuple[dict[str, Any], dict[str, Any], str]] = {
        "relu": (
            {"name": "relu", "l1_coefficient": 0.2, "l1_warmup_steps": warmup},
            {},
            "L1 weighted by decoder norms, λ warmed up over the first 5% (Anthropic, April 2024)",
        ),
        "jumprelu": (
            {"name": "jumprelu", "l0_coefficient": 0.05, "bandwidth": 0.05, "init_threshold": 0.3},
            {},
            "L0 penalty with straight-through gradients, ε = 0.05, θ₀ = 0.3 (Rajamanoharan et al. 2024b)",
        ),
        "topk": (
            {"name": "topk", "k": k_tail},
            {},
            f"k = {k_tail}, the 98th percentile of the active count (Gao et al. 2024)",
        ),
        "batchtopk": (
            {"name": "batchtopk", "k": k_mean},
            {},
            f"k = {k_mean} per sample on average, threshold θ at inference (Bussmann et al. 2024)",
        ),
        "matryoshka": (
            {"name": "matryoshka", "k": k_mean},
            {},
            f"BatchTopK k = {k_mean} under 5 nested prefixes n/16…n (Bussmann et al. 2025)",
        ),
        "gated": (
            {"name": "gated", "l1_coefficient": 0.5},
            {},
            "L1 on the gate + frozen-decoder aux loss (Rajamanoharan et al. 2024a)",
        ),
        "topk-auxk": (
            {"name": "topk", "k": k_tail, "auxk": {}},
            {},
            f"TopK k = {k_tail} + AuxK, α = 1/32, k_aux = n_out/2 (Gao et al. 2024)",
        ),
        "transcoder": (
            {"name": "topk", "k": k_tail},
            {"mode": "transcoder"},
            f"TopK k = {k_tail}; x_r = W_r x with an independent W_r",
        ),
        "crosscoder": (
            {"name": "topk", "k": k_tail},
            {"mode": "crosscoder", "n_sources": 2},
            f"TopK k = {k_tail}; two sources, each its own W_p^(j)",
        ),
    }
    return recipes[name]


# ----- the plan -------------------------------------------------------------------------------------
@dataclass
class BenchSpec:
    """What a bench was asked to do; a folder only ever holds results of one spec."""

    preset: str
    quick: bool
    methods: list[str]
    seeds: list[int]
    anchors: int | None
    anchor_weight: float
    anchor_mode: str
    tau: float
    steps: int | None
    sweep: bool
    device: str
    overrides: list[str] = field(default_factory=list)
    """`key=value` config overrides applied to every run (e.g. model.n_latents=2048), after the recipe."""

    def comparable(self) -> dict[str, Any]:
        """The fields that change results (the device does not make a folder incompatible)."""
        spec = asdict(self)
        spec.pop("device")
        return spec


@dataclass
class RunPlan:
    run_id: str
    setting: str
    method: str
    anchored: bool
    seed: int
    n_anchors: int  # the anchored twin's count; the unanchored run is scored without those features too
    values: dict[str, Any]
    note: str


def validate_spec(spec: BenchSpec) -> Preset:
    if spec.preset not in PRESETS:
        raise ConfigError(f"unknown bench preset {spec.preset!r}; known presets: {', '.join(PRESETS)}")
    unknown = [m for m in spec.methods if m not in ALL_METHODS]
    if unknown:
        raise ConfigError(f"unknown bench method {unknown[0]!r}; known: {', '.join(ALL_METHODS)}")
    if not 0 < spec.tau <= 1:
        raise ConfigError(f"--tau {spec.tau} is not allowed: τ must be in (0, 1]")
    if spec.anchors is not None and spec.anchors < 1:
        raise ConfigError(f"--anchors {spec.anchors} is not allowed: give at least 1 (or leave it out)")
    if spec.anchor_weight < 0:
        raise ConfigError(f"--anchor-weight {spec.anchor_weight} is not allowed: λ_anchor must be >= 0")
    if not spec.seeds:
        raise ConfigError("--seeds is empty: give at least one seed, e.g. --seeds 0,1,2")
    if spec.steps is not None and spec.steps < 1:
        raise ConfigError(f"--steps {spec.steps} is not allowed: give at least 1 (or leave it out for the default)")
    return PRESETS[spec.preset]


def plan_runs(spec: BenchSpec) -> list[RunPlan]:
    """Every run of the bench, in order (settings × methods × without/with anchoring × seeds)."""
    preset = validate_spec(spec)
    scale = SCALES["quick" if spec.quick or preset.scale == "quick" else preset.scale]
    steps = spec.steps if spec.steps is not None else scale.steps
    plans = []
    for setting in preset.settings:
        data_over, method_over = setting.overrides(spec.quick or preset.scale == "quick")
        probe = run_config({"data": {"preset": scale.data, **data_over}, "model": {"n_latents": scale.n_latents}})
        n, true_l0 = probe.data.n_features, probe.data.n_features * (1 - probe.data.S)
        n_anchors = spec.anchors if spec.anchors is not None else max(1, round(0.1 * n))
        if n_anchors > n:
            raise ConfigError(f"--anchors {n_anchors} is larger than the number of features n = {n}")
        if n_anchors > scale.n_latents:
            raise ConfigError(f"--anchors {n_anchors} is larger than the number of latents {scale.n_latents}")
        for method in spec.methods:
            method_values, recipe_data, note = recipe(method, true_l0, steps)
            method_values = {**method_values, **{k: v for k, v in method_over.items() if k in method_values}}
            for anchored in (False, True):
                for seed in spec.seeds:
                    train = {
                        "steps": steps,
                        "batch_size": scale.batch_size,
                        "lr": scale.lr,
                        "lr_warmup_steps": max(1, steps // 20),
                        "dead_window": 100 * scale.batch_size,
                        "log_every": max(1, steps // 10),
                        "checkpoint_every": max(1, steps // 4),
                        "keep_checkpoints": 1,
                    }
                    if method == "topk-auxk":
                        train["dead_window"] = 50 * scale.batch_size
                    if anchored:
                        train["anchors"] = {
                            "count": n_anchors,
                            "weight": spec.anchor_weight,
                            "mode": spec.anchor_mode,
                            "seed": seed,
                        }
                    values = {
                        "data": {"preset": scale.data, **data_over, **recipe_data, "seed": seed},
                        "model": {"n_latents": scale.n_latents, "method": method_values},
                        "train": train,
                        "seed": seed,
                        "device": spec.device,
                    }
                    for assignment in spec.overrides:
                        apply_override(values, assignment)
                    parts = [setting.label, method + ("-fa" if anchored else ""), f"seed{seed}"]
                    run_id = "__".join(p.replace("=", "") for p in parts if p)
                    plans.append(RunPlan(run_id, setting.label, method, anchored, seed, n_anchors, values, note))
    return plans


# ----- running ----------------------------------------------------------------------------------------
def prepare_folder(out: Path, spec: BenchSpec, resume: bool, overwrite: bool) -> list[dict[str, Any]]:
    """Make `out` ready; return the records already finished there (resume) or none. `overwrite` deletes
    only a bench folder (sdlkit.io.remove_owned_folder); a bench that never finished a run nor wrote a
    checkpoint does not lock its folder (a corrected command takes it over)."""
    meta_path, results_path = out / "bench.json", out / "results.json"
    if overwrite and resume:
        raise ConfigError("--overwrite and --resume contradict each other: choose one")
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


def sweep_coefficient(
    plan: RunPlan,
    source: LRBSource,
    factors: tuple[float, ...] = (0.25, 0.5, 1.0, 2.0, 4.0),
    batched: bool | None = None,
):
    """Train the unanchored recipe at `factors` × its sparsity coefficient for half the steps and
    return (the coefficient whose held-out L0 is closest to the true L0 in log ratio, the trials).
    The trials train as one ensemble (sdlkit.train.ensemble) when `batched` (None: where it pays)."""
    field_name = SWEPT[plan.method]
    base = plan.values["model"]["method"][field_name]
    configs = []
    for factor in factors:
        values = json.loads(json.dumps(plan.values))
        values["model"]["method"][field_name] = base * factor
        values["train"].update(steps=max(1, values["train"]["steps"] // 2), progress=False)
        values["train"].pop("anchors", None)
        values["train"].pop("checkpoint_every", None)
        configs.append(run_config(values))
    if stack(configs, batched):
        results = EnsembleTrainer(configs, [source] * len(configs)).fit()
    else:
        results = [Trainer(config, source).fit() for config in configs]
    trials = [
        {"coefficient": base * factor, "l0": result.metrics["l0"], "fvu": result.metrics["fvu"]}
        for factor, result in zip(factors, results, strict=True)
    ]
    true_l0 = source.true_l0
    best = min(trials, key=lambda t: (abs(math.log(max(t["l0"], 1e-3) / true_l0)), t["fvu"]))
    return best["coefficient"], trials


def score(model, source: LRBSource, exclude: list[int], tau: float) -> dict[str, Any]:
    """Recovery (encoder rows and decoder columns, anchors excluded), matched recovery and the τ curves."""
    truth = source.ground_truth()
    record: dict[str, Any] = dictionary_recovery(
        model, truth["W_p"], truth["W_r"], exclude=exclude, tau=tau, matched=True
    )
    keep = torch.ones(truth["W_p"].shape[1], dtype=torch.bool)
    keep[exclude] = False
    with torch.no_grad():
        enc, _ = best_match(model.W_E, truth["W_p"])
        dec, _ = best_match(model.W_D.T, truth["W_r"])
    taus, encoder_curve = recovery_curve(enc.cpu()[keep])
    _, decoder_curve = recovery_curve(dec.cpu()[keep])
    record["recovery_curve"] = {
        "tau": [round(t, 4) for t in taus.tolist()],
        "encoder": encoder_curve.tolist(),
        "decoder": decoder_curve.tolist(),
    }
    return record


def stack(configs: list[RunConfig], batched: bool | None) -> bool:
    """Whether to train `configs` as one ensemble: `batched` True = whenever they can, False = never,
    None = where it is expected to be faster (`worth_batching`)."""
    if batched is False or len(configs) < 2 or ensemble_refusal(configs) is not None:
        return False
    return batched is True or worth_batching(configs)


def run_groups(plans: list[RunPlan], batched: bool | None) -> list[list[RunPlan]]:
    """Consecutive runs that differ only in their seed (same setting, method, anchoring): each group
    may train as one ensemble (see `stack`); with `batched` False every run is its own group."""
    groups: list[list[RunPlan]] = []
    for plan in plans:
        last = groups[-1][-1] if groups else None
        same_row = last is not None and (last.setting, last.method, last.anchored) == (
            plan.setting,
            plan.method,
            plan.anchored,
        )
        if batched is not False and same_row:
            groups[-1].append(plan)
        else:
            groups.append([plan])
    return groups


def run_record(
    plan: RunPlan,
    config: RunConfig,
    source: LRBSource,
    result: TrainResult,
    anchor_indices: list[int],
    sweep_info: dict[str, Any] | None,
    tau: float,
) -> dict[str, Any]:
    """One results.json record: the run's scores, held-out metrics and full config. The ground truth is
    saved beside the checkpoint, so every number can be recomputed from the run folder."""
    run_dir = Path(result.run_dir)
    save_tensors(run_dir / "ground_truth.safetensors", source.ground_truth())
    truth = source.ground_truth()
    excluded = ground_truth_anchors(truth["W_p"], truth["W_r"], plan.n_anchors, plan.seed).indices
    return {
        "run_id": plan.run_id,
        "setting": plan.setting,
        "method": plan.method,
        "anchored": plan.anchored,
        "n_anchors": plan.n_anchors if plan.anchored else 0,
        "anchor_indices": anchor_indices,
        "excluded_features": excluded,
        **score(result.model, source, excluded, tau),
        **result.metrics,  # held-out mse, fvu, l0 (and per-source fvu); dead fraction over the training window
        "true_l0": source.true_l0,
        "train_seconds": result.train_seconds,
        "samples_seen": result.samples_seen,
        "seed": plan.seed,
        "run_dir": plan.run_id,
        "recipe": plan.note,
        "sweep": sweep_info,
        "config": config.model_dump(mode="json"),
    }


def run_bench(
    preset: str = "quick",
    methods: list[str] | None = None,
    out: Path = Path("bench-out"),
    device: str = "cpu",
    seeds: list[int] | None = None,
    steps: int | None = None,
    anchors: int | None = None,
    anchor_weight: float = 0.1,
    anchor_mode: str = "soft",
    tau: float = 0.95,
    quick: bool = False,
    sweep: bool = False,
    resume: bool = False,
    overwrite: bool = False,
    progress: bool = True,
    overrides: list[str] | None = None,
    batched: bool | None = None,
) -> list[dict[str, Any]]:
    """Run (or finish) a bench; write results.json after every run, then report.md and the plots. The
    seeds of a row (and the trials of a sweep) train as one ensemble (sdlkit.train.ensemble; each run's
    `train_seconds` is then its share of the ensemble's time) when `batched` is True, where it is
    expected to be faster when None (see `stack`), never when False."""
    from sdlkit.experiments.bench_report import write_report

    spec = BenchSpec(
        preset=preset,
        quick=quick,
        methods=methods or list(PRESETS[preset].methods if preset in PRESETS else []),
        seeds=seeds if seeds is not None else [0],
        anchors=anchors,
        anchor_weight=anchor_weight,
        anchor_mode=anchor_mode,
        tau=tau,
        steps=steps,
        sweep=sweep,
        device=device,
        overrides=list(overrides or []),
    )
    plans = plan_runs(spec)
    out = Path(out)
    records = prepare_folder(out, spec, resume, overwrite)
    done = {r["run_id"] for r in records}
    swept: dict[tuple[str, str, int], tuple[float, list]] = {}
    started = time.perf_counter()
    order = {plan.run_id: i for i, plan in enumerate(plans, 1)}
    built: dict[str, Any] = {}  # one data source per data config, not per run; kept while the next group needs it
    for group in run_groups([p for p in plans if p.run_id not in done], batched):
        configs, sources, sweeps, keys = [], [], [], []
        for plan in group:
            config = run_config(plan.values, [f"train.progress={progress}"])
            keys.append(json.dumps(config.data.model_dump(mode="json"), sort_keys=True))
            if keys[-1] not in built:
                built[keys[-1]] = build_source(config.data, config.device)
            source = built[keys[-1]]
            sweep_info = None
            if sweep and plan.method in SWEPT:
                cache_key = (plan.setting, plan.method, plan.seed)
                if cache_key not in swept:
                    swept[cache_key] = sweep_coefficient(plan, source, batched=batched)
                coefficient, trials = swept[cache_key]
                config.model.method = config.model.method.model_copy(update={SWEPT[plan.method]: coefficient})
                sweep_info = {"field": SWEPT[plan.method], "chosen": coefficient, "trials": trials}
            configs.append(config)
            sources.append(source)
            sweeps.append(sweep_info)
        built = {key: built[key] for key in keys}
        run_dirs = [out / plan.run_id for plan in group]
        for plan in group:
            print(f"[{order[plan.run_id]}/{len(plans)}] {plan.run_id}", flush=True)
        fresh = not any(list_checkpoints(d) for d in run_dirs)  # a run cut off mid-way resumes on its own
        if fresh and stack(configs, batched):
            ensemble = EnsembleTrainer(configs, sources, run_dirs)
            results, members = ensemble.fit(), ensemble.members
        else:
            members = [Trainer(c, s, d) for c, s, d in zip(configs, sources, run_dirs, strict=True)]
            results = [m.fit(resume=bool(list_checkpoints(m.run_dir))) for m in members]
        for plan, config, source, sweep_info, member, result in zip(
            group, configs, sources, sweeps, members, results, strict=True
        ):
            anchors = member.anchors.indices if member.anchors is not None else []
            records.append(run_record(plan, config, source, result, anchors, sweep_info, tau))
            write_json_atomically(out / "results.json", records)
    wall = time.perf_counter() - started
    write_report(out, spec, records, wall)
    print(summary_table(records))
    print(f"{len(plans)} runs, {wall:.0f} s; the full comparison with the paper is in {out / 'report.md'}")
    return records


def summary_table(records: list[dict[str, Any]]) -> str:
    """One line per run for the terminal: recovery (encoder and decoder), reconstruction, sparsity."""
    rows = [
        {
            "run": r["run_id"],
            "M_GT": f"{r['gt_recovery']:.1%}",
            "M_IP": f"{r['max_inner_product']:.3f}",
            "M_GT dec": f"{r['gt_recovery_decoder']:.1%}",
            "M_IP dec": f"{r['max_inner_product_decoder']:.3f}",
            "mse": r["mse"],
            "fvu": r["fvu"],
            "l0": r["l0"],
            "dead": f"{r['dead_fraction']:.1%}",
        }
        for r in records
    ]
    return format_table(rows, list(rows[0])) if rows else "(no runs)"
