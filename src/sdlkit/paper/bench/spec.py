"""What a bench is asked to do (`BenchSpec`, built once by the CLI or by Python callers) and the runs it
plans: frames × settings × rows × {without, with feature anchoring} × seeds."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from sdlkit.config import apply_override, run_config
from sdlkit.errors import ConfigError
from sdlkit.paper.bench.presets import BENCH_PRESETS, SCALES, Preset, Scale
from sdlkit.paper.bench.recipes import ALL_ROWS, recipe


@dataclass
class BenchSpec:
    """A bench: preset, rows, frames, seeds, anchoring, scoring threshold and overrides. A folder only
    ever holds results of one spec (`comparable`). None means the preset's default."""

    preset: str = "quick"
    quick: bool = False
    rows: list[str] | None = None
    frames: list[str] | None = None
    seeds: list[int] = field(default_factory=lambda: [0])
    anchors: int | None = None
    anchor_weight: float = 0.1
    anchor_mode: str = "soft"
    tau: float = 0.95
    steps: int | None = None
    sweep: bool = False
    device: str = "cpu"
    overrides: list[str] = field(default_factory=list)
    """`key=value` config overrides applied to every run (e.g. model.n_latents=2048), after the recipe."""
    references: bool = True
    """Score the reference rows (chance, oracle, classical dictionary learning) for every data setting."""

    def __post_init__(self) -> None:
        preset = self.validate()
        self.rows = list(self.rows) if self.rows is not None else list(preset.rows)
        self.frames = list(self.frames) if self.frames is not None else list(preset.frames)
        unknown = [r for r in self.rows if r not in ALL_ROWS]
        if unknown:
            raise ConfigError(f"unknown bench row {unknown[0]!r}; known: {', '.join(ALL_ROWS)}")
        bad = [f for f in self.frames if f not in ("gaussian", "tight")]
        if preset.data == "lrb" and (bad or not self.frames):
            raise ConfigError(f"--frames {','.join(self.frames)!r} is not allowed: give gaussian, tight or both")

    def validate(self) -> Preset:
        """The preset, after checking every field that does not need the data (ConfigError otherwise)."""
        if self.preset not in BENCH_PRESETS:
            raise ConfigError(f"unknown bench preset {self.preset!r}; known presets: {', '.join(BENCH_PRESETS)}")
        if not 0 < self.tau <= 1:
            raise ConfigError(f"--tau {self.tau} is not allowed: τ must be in (0, 1]")
        if self.anchors is not None and self.anchors < 1:
            raise ConfigError(f"--anchors {self.anchors} is not allowed: give at least 1 (or leave it out)")
        if self.anchor_weight < 0:
            raise ConfigError(f"--anchor-weight {self.anchor_weight} is not allowed: λ_anchor must be >= 0")
        if self.steps is not None and self.steps < 1:
            raise ConfigError(f"--steps {self.steps} is not allowed: give at least 1 (or leave it out)")
        if not self.seeds:
            raise ConfigError("--seeds is empty: give at least one seed, e.g. --seeds 0,1,2")
        return BENCH_PRESETS[self.preset]

    @property
    def scale(self) -> Scale:
        preset = BENCH_PRESETS[self.preset]
        if preset.data != "lrb":  # a synth preset names its own scale; --quick is the `synth` preset
            return SCALES[preset.scale]
        return SCALES["quick" if self.quick or preset.scale == "quick" else preset.scale]

    @property
    def at_quick_scale(self) -> bool:
        return self.quick or BENCH_PRESETS[self.preset].scale == "quick"

    def comparable(self) -> dict[str, Any]:
        """The fields that change results (the device does not make a folder incompatible)."""
        spec = asdict(self)
        spec.pop("device")
        return spec


@dataclass
class RunPlan:
    """One training run of a bench: its id (= folder), place in the grid and full run config values."""

    run_id: str
    frame: str
    setting: str
    row: str
    anchored: bool
    seed: int
    n_anchors: int  # the anchored twin's count; the unanchored run is scored without those features too
    values: dict[str, Any]
    note: str

    @property
    def method(self) -> str:
        """The σ the row trains (the registry name)."""
        return self.values["model"]["method"]["name"]

    @property
    def data_key(self) -> tuple[str, str]:
        """Runs with the same (frame, setting) share their ground truth and reference rows."""
        return self.frame, self.setting


def train_values(scale: Scale, steps: int, row: str, dead_batches: int | None = None) -> dict[str, Any]:
    """A bench run's train section at `scale`: the row's lr, a 5% warm-up, 10 log lines, the held-out set scored
    at the end only (the records score it themselves), 4 checkpoints (the last one kept). A latent is dead after
    `dead_batches` silent batches (default: 50 for AuxK's row, else 100)."""
    dead_batches = dead_batches if dead_batches is not None else (50 if row == "topk-auxk" else 100)
    log_every = max(1, steps // 10)
    return {
        "steps": steps,
        "batch_size": scale.batch_size,
        "lr": scale.lr * scale.row_lr_scale.get(row, 1.0),
        "lr_warmup_steps": max(1, steps // 20),
        "dead_window": dead_batches * scale.batch_size,
        "log_every": log_every,
        "eval_every": log_every * -(-steps // log_every),
        "checkpoint_every": max(1, steps // 4),
        "keep_checkpoints": 1,
    }


def plan_runs(spec: BenchSpec) -> list[RunPlan]:
    """Every run of the bench, in order (frames × settings × rows × without/with anchoring × seeds)."""
    preset, scale = BENCH_PRESETS[spec.preset], spec.scale
    steps = spec.steps if spec.steps is not None else scale.steps
    plans = []
    for frame in spec.frames or []:
        for setting in preset.settings:
            data_over, method_over = setting.overrides(spec.at_quick_scale)
            data_over = {"frame": frame, **data_over}
            probe = run_config({"data": {"preset": scale.data, **data_over}, "model": {"n_latents": scale.n_latents}})
            n, true_l0 = probe.data.n_features, probe.data.n_features * (1 - probe.data.S)
            n_anchors = spec.anchors if spec.anchors is not None else max(1, round(0.1 * n))
            n_anchors = n_anchors if True in preset.anchoring else 0  # nothing to leave out without a twin
            if n_anchors > n:
                raise ConfigError(f"--anchors {n_anchors} is larger than the number of features n = {n}")
            if n_anchors > scale.n_latents:
                raise ConfigError(f"--anchors {n_anchors} is larger than the number of latents {scale.n_latents}")
            for row in spec.rows or []:
                plan = recipe(row, true_l0, steps)
                method_values = {**plan.method, **{k: v for k, v in method_over.items() if k in plan.method}}
                for anchored in preset.anchoring:
                    for seed in spec.seeds:
                        train = train_values(scale, steps, row)
                        if anchored:
                            train["anchors"] = {
                                "count": n_anchors,
                                "weight": spec.anchor_weight,
                                "mode": spec.anchor_mode,
                                "seed": seed,
                            }
                        values = {
                            "data": {"preset": scale.data, **data_over, **plan.data, "seed": seed},
                            "model": {"n_latents": scale.n_latents, "method": method_values},
                            "train": train,
                            "seed": seed,
                            "device": spec.device,
                        }
                        for assignment in spec.overrides:
                            apply_override(values, assignment)
                        parts = [frame, setting.label, row + ("-fa" if anchored else ""), f"seed{seed}"]
                        run_id = "__".join(p.replace("=", "") for p in parts if p)
                        plans.append(
                            RunPlan(run_id, frame, setting.label, row, anchored, seed, n_anchors, values, plan.note)
                        )
    return plans
