"""The `sdlkit` command: train, info, bench, theory, diagnose (here) and harvest, eval, export, import
(real model activations, in cli_activations.py).

Errors in what the user gave (a bad option, config value, checkpoint, an unusable path) print one line
on standard error and exit with status 2; a diverged run exits 3 after naming its last good checkpoint;
a fault of the machine (full disk, out of memory, I/O error) prints one line and exits 1 (see `main`).
"""

from __future__ import annotations

import argparse
import errno
import json
import sys
from collections.abc import Sequence
from pathlib import Path

from sdlkit.errors import SdlkitError, TrainingDiverged


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line on stderr and exit status 2."""

    def error(self, message: str) -> None:  # type: ignore[override]
        print(f"{self.prog}: error: {message} (see {self.prog} --help)", file=sys.stderr)
        raise SystemExit(2)


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--device", default=None, help="cpu, cuda, cuda:N or auto (default: the config's, else cpu)")
    parser.add_argument("--seed", type=int, default=None, help="seed for initialisation and training randomness")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="sdlkit", description="Sparse dictionary learning under one objective.")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    train = sub.add_parser("train", help="train a dictionary from a YAML config")
    train.add_argument("--config", required=True, help="YAML file with data, model (with method) and train sections")
    train.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config value, e.g. --set train.lr=1e-3 (repeatable)",
    )
    train.add_argument("--out", default=None, help="run folder (default: runs/<config name>)")
    train.add_argument("--resume", action="store_true", help="continue from the run folder's latest checkpoint")
    train.add_argument("--overwrite", action="store_true", help="delete the run folder first")
    train.add_argument(
        "--anchors-from",
        choices=["ground_truth", "labels"],
        default=None,
        help="anchor latents to the bench's ground truth or to a labelled store's class means (sets train.anchors)",
    )
    train.add_argument("--anchors", type=int, default=None, metavar="K", help="number of anchored latents")
    _common(train)
    train.set_defaults(func=cmd_train)

    info = sub.add_parser("info", help="describe a checkpoint")
    info.add_argument("checkpoint", help="a checkpoint folder, or a run folder (its latest checkpoint)")
    info.add_argument("--json", action="store_true", help="print the checkpoint's config as JSON")
    info.set_defaults(func=cmd_info)

    bench = sub.add_parser("bench", help="the paper's Table 1 and ablations on Linear Representation Bench data")
    bench.add_argument("--preset", default="quick", help="one of: " + ", ".join(_bench_presets()) + " (default: quick)")
    bench.add_argument("--quick", action="store_true", help="run an ablation preset at the quick scale")
    bench.add_argument(
        "--methods",
        default=None,
        help="comma-separated rows (default: the preset's; all: " + ",".join(_bench_methods()) + ")",
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
    bench.add_argument("--seeds", default=None, help="comma-separated seeds, e.g. 0,1,2 (default: --seed, else 0)")
    bench.add_argument(
        "--anchors",
        type=int,
        default=None,
        metavar="K",
        help="anchored features per run (default: 10%% of the features)",
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
        "--batch",
        choices=["auto", "always", "never"],
        default="auto",
        help="train a row's seeds and a sweep's trials as one stacked ensemble: where it is faster (auto: small "
        "models on CPU), always, or never",
    )
    _common(bench)
    bench.set_defaults(func=cmd_bench)
    theory = sub.add_parser("theory", help="check the paper's theorems and predictions numerically")
    theory.add_argument("--out", default="theory-out", help="output folder (default: theory-out)")
    theory.add_argument("--quick", action="store_true", help="small sizes: everything in a few minutes on 2 CPU cores")
    theory.add_argument("--only", default=None, help="comma-separated checks (default: all): " + ", ".join(_checks()))
    theory.add_argument("--overwrite", action="store_true", help="replace an existing output folder")
    _common(theory)
    theory.set_defaults(func=cmd_theory)

    diagnose = sub.add_parser("diagnose", help="activation-pattern census of a dictionary trained on bench data")
    diagnose.add_argument("checkpoint", help="a checkpoint folder, or a run folder (its latest checkpoint)")
    diagnose.add_argument(
        "--bench-config",
        default=None,
        help="YAML with the LRB data it was trained on (default: the one recorded in the checkpoint)",
    )
    diagnose.add_argument(
        "--min-activation",
        type=float,
        default=0.0,
        help="a latent fires for a feature when its code exceeds this (default 0, the paper's)",
    )
    diagnose.add_argument("--json", dest="json_out", default=None, metavar="FILE", help="write the census as JSON")
    _common(diagnose)
    diagnose.set_defaults(func=cmd_diagnose)

    from sdlkit.cli.harvest import add_commands

    add_commands(sub, _common)
    return parser


def _checks() -> list[str]:
    from sdlkit.paper.theory_run import CHECK_ORDER

    return CHECK_ORDER


def cmd_train(args: argparse.Namespace) -> int:
    from sdlkit.config import load_yaml, run_config
    from sdlkit.data import build_source
    from sdlkit.data.directions import has_known_directions, known_directions
    from sdlkit.io import check_output_folder, remove_owned_folder
    from sdlkit.report import format_table
    from sdlkit.train import Trainer, distributed

    overrides = list(args.set)
    if args.device is not None:
        overrides.append(f"device={args.device}")
    if args.seed is not None:
        overrides.append(f"seed={args.seed}")
    values = load_yaml(args.config)
    if args.anchors_from is not None or args.anchors is not None:
        anchors = (values.get("train") or {}).get("anchors") or {}
        if args.anchors is None and "count" not in anchors:
            raise SdlkitError(
                "--anchors-from needs the number of anchors: --anchors K (the paper: 30 of ImageNet's 1000 classes, "
                "100 of the bench's 1000 features)"
            )
        overrides += [f"train.anchors.count={args.anchors}"] if args.anchors is not None else []
        overrides += [f"train.anchors.source={args.anchors_from}"] if args.anchors_from is not None else []
    config = run_config(values, overrides)
    out = Path(args.out or Path("runs") / Path(args.config).stem)
    dist, device = distributed.from_environment(config.device)  # under torchrun: join the group
    try:
        if dist is None or dist.is_main:
            if args.overwrite:
                remove_owned_folder(out, "run")
            else:
                check_output_folder(out, "run")
        if dist is not None:
            config = config.model_copy(update={"device": device})
            distributed.barrier()
        source = build_source(config.data, config.device)
        trainer = Trainer(config, source, out, dist=dist)
        result = trainer.fit(resume=args.resume)
    finally:
        distributed.shutdown()
    if not trainer.is_main:
        return 0
    row = {
        "method": config.model.method.name,
        "steps": result.steps,
        "samples": result.samples_seen,
        **{k: result.metrics[k] for k in ("mse", "fvu", "l0", "dead_fraction")},
        "seconds": round(result.train_seconds, 1),
    }
    if has_known_directions(source):  # bench ground truth or class means: say how many were found
        from sdlkit.eval.recovery import dictionary_recovery

        truth = known_directions(source)
        anchored = trainer.anchors.indices if trainer.anchors is not None else []
        recovery = dictionary_recovery(result.model, truth.W_p, truth.W_r, exclude=anchored)
        keys = ("gt_recovery", "max_inner_product", "gt_recovery_decoder", "max_inner_product_decoder")
        row.update({k: recovery[k] for k in keys})
        if truth.kind == "labels":
            print(f"recovery is scored against the class means of {len(truth.names) - len(anchored)} classes")
    print(format_table([row], list(row)))
    print(f"checkpoint: {result.checkpoint}")
    return 0


def cmd_info(args: argparse.Namespace) -> int:
    from sdlkit.io import WEIGHTS_FILE, read_config, resolve_checkpoint, tensor_shapes

    folder = resolve_checkpoint(args.checkpoint)
    config = read_config(folder)
    shapes = tensor_shapes(folder / WEIGHTS_FILE)
    if args.json:
        print(json.dumps({**config, "tensors": shapes}, indent=2))
        return 0
    model = config["model"]
    method = dict(model["method"])
    name = method.pop("name")
    print(f"checkpoint  {folder}")
    print(f"method      {name}  " + " ".join(f"{k}={v}" for k, v in method.items() if v is not None))
    print(
        f"shape       n_in={model['n_in']} -> n_latents={model['n_latents']} -> n_out={model['n_out']}"
        + (f"  sources in={model['in_blocks']} out={model['out_blocks']}" if len(model["in_blocks"]) > 1 else "")
    )
    print(f"constraints bias={model['bias']} unit_norm_decoder={model['unit_norm_decoder']} dtype={model['dtype']}")
    if "step" in config:
        run = config.get("run", {})
        batch = run.get("train", {}).get("batch_size", 0)
        print(
            f"training    step {config['step']} of {run.get('train', {}).get('steps')} "
            f"({config['step'] * batch:,} samples), data: {_data_name(run.get('data', {}))}"
        )
    print("tensors     " + ", ".join(f"{k} {v}" for k, v in shapes.items()))
    return 0


def _data_name(data: dict) -> str:
    if "store" in data:
        modules = data.get("inputs") or ["all modules"]
        targets = f" -> {', '.join(data['targets'])}" if data.get("targets") else ""
        return f"store {data['store']} ({', '.join(modules)}{targets})"
    return f"{data.get('mode', '?')} LRB"


def _bench_methods() -> list[str]:
    from sdlkit.paper.bench import ALL_ROWS

    return ALL_ROWS


def _bench_presets() -> list[str]:
    from sdlkit.paper.bench import BENCH_PRESETS

    return list(BENCH_PRESETS)


def _int_list(flag: str, text: str) -> list[int]:
    try:
        return [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise SdlkitError(f"{flag} {text!r} is not a comma-separated list of integers, e.g. 0,1,2") from None


def _names(flag: str, text: str) -> list[str]:
    names = [part.strip() for part in text.split(",") if part.strip()]
    if not names:
        raise SdlkitError(f"{flag} is empty: name at least one, e.g. {flag} topk,relu")
    return names


def cmd_bench(args: argparse.Namespace) -> int:
    from sdlkit.paper.bench import BenchSpec, run_bench

    spec = BenchSpec(
        preset=args.preset,
        quick=args.quick,
        rows=_names("--methods", args.methods) if args.methods is not None else None,
        frames=_names("--frames", args.frames) if args.frames is not None else None,
        seeds=_int_list("--seeds", args.seeds) if args.seeds is not None else [args.seed or 0],
        anchors=args.anchors,
        anchor_weight=args.anchor_weight,
        anchor_mode=args.anchor_mode,
        tau=args.tau,
        steps=args.steps,
        sweep=args.sweep,
        device=_device(args),
        overrides=args.set,
        references=not args.no_references,
    )
    run_bench(
        spec,
        Path(args.out),
        resume=args.resume,
        overwrite=args.overwrite,
        progress=not args.no_progress,
        batched={"auto": None, "always": True, "never": False}[args.batch],
    )
    return 0


def _device(args: argparse.Namespace) -> str:
    from sdlkit.config import resolve_device

    try:
        return resolve_device(args.device or "cpu")
    except ValueError as err:
        raise SdlkitError(str(err)) from None


def cmd_theory(args: argparse.Namespace) -> int:
    from sdlkit.paper.theory_run import run_theory

    results = run_theory(
        Path(args.out),
        quick=args.quick,
        device=_device(args),
        seed=args.seed or 0,
        only=args.only.split(",") if args.only else None,
        overwrite=args.overwrite,
    )
    held = sum(r["holds"] for r in results)
    print(f"{held} of {len(results)} claims hold; report: {Path(args.out) / 'report.md'}")
    return 0


def cmd_diagnose(args: argparse.Namespace) -> int:
    import sdlkit
    from sdlkit.data.lrb.source import LRBSource
    from sdlkit.io import write_json_atomically
    from sdlkit.paper.diagnose import bench_data_config, census, census_table, to_json

    device = _device(args)
    model = sdlkit.load(args.checkpoint, device=device)
    source = LRBSource(bench_data_config(Path(args.checkpoint), args.bench_config), device=device)
    result = census(model, source, args.min_activation)
    print(census_table(result))
    for feature in result["absorbed"][:20]:
        print(f"feature {feature} is absorbed into latents {result['absorbed_into'].get(feature, [])}")
    if len(result["absorbed"]) > 20:
        print(f"… and {len(result['absorbed']) - 20} more absorbed features (see --json)")
    if args.json_out:
        write_json_atomically(Path(args.json_out), to_json(result))
        print(f"census: {args.json_out}")
    return 0


ENVIRONMENT_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EIO, errno.ENOMEM, errno.EMFILE, errno.ENFILE}
"""OSErrors that are faults of the machine (exit 1), not of the path the user gave (exit 2)."""


def describe_os_error(err: OSError) -> str:
    """One line: the path, the cause, and for a full disk what to do."""
    where = f"{err.filename}: " if err.filename else ""
    cause = err.strerror or str(err) or type(err).__name__
    hint = ""
    if err.errno in (errno.ENOSPC, errno.EDQUOT):
        hint = " (free some space and run the command again; with --resume where the command has it)"
    elif err.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        hint = " (choose a folder you can write to)"
    return f"{where}{cause}{hint}"


def _out_of_memory() -> tuple[type[BaseException], ...]:
    import torch

    return (MemoryError, torch.OutOfMemoryError)


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command. Exit status: 0 done; 2 a mistake in what was given (one line on stderr); 3 a
    diverged run (naming its last good checkpoint); 1 a fault of the machine (full disk, out of memory,
    I/O error, no network); 130 interrupted."""
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as exit_:  # usage errors (status 2) and --help (status 0)
        return int(exit_.code or 0)
    try:
        if getattr(args, "overwrite", False) and getattr(args, "resume", False):
            raise SdlkitError("--overwrite and --resume contradict each other: choose one")
        return args.func(args)
    except TrainingDiverged as err:
        print(f"sdlkit: error: {err}", file=sys.stderr)
        return 3
    except SdlkitError as err:
        print(f"sdlkit: error: {err}", file=sys.stderr)
        return 2
    except OSError as err:
        print(f"sdlkit: error: {describe_os_error(err)}", file=sys.stderr)
        environment = err.errno in ENVIRONMENT_ERRNOS or isinstance(err, ConnectionError | TimeoutError)
        return 1 if environment else 2
    except _out_of_memory() as err:
        first = (str(err).strip().splitlines() or [""])[0]
        print(
            f"sdlkit: error: out of memory ({first or type(err).__name__}): lower the batch or model size",
            file=sys.stderr,
        )
        return 1
    except KeyboardInterrupt:
        print("sdlkit: interrupted", file=sys.stderr)
        return 130
