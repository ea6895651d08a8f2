"""`sdlkit harvest`: a Hugging Face model's activations into an activation store."""

from __future__ import annotations

import argparse

from sdlkit.cli.options import add_device, comma_list, command, device


def add_commands(sub: argparse._SubParsersAction) -> None:
    """Register harvest on the `sdlkit` sub-command parser."""
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
