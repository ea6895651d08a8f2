"""Bench presets: which paper table a bench reproduces, its settings (the table's columns), its rows, its
frames and its scale. Adding a preset is one entry in `BENCH_PRESETS` (and, for a paper table, its numbers in
`sdlkit.paper.published.paper`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from sdlkit.paper.bench.recipes import TABLE1_ROWS

SYNTH_ROWS = ["batchtopk", "matryoshka", "relu", "jumprelu"]
"""The rows of SynthSAEBench's published table that sdlkit has (it has no matching-pursuit SAE)."""

FRAMES = ("gaussian", "tight")
"""The LRB frames a bench compares by default (sdlkit.data.lrb.features): App. C's Gaussian draw and its
nearest tight frame."""


@dataclass(frozen=True)
class Scale:
    """Data preset plus the model size and training budget every run at this scale gets."""

    data: str
    n_latents: int
    steps: int
    batch_size: int
    lr: float
    row_lr_scale: dict[str, float] = field(default_factory=dict)
    """Rows whose learning rate is a multiple of `lr` at this scale."""


SCALES = {
    # 512 latents ≈ 2n, 500 steps of 1,024: Table 1 on both frames (28 runs) sized to `make bench`'s
    # time budget (benchmarks/README.md, "The frame and the encoder rows"). ReLU and JumpReLU at 4× the lr:
    # at 1e-3 their penalties are far from converged after 500 steps; at the paper's data scale 1e-3
    # converges, so the other scales keep one lr for every row (benchmarks/README.md, "ReLU and JumpReLU
    # learning rate").
    "quick": Scale(
        data="quick", n_latents=512, steps=500, batch_size=1024, lr=1e-3, row_lr_scale={"relu": 4.0, "jumprelu": 4.0}
    ),
    # The paper's n_q = 16,000. Steps and lr are not reported; 5,000 steps of 4,096 is ~200 passes
    # over N = 100,000 samples. lr follows Gao et al.'s 2e-4 at 16k latents, doubled for the short run.
    "paper": Scale(data="paper", n_latents=16000, steps=5000, batch_size=4096, lr=4e-4),
    # SynthSAEBench (data presets of sdlkit.data.synth). Published: width 4,096, 200 M samples in batches of
    # 1,024 at lr 3e-4 (SAELens docs/synth_sae_bench.md).
    "synth-16k": Scale(data="synthsaebench-16k", n_latents=4096, steps=195_313, batch_size=1024, lr=3e-4),
    # A quarter of it for CPUs: the `cpu` data preset (n = 4,096, d = 192), width n/4 as published, 400 steps
    # of 1,024 so that the 8 runs and 2 calibrations are short enough for a CPU (the time is in
    # benchmarks/README.md, "SynthSAEBench"); lr 3e-3 for the short run.
    "synth-cpu": Scale(data="cpu", n_latents=1024, steps=400, batch_size=1024, lr=3e-3),
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
        """(data overrides, method overrides) at the quick or the full scale."""
        if quick:
            data = self.quick_data if self.quick_data is not None else self.data
            method = self.quick_method if self.quick_method is not None else self.method
            return data, method
        return self.data, self.method


@dataclass(frozen=True)
class Preset:
    """A bench: the table it reproduces, its settings, default rows and frames, its default scale.
    `x_axis` names the record field an ablation plots against (None: the settings, in order)."""

    table: str
    settings: list[Setting]
    rows: list[str]
    scale: str  # the scale without --quick
    description: str
    frames: tuple[str, ...] = FRAMES
    x_axis: str | None = None
    anchoring: tuple[bool, ...] = (False, True)
    """Which twins each row trains: without and with feature anchoring (an ablation may skip the latter)."""
    data: str = "lrb"
    """The data kind the bench runs on: "lrb" (sdlkit.paper.bench.run) or "synth" (sdlkit.paper.bench.synth)."""


def _ratio_n(n: int) -> int:
    """The quick-scale n with the same superposition ratio n / n_p as n features in 768 dims."""
    return round(n * 200 / 768)


CONDITIONING_TIGHTNESS = (0.0, 0.25, 0.5, 0.75, 0.9, 1.0)
"""Frame tightness t of the `conditioning` preset, from the Gaussian draw (t = 0) to the tight frame (t = 1); the
condition numbers they give are in benchmarks/README.md, "The frame and the encoder rows"."""

BENCH_PRESETS: dict[str, Preset] = {
    "quick": Preset("Table 1", [Setting()], TABLE1_ROWS, "quick", "Table 1 at quick scale (n=260, n_p=200)"),
    "paper": Preset("Table 1", [Setting()], TABLE1_ROWS, "paper", "Table 1 at the paper's scale (n=1000, n_p=768)"),
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
    "conditioning": Preset(
        "conditioning",
        [Setting(f"t={t:g}", {"frame": "tight", "tightness": t}) for t in CONDITIONING_TIGHTNESS],
        ["topk", "relu"],
        "quick",
        "recovery against the frame's condition number: the Gaussian draw (t = 0) moved towards its nearest "
        "tight frame (t = 1), same M",
        frames=("tight",),
        x_axis="condition_number",
        anchoring=(False,),
    ),
    # SynthSAEBench-16k's published table (L0 = 20 and 25 at width 4,096). Each setting's k is its target L0:
    # BatchTopK and Matryoshka take it as k, L1 and JumpReLU calibrate their coefficient to reach it.
    "synth-16k": Preset(
        "SynthSAEBench-16k",
        [Setting("L0=20", method={"k": 20}), Setting("L0=25", method={"k": 25})],
        SYNTH_ROWS,
        "synth-16k",
        "SynthSAEBench-16k at the published scale (GPU: 8 runs of 200 M samples)",
        frames=(),
        anchoring=(False,),
        data="synth",
    ),
    # The same comparison at the CPU scale. The published L0s are 0.8 and 1.0 times the true L0 of the width's
    # most frequent features; L0 = 10 and 12 are the same multiples at width 1,024 (that true L0 is each
    # record's `true_l0_width`; README.md, "SynthSAEBench").
    "synth": Preset(
        "SynthSAEBench-16k",
        [Setting("L0=10", method={"k": 10}), Setting("L0=12", method={"k": 12})],
        SYNTH_ROWS,
        "synth-cpu",
        "SynthSAEBench at a quarter of its size (n = 4,096, d = 192, width 1,024, 400 steps): ~10 min on 2 cores",
        frames=(),
        anchoring=(False,),
        data="synth",
    ),
}
