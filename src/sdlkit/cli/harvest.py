"""The `sdlkit` commands for real model activations: harvest, eval, export, import.

Kept apart from cli.py (training, bench, theory) so each file stays one screenful of options; the same
error convention holds: bad input prints one line and exits 2.
"""

from __future__ import annotations

import argparse
from pathlib import Path


def _list(text: str | None) -> list[str] | None:
    return [item.strip() for item in text.split(",") if item.strip()] if text else None


def add_commands(sub: argparse._SubParsersAction, common) -> None:
    """Register harvest, eval, export and import on the `sdlkit` sub-command parser."""
    harvest = sub.add_parser("harvest", help="record a Hugging Face model's activations into an activation store")
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
    harvest.add_argument("--model-dtype", default="float32", help="float32 | bfloat16 | float16 (default float32)")
    harvest.add_argument("--store-dtype", default="float32", help="float32 | bfloat16 | float16 (default float32)")
    harvest.add_argument("--shard-rows", type=int, default=65536, help="rows per shard file (default 65536)")
    harvest.add_argument("--trust-remote-code", action="store_true", help="allow the model's own code (off by default)")
    harvest.add_argument("--resume", action="store_true", help="continue an interrupted harvest into --out")
    harvest.add_argument("--overwrite", action="store_true", help="replace an existing store at --out")
    harvest.add_argument("--no-progress", action="store_true", help="no progress bar")
    harvest.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto (default auto)")
    harvest.set_defaults(func=cmd_harvest)

    evaluate = sub.add_parser("eval", help="reconstruction (and splice) metrics of a checkpoint on an activation store")
    evaluate.add_argument("checkpoint", help="a checkpoint folder, or a run folder (its latest checkpoint)")
    evaluate.add_argument("--store", required=True, help="the activation store to evaluate on")
    evaluate.add_argument("--inputs", default=None, help="modules feeding the encoder (default: as trained)")
    evaluate.add_argument("--targets", default=None, help="modules to reconstruct (default: as trained, or --inputs)")
    evaluate.add_argument("--all-rows", action="store_true", help="every row, not only the run's held-out rows")
    evaluate.add_argument("--max-rows", type=int, default=None, help="evaluate at most this many rows")
    evaluate.add_argument("--batch-size", type=int, default=4096, help="rows per forward pass (default 4096)")
    evaluate.add_argument("--dense-threshold", type=float, default=0.1, help="dense latent: fires on more than this")
    evaluate.add_argument(
        "--splice", action="store_true", help="language models: CE loss recovered and KL with the dictionary spliced in"
    )
    evaluate.add_argument("--splice-samples", type=int, default=64, help="dataset samples for --splice (default 64)")
    evaluate.add_argument(
        "--json", dest="json_out", default=None, metavar="FILE", help="also write the metrics as JSON"
    )
    common(evaluate)
    evaluate.set_defaults(func=cmd_eval)

    export = sub.add_parser("export", help="write a checkpoint in SAELens or sparsify format")
    export.add_argument("checkpoint", help="a checkpoint folder, or a run folder (its latest checkpoint)")
    export.add_argument("--format", required=True, choices=["saelens", "sparsify"], dest="fmt")
    export.add_argument("--out", required=True, help="folder to write")
    export.add_argument("--hook-name", default=None, help="SAELens hook_name to record (e.g. blocks.6.hook_resid_post)")
    export.add_argument("--model-name", default=None, help="SAELens model_name to record")
    export.add_argument("--overwrite", action="store_true", help="replace a non-empty --out")
    export.set_defaults(func=cmd_export)

    imp = sub.add_parser("import", help="turn a SAELens or sparsify folder into an sdlkit checkpoint")
    imp.add_argument("folder", help="the SAELens folder (cfg.json + sae_weights.safetensors) or sparsify hookpoint")
    imp.add_argument("--format", required=True, choices=["saelens", "sparsify"], dest="fmt")
    imp.add_argument("--out", required=True, help="checkpoint folder to write")
    imp.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    imp.set_defaults(func=cmd_import)

    from sdlkit.cli.browse import add_browse_command

    add_browse_command(sub, common)


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
        _list(args.modules),
        args.data,
        args.out,
        context_size=args.context_size,
        batch_size=args.batch_size,
        sort_window=args.sort_window,
        max_rows=args.max_rows,
        max_samples=args.max_samples,
        device=args.device,
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
    from sdlkit.eval.evaluate import evaluate_checkpoint
    from sdlkit.io import write_json_atomically
    from sdlkit.report import format_table

    report = evaluate_checkpoint(
        args.checkpoint,
        args.store,
        inputs=_list(args.inputs),
        targets=_list(args.targets),
        all_rows=args.all_rows,
        max_rows=args.max_rows,
        batch_size=args.batch_size,
        device=args.device or "cpu",  # resolved there: auto -> cuda or cpu
        dense_threshold=args.dense_threshold,
        splice=args.splice,
        splice_samples=args.splice_samples,
    )
    print(f"{report['checkpoint']} on {report['store']}: {report['rows']}")
    keys = ["fvu", "mse", "l0", "never_fired_fraction", "dense_fraction", "n_samples"]
    keys += [k for k in ("ce_loss_recovered", "kl_div", "ce_clean", "ce_spliced", "ce_zero") if k in report]
    print(format_table([{k: report[k] for k in keys}], keys))
    if args.json_out:
        write_json_atomically(Path(args.json_out), report)
        print(f"metrics: {args.json_out}")
    return 0


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
