"""`sdlkit theory`: the paper's claims as numerical checks (see sdlkit.paper.theory.run)."""

from __future__ import annotations

import argparse
from pathlib import Path

from sdlkit.cli.options import add_device, add_seed, command, device


def add_commands(sub: argparse._SubParsersAction) -> None:
    """Register theory on the `sdlkit` sub-command parser."""
    theory = command(
        sub,
        "theory",
        "check the paper's theorems and predictions numerically",
        "Each claim is reported as holding or not, with the numbers: DIR/results.json and DIR/report.md.",
    )
    theory.add_argument("--out", default="theory-out", help="output folder (default: theory-out)")
    theory.add_argument("--quick", action="store_true", help="small sizes: every check in minutes on a CPU")
    theory.add_argument("--only", default=None, help="comma-separated checks (default: all): " + ", ".join(_checks()))
    theory.add_argument("--overwrite", action="store_true", help="replace an existing output folder")
    add_device(theory)
    add_seed(theory, "the checks' random draws (default 0)")
    theory.set_defaults(func=cmd_theory)


def _checks() -> list[str]:
    from sdlkit.paper.theory.run import CHECK_ORDER

    return CHECK_ORDER


def cmd_theory(args: argparse.Namespace) -> int:
    from sdlkit.paper.theory.run import run_theory

    results = run_theory(
        Path(args.out),
        quick=args.quick,
        device=device(args),
        seed=args.seed or 0,
        only=args.only.split(",") if args.only else None,
        overwrite=args.overwrite,
    )
    held = sum(r["holds"] for r in results)
    print(f"{held} of {len(results)} claims hold; report: {Path(args.out) / 'report.md'}")
    return 0
