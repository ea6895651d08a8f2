"""`sdlkit browse RUN --store STORE --out DIR`: the feature browser (a static site, see sdlkit.browse)."""

from __future__ import annotations

import argparse

from sdlkit.cli.options import add_device, command, device


def add_commands(sub: argparse._SubParsersAction) -> None:
    """Register `browse` on the `sdlkit` sub-command parser."""
    browse = command(
        sub,
        "browse",
        "write a static HTML feature browser of a dictionary's latents on a store",
        "An index of latents (sortable, searchable) and a page per latent with its top contexts and histogram;\n"
        "it opens from the file system, with no server.",
    )
    browse.add_argument("run", help="a run folder (its latest checkpoint) or a checkpoint folder")
    browse.add_argument("--store", required=True, help="the activation store to scan (rows with token provenance)")
    browse.add_argument("--out", required=True, help="folder to write (open DIR/index.html in a browser)")
    browse.add_argument("--tokenizer", default=None, help="model folder or name for token text (default: the store's)")
    browse.add_argument(
        "--data",
        default=None,
        help="the text file the store was harvested from, for the text of rows that stand for a whole sample "
        "(default: the path the store recorded, if it still holds the same data)",
    )
    browse.add_argument("--top-k", type=int, default=20, help="top activating contexts per latent (default 20)")
    browse.add_argument("--window", type=int, default=10, help="context tokens either side (default 10)")
    browse.add_argument("--bins", type=int, default=32, help="histogram bins (default 32)")
    browse.add_argument("--batch-size", type=int, default=2048, help="rows encoded at a time (default 2048)")
    browse.add_argument("--max-rows", type=int, default=None, help="scan only the store's first rows")
    browse.add_argument("--overwrite", action="store_true", help="replace a browser folder already at --out")
    browse.add_argument("--no-progress", action="store_true", help="no progress bars")
    add_device(browse)
    browse.set_defaults(func=cmd_browse)


def cmd_browse(args: argparse.Namespace) -> int:
    from pathlib import Path

    from sdlkit.browse import ScanOptions, build_browser
    from sdlkit.errors import ConfigError

    if args.max_rows is not None and args.max_rows < 1:
        raise ConfigError(f"--max-rows = {args.max_rows} must be >= 1")
    options = ScanOptions(
        top_k=args.top_k,
        window=args.window,
        bins=args.bins,
        batch_size=args.batch_size,
        max_rows=args.max_rows,
        progress=not args.no_progress,
    )
    summary = build_browser(
        args.run,
        args.store,
        args.out,
        tokenizer=args.tokenizer,
        data=args.data,
        options=options,
        device=device(args),
        overwrite=args.overwrite,
    )
    index = Path(summary["out"]).resolve() / "index.html"
    print(f"browser: {summary['pages']:,} of {summary['latents']:,} latents fired on {summary['rows']:,} rows")
    print(f"open file://{index}")
    return 0
