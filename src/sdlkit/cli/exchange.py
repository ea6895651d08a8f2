"""`sdlkit export` and `sdlkit import`: a checkpoint to and from SAELens or sparsify files (see sdlkit.interop)."""

from __future__ import annotations

import argparse

from sdlkit.cli.options import command


def add_commands(sub: argparse._SubParsersAction) -> None:
    """Register export and import on the `sdlkit` sub-command parser."""
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
