"""`sdlkit bench`: the paper's tables on LRB data, and SynthSAEBench (see sdlkit.paper.bench)."""

from __future__ import annotations

import argparse
from pathlib import Path

from sdlkit.cli.options import add_device, command, device, int_list, names

STACK = {"auto": None, "always": True, "never": False}
"""--stack: train a row's seeds and a sweep's trials as one stacked ensemble (auto: where it is faster)."""


def add_commands(sub: argparse._SubParsersAction) -> None:
    """Register bench on the `sdlkit` sub-command parser."""
    from sdlkit.paper.bench import ALL_ROWS, BENCH_PRESETS

    bench = command(
        sub,
        "bench",
        "the paper's Table 1 and ablations on Linear Representation Bench data, and SynthSAEBench",
        "Writes DIR/results.json (one record per run), DIR/report.md beside the paper's numbers, and plots.",
    )
    bench.add_argument("--preset", default="quick", choices=list(BENCH_PRESETS), help="(default: quick)")
    bench.add_argument("--quick", action="store_true", help="run an ablation preset at the quick scale")
    bench.add_argument(
        "--rows",
        "--methods",
        dest="rows",
        default=None,
        help="comma-separated bench rows: a method or a method variant such as topk-auxk (default: the preset's; "
        "all: " + ",".join(ALL_ROWS) + "); --methods is the older name",
    )
    bench.add_argument(
        "--frames",
        default=None,
        help="comma-separated LRB frames: gaussian (App. C as written), tight (its nearest tight frame) "
        "(default: the preset's; both for the paper's tables)",
    )
    bench.add_argument(
        "--no-references",
        action="store_true",
        help="skip the reference rows (chance, least-squares oracle, scikit-learn dictionary learning)",
    )
    bench.add_argument("--seeds", default="0", help="comma-separated seeds, e.g. 0,1,2 (default: 0)")
    bench.add_argument(
        "--anchors", type=int, default=None, metavar="K", help="anchored features per run (default: 10%% of them)"
    )
    bench.add_argument("--anchor-weight", type=float, default=0.1, help="λ_anchor (default: 0.1, as the paper)")
    bench.add_argument("--anchor-mode", choices=["soft", "hard"], default="soft", help="soft penalty or fixed rows")
    bench.add_argument("--tau", type=float, default=0.95, help="recovery threshold τ in (0, 1] (default: 0.95)")
    bench.add_argument("--steps", type=int, default=None, help="training steps per run (default: the scale's)")
    bench.add_argument("--sweep", action="store_true", help="search the sparsity coefficient of relu/jumprelu/gated")
    bench.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override every run's config, e.g. --set model.n_latents=2048 (repeatable)",
    )
    bench.add_argument("--out", default="bench-out", help="output folder (default: bench-out)")
    bench.add_argument("--resume", action="store_true", help="finish a bench in --out, skipping finished runs")
    bench.add_argument("--overwrite", action="store_true", help="replace an existing output folder")
    bench.add_argument("--no-progress", action="store_true", help="no progress bars")
    bench.add_argument(
        "--stack",
        choices=list(STACK),
        default="auto",
        help="train a row's seeds and a sweep's trials as one stacked ensemble: where it is faster (auto: small "
        "models on CPU), always, or never",
    )
    add_device(bench)
    bench.set_defaults(func=cmd_bench)


def cmd_bench(args: argparse.Namespace) -> int:
    from sdlkit.paper.bench import BENCH_PRESETS, BenchSpec, run_bench, run_synth_bench

    spec = BenchSpec(
        preset=args.preset,
        quick=args.quick,
        rows=names("--rows", args.rows) if args.rows is not None else None,
        frames=names("--frames", args.frames) if args.frames is not None else None,
        seeds=int_list("--seeds", args.seeds),
        anchors=args.anchors,
        anchor_weight=args.anchor_weight,
        anchor_mode=args.anchor_mode,
        tau=args.tau,
        steps=args.steps,
        sweep=args.sweep,
        device=device(args),
        overrides=args.set,
        references=not args.no_references,
    )
    progress, stacked = not args.no_progress, STACK[args.stack]
    run = run_synth_bench if BENCH_PRESETS[args.preset].data == "synth" else run_bench
    run(spec, Path(args.out), resume=args.resume, overwrite=args.overwrite, progress=progress, stack=stacked)
    return 0
