"""The `sdlkit` commands for real model activations: harvest, eval, export, import."""

from __future__ import annotations

import argparse

from sdlkit.cli.options import add_device, add_json, comma_list, command, device, print_json


def add_commands(sub: argparse._SubParsersAction) -> None:
    """Register harvest, eval, export and import on the `sdlkit` sub-command parser."""
    _add_harvest(sub)
    _add_eval(sub)
    _add_exchange(sub)


def _add_harvest(sub: argparse._SubParsersAction) -> None:
    from sdlkit.harvest.models import DTYPES

    harvest = command(
        sub,
        "harvest",
        "record a Hugging Face model's activations into an activation store",
        "Text (.txt, .jsonl, .parquet) or an image folder in; a resumable store of safetensors shards out.\n"
        "--list-modules prints the names --modules accepts.",
    )
    harvest.add_argument(
        "--model",
        action="append",
        required=True,
        metavar="NAME_OR_PATH",
        help="hub name or local folder (repeat for a crosscoder over two models; modules then start with 0: / 1:)",
    )
    harvest.add_argument(
        "--modules",
        default=None,
        help="comma-separated module names: NAME records its output, NAME:input its input; clip:pooled and "
        "clip:projected name CLIP's image embeddings",
    )
    harvest.add_argument(
        "--data", default=None, help=".txt, .jsonl or .parquet file, or an image folder (class subfolders)"
    )
    harvest.add_argument("--out", default=None, help="store folder to write")
    harvest.add_argument("--list-modules", action="store_true", help="print the model's module names and exit")
    harvest.add_argument("--context-size", type=int, default=128, help="tokens per text sample (default 128)")
    harvest.add_argument("--batch-size", type=int, default=32, help="samples per forward pass (default 32)")
    harvest.add_argument(
        "--sort-window",
        type=int,
        default=8,
        help="text: read this many batches at a time and run them sorted by length, so passes hold similar-length "
        "texts (padding falls ~4x on mixed lengths); 1 keeps file order (default 8)",
    )
    harvest.add_argument("--max-rows", type=int, default=None, help="stop once this many rows are stored")
    harvest.add_argument("--max-samples", type=int, default=None, help="use at most this many dataset samples")
    harvest.add_argument("--text-column", default="text", help="text column of .jsonl/.parquet data (default text)")
    harvest.add_argument("--label-column", default=None, help="column with a label per sample (for class-mean anchors)")
    harvest.add_argument(
        "--shuffle-seed",
        type=int,
        default=0,
        help="visit the samples in this seeded random order (default 0), so that a class-sorted image folder "
        "still gives a store whose held-out tail and shuffle windows mix classes",
    )
    harvest.add_argument("--no-shuffle", action="store_true", help="visit the samples in file order")
    harvest.add_argument("--include-special", action="store_true", help="also store BOS/EOS/other special tokens")
    harvest.add_argument("--model-dtype", default="float32", choices=list(DTYPES), help="(default float32)")
    harvest.add_argument("--store-dtype", default="float32", choices=list(DTYPES), help="(default float32)")
    harvest.add_argument("--shard-rows", type=int, default=65536, help="rows per shard file (default 65536)")
    harvest.add_argument("--trust-remote-code", action="store_true", help="allow the model's own code (off by default)")
    harvest.add_argument("--resume", action="store_true", help="continue an interrupted harvest into --out")
    harvest.add_argument("--overwrite", action="store_true", help="replace an existing store at --out")
    harvest.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_device(harvest, "auto")
    harvest.set_defaults(func=cmd_harvest)


def _add_eval(sub: argparse._SubParsersAction) -> None:
    evaluate = command(
        sub,
        "eval",
        "reconstruction, splice and known-direction metrics of a checkpoint on activations",
        "FVU, MSE, L0, never-fired and dense latents on an activation store (--store) or an array file (--data):\n"
        "the run's held-out rows when it was trained on them, else every row. --splice: a language model's CE\n"
        "loss recovered and KL with the dictionary spliced in. --directions: M_GT (gt_recovery) and M_IP\n"
        "(max_inner_product) of encoder rows against the directions and of decoder columns against the\n"
        "decoder's directions (_decoder), by best match and one-to-one (matched_). never_fired_fraction: latents\n"
        "that fired on none of the scored rows; dead_fraction: the training run's, at this checkpoint.",
    )
    evaluate.add_argument("checkpoint", help="a checkpoint folder, or a run folder (its latest checkpoint)")
    rows = evaluate.add_mutually_exclusive_group(required=True)
    rows.add_argument("--store", default=None, help="the activation store to evaluate on")
    rows.add_argument("--data", default=None, help="a .npy, .safetensors or .pt file of x_p rows to evaluate on")
    evaluate.add_argument("--key", default=None, help="--data's tensor, in a .safetensors/.pt file holding several")
    evaluate.add_argument("--targets-data", default=None, help="x_r rows for a transcoder (default: x_r = --data)")
    evaluate.add_argument("--targets-key", default=None, help="--targets-data's tensor, as --key")
    evaluate.add_argument("--inputs", default=None, help="store modules feeding the encoder (default: as trained)")
    evaluate.add_argument(
        "--targets", default=None, help="store modules to reconstruct (default: as trained, or --inputs)"
    )
    evaluate.add_argument("--all-rows", action="store_true", help="every row, not only the run's held-out rows")
    evaluate.add_argument("--max-rows", type=int, default=None, help="evaluate at most this many rows")
    evaluate.add_argument("--batch-size", type=int, default=4096, help="rows per forward pass (default 4096)")
    evaluate.add_argument("--dense-threshold", type=float, default=0.1, help="dense latent: fires on more than this")
    evaluate.add_argument(
        "--splice", action="store_true", help="language models: CE loss recovered and KL with the dictionary spliced in"
    )
    evaluate.add_argument("--splice-samples", type=int, default=64, help="dataset samples for --splice (default 64)")
    _add_directions(evaluate)
    add_json(evaluate, "every metric")
    add_device(evaluate)
    evaluate.set_defaults(func=cmd_eval)


def _add_directions(evaluate: argparse.ArgumentParser) -> None:
    from sdlkit.eval.directions import LAYOUTS

    evaluate.add_argument(
        "--directions",
        default=None,
        help="known directions W_p (.npy, .safetensors, .pt): [n_directions, n_in] or [n_in, n_directions]",
    )
    evaluate.add_argument("--directions-key", default=None, help="--directions' tensor, as --key")
    evaluate.add_argument(
        "--directions-layout",
        default=None,
        choices=list(LAYOUTS),
        help="a direction per row or per column (default: from the shape; a square matrix is read as rows)",
    )
    evaluate.add_argument(
        "--decoder-directions", default=None, help="W_r, width n_out (needed when n_out != n_in; default W_p)"
    )
    evaluate.add_argument("--decoder-directions-key", default=None, help="--decoder-directions' tensor, as --key")
    evaluate.add_argument("--tau", type=float, default=0.95, help="recovered: |cos| above this (default 0.95)")
    evaluate.add_argument(
        "--no-matched",
        action="store_true",
        help="skip the one-to-one matching (its memory grows as n_directions squared)",
    )


def _add_exchange(sub: argparse._SubParsersAction) -> None:
    from sdlkit.interop import FORMATS

    export = command(
        sub, "export", "write a checkpoint in SAELens or sparsify format", "Formats: " + ", ".join(FORMATS) + "."
    )
    export.add_argument("checkpoint", help="a checkpoint folder, or a run folder (its latest checkpoint)")
    export.add_argument("--format", required=True, choices=list(FORMATS), dest="fmt")
    export.add_argument("--out", required=True, help="folder to write")
    export.add_argument("--hook-name", default=None, help="SAELens hook_name to record (e.g. blocks.6.hook_resid_post)")
    export.add_argument("--model-name", default=None, help="SAELens model_name to record")
    export.add_argument("--overwrite", action="store_true", help="replace a non-empty --out")
    export.set_defaults(func=cmd_export)

    imp = command(
        sub,
        "import",
        "turn a SAELens or sparsify folder into an sdlkit checkpoint",
        "The checkpoint loads with sdlkit.load and scores with sdlkit eval / diagnose.",
    )
    imp.add_argument("folder", help="the SAELens folder (cfg.json + sae_weights.safetensors) or sparsify hookpoint")
    imp.add_argument("--format", required=True, choices=list(FORMATS), dest="fmt")
    imp.add_argument("--out", required=True, help="checkpoint folder to write")
    imp.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    imp.set_defaults(func=cmd_import)


def cmd_harvest(args: argparse.Namespace) -> int:
    from sdlkit.errors import ConfigError
    from sdlkit.harvest import harvest, load_model, module_table

    if args.list_modules:
        for name in args.model:
            loaded = load_model(name, device="cpu", trust_remote_code=args.trust_remote_code)
            print(f"# {name}\n{module_table(loaded.model)}")
        return 0
    missing = [
        flag for flag, value in (("--modules", args.modules), ("--data", args.data), ("--out", args.out)) if not value
    ]
    if missing:
        raise ConfigError(f"harvest needs {', '.join(missing)} (or --list-modules to see the module names)")
    manifest = harvest(
        args.model,
        comma_list(args.modules),
        args.data,
        args.out,
        context_size=args.context_size,
        batch_size=args.batch_size,
        sort_window=args.sort_window,
        max_rows=args.max_rows,
        max_samples=args.max_samples,
        device=device(args),
        model_dtype=args.model_dtype,
        store_dtype=args.store_dtype,
        include_special=args.include_special,
        text_column=args.text_column,
        label_column=args.label_column,
        shuffle_seed=None if args.no_shuffle else args.shuffle_seed,
        resume=args.resume,
        overwrite=args.overwrite,
        trust_remote_code=args.trust_remote_code,
        shard_rows=args.shard_rows,
        progress=not args.no_progress,
    )
    dims = ", ".join(f"{name} [{spec.dim}]" for name, spec in manifest.modules.items())
    skipped = {k: v for k, v in manifest.progress.skipped.items() if v}
    print(f"store {args.out}: {manifest.rows:,} rows of {dims} from {manifest.progress.next_sample:,} samples")
    if manifest.labels:
        more = " …" if len(manifest.labels) > 10 else ""
        print(f"labels: {len(manifest.labels)} classes ({', '.join(manifest.labels[:10])}{more})")
    if skipped:
        print("skipped: " + ", ".join(f"{v} {k.replace('_', ' ')}" for k, v in skipped.items()))
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    from sdlkit.errors import ConfigError
    from sdlkit.eval.directions import DirectionFiles
    from sdlkit.eval.evaluate import EvalOptions, evaluate_checkpoint

    directions = None
    if args.directions is not None:
        directions = DirectionFiles(
            args.directions,
            args.directions_key,
            args.decoder_directions,
            args.decoder_directions_key,
            args.directions_layout,
        )
    elif args.decoder_directions is not None:
        raise ConfigError("--decoder-directions needs --directions (the encoder's directions) too")
    options = EvalOptions(
        inputs=comma_list(args.inputs),
        targets=comma_list(args.targets),
        all_rows=args.all_rows,
        max_rows=args.max_rows,
        batch_size=args.batch_size,
        device=device(args),
        dense_threshold=args.dense_threshold,
        splice=args.splice,
        splice_samples=args.splice_samples,
        data=args.data,
        key=args.key,
        targets_data=args.targets_data,
        targets_key=args.targets_key,
        directions=directions,
        tau=args.tau,
        matched=not args.no_matched,
    )
    report = evaluate_checkpoint(args.checkpoint, args.store, options)
    if args.json:
        print_json(report)
        return 0
    _print_eval(report)
    return 0


def _print_eval(report: dict) -> None:
    """The eval report as tables: reconstruction (and splice), then recovery of the known directions."""
    from sdlkit.report import format_table

    print(f"{report['checkpoint']} on {report.get('store') or report['data']}: {report['rows']}")
    keys = ["fvu", "mse", "l0", "never_fired_fraction", "dead_fraction", "dense_fraction", "n_samples"]
    keys += [k for k in ("ce_loss_recovered", "kl_div", "ce_clean", "ce_spliced", "ce_zero") if k in report]
    print(format_table([{k: report[k] for k in keys}], keys))
    if "directions" not in report:
        return
    print(
        f"\n{report['n_directions']} known directions from {report['directions']} ({report['directions_layout']}); "
        f"recovered: |cos| > tau = {report['tau']}"
    )
    rows = []
    for side, suffix in (("encoder rows", ""), ("decoder columns", "_decoder")):
        row = {"latents": side}
        for prefix in ("", "matched_"):
            for name in ("gt_recovery", "max_inner_product"):
                if f"{prefix}{name}{suffix}" in report:
                    row[f"{prefix}{name}"] = report[f"{prefix}{name}{suffix}"]
        rows.append(row)
    print(format_table(rows, list(rows[0])))


def cmd_export(args: argparse.Namespace) -> int:
    from sdlkit.interop import export_checkpoint

    out = export_checkpoint(
        args.checkpoint,
        args.out,
        args.fmt,
        hook_name=args.hook_name,
        model_name=args.model_name,
        overwrite=args.overwrite,
    )
    print(f"{args.fmt} files: {out}")
    return 0


def cmd_import(args: argparse.Namespace) -> int:
    from sdlkit.interop import import_checkpoint

    out = import_checkpoint(args.folder, args.out, args.fmt, overwrite=args.overwrite)
    print(f"checkpoint: {out} (load it with sdlkit.load, score it with sdlkit eval / diagnose)")
    return 0
