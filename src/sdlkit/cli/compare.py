"""`sdlkit compare` (cross-seed consistency, PW-MCC, of trained dictionaries) and `sdlkit anchors discover`
(anchors from the directions independent runs agree on)."""

from __future__ import annotations

import argparse
from pathlib import Path

from sdlkit.cli.options import add_device, add_json, command, device, print_json
from sdlkit.errors import SdlkitError

RUNS_HELP = "checkpoint folders, or run folders (their latest checkpoint), trained on the same data"


def add_commands(sub: argparse._SubParsersAction) -> None:
    compare = command(
        sub,
        "compare",
        "cross-seed consistency of dictionaries (PW-MCC)",
        "PW-MCC (Song, Muhamed et al. 2025): decoder columns matched one-to-one (Hungarian) by |cos|, averaged.\n"
        "1 = the runs wrote the same directions. Prints the matrix over every pair and, per run, each latent's\n"
        "matched |cos| averaged over the other runs (--json: every latent's score and partner).",
    )
    compare.add_argument("runs", nargs="+", metavar="RUN", help=RUNS_HELP)
    _matching_options(compare)
    add_device(compare)
    add_json(compare, "the matrix and every latent's scores")
    compare.set_defaults(func=cmd_compare)

    anchors = command(sub, "anchors", "anchors without labels (discover)")
    anchors_sub = anchors.add_subparsers(dest="anchors_command", required=True, parser_class=type(anchors))
    discover = command(
        anchors_sub,
        "discover",
        "write the directions independent runs agree on as an anchors file",
        "A latent is kept when its one-to-one matches (decoder |cos|) reach --threshold in at least --min-runs\n"
        "runs (itself included); its anchor is the sign-aligned mean of those latents' decoder columns (B) and\n"
        "encoder rows (A). Most consistent first; use them with `sdlkit train --anchors-from FILE`.",
    )
    discover.add_argument("runs", nargs="+", metavar="RUN", help=RUNS_HELP)
    discover.add_argument("--out", required=True, help="the anchors file to write (.safetensors)")
    discover.add_argument("--min-runs", type=int, default=None, metavar="M", help="runs that must agree (default all)")
    discover.add_argument(
        "--count", type=int, default=None, metavar="K", help="keep the K most consistent (default all)"
    )
    discover.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    _matching_options(discover)
    add_device(discover)
    add_json(discover, "the anchors' support and agreement")
    discover.set_defaults(func=cmd_discover)


def _matching_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--threshold", type=float, default=0.9, help="|cos| at which two matched latents agree (default 0.9)"
    )
    parser.add_argument(
        "--candidates",
        type=int,
        default=None,
        metavar="K",
        help="match each latent among its K most similar only: a lower bound in bounded memory, for large "
        "dictionaries (default exact, which is refused above 16,384 x 16,384 latents)",
    )


def _load_runs(paths: list[str], where: str) -> list:
    """The dictionaries at `paths` (each run folder's latest checkpoint), which must write one dimension."""
    from sdlkit.io import load

    if len(paths) < 2:
        raise SdlkitError(f"give at least two runs to compare, got {len(paths)}")
    models = [load(path, where) for path in paths]
    widths = {model.n_out for model in models}
    if len(widths) > 1:
        raise SdlkitError(f"the runs write different dimensions ({sorted(widths)}): compare runs on the same data")
    return models


def cmd_compare(args: argparse.Namespace) -> int:
    from sdlkit.eval.consistency import consistency
    from sdlkit.report import format_table

    models = _load_runs(args.runs, device(args))
    result = consistency([m.W_D for m in models], args.candidates)
    consistent = [(scores >= args.threshold).double().mean().item() for scores in result.latent_scores]
    if args.json:
        pairs = [
            {"a": i, "b": j, "pw_mcc": m.pw_mcc, "scores": m.scores.tolist(), "partner": m.partner.tolist()}
            for (i, j), m in result.matches.items()
            if i < j
        ]
        latents = [
            {"run": run, "scores": scores.tolist(), "consistent_fraction": share}
            for run, scores, share in zip(args.runs, result.latent_scores, consistent, strict=True)
        ]
        print_json(
            {
                "runs": args.runs,
                "threshold": args.threshold,
                "matrix": result.matrix.tolist(),
                "mean_pw_mcc": result.mean(),
            }
            | {"latents": latents, "pairs": pairs}
        )
        return 0
    labels = [f"#{i + 1}" for i in range(len(models))]
    rows = [
        {"": label, **dict(zip(labels, (f"{v:.3f}" for v in row), strict=True))}
        for label, row in zip(labels, result.matrix.tolist(), strict=True)
    ]
    print(format_table(rows, ["", *labels]))
    print(f"mean PW-MCC over {len(models) * (len(models) - 1) // 2} pairs: {result.mean():.3f}")
    for label, run, model, scores, share in zip(
        labels, args.runs, models, result.latent_scores, consistent, strict=True
    ):
        print(
            f"{label} {run}: {model.n_latents} latents, mean matched |cos| {scores.mean().item():.3f}, "
            f"{share:.1%} at or above {args.threshold:g}"
        )
    return 0


def cmd_discover(args: argparse.Namespace) -> int:
    from sdlkit import __version__
    from sdlkit.train.anchoring import save_anchors
    from sdlkit.train.discovery import discover_anchors

    out = Path(args.out)
    if out.is_dir():
        raise SdlkitError(
            f"--out {out} is a folder: give the anchors file to write, e.g. {out / 'anchors.safetensors'}"
        )
    if out.exists() and not args.overwrite:
        raise SdlkitError(f"--out {out} exists: pass --overwrite to replace it, or choose another file")
    models = _load_runs(args.runs, device(args))
    found = discover_anchors(
        [m.W_E for m in models], [m.W_D for m in models], args.threshold, args.min_runs, args.count, args.candidates
    )
    if found.anchors.k == 0:
        raise SdlkitError(
            f"no direction is shared by {args.min_runs or len(models)} of the {len(models)} runs at |cos| >= "
            f"{args.threshold:g}: lower --threshold or --min-runs, or train the runs longer"
        )
    rule = {"threshold": args.threshold, "min_runs": args.min_runs or len(models), "count": args.count}
    provenance = {
        "runs": [str(Path(run).resolve()) for run in args.runs],
        "rule": rule | {"candidates": args.candidates},
        "pw_mcc": found.consistency.matrix.tolist(),
        "sdlkit": __version__,
    }
    save_anchors(out, found.anchors, found.extra(), provenance)
    support, agreement = found.support.tolist(), found.agreement.tolist()
    if args.json:
        print_json(
            {"out": str(out), "count": found.anchors.k, "support": support, "agreement": agreement, **provenance}
        )
        return 0
    print(
        f"{found.anchors.k} anchors shared by at least {rule['min_runs']} of {len(models)} runs at |cos| >= "
        f"{args.threshold:g} (agreement {min(agreement):.3f} to {max(agreement):.3f}), written to {out}"
    )
    print(f"use them with: sdlkit train --config CONFIG --anchors-from {out}")
    return 0
