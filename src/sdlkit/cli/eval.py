"""`sdlkit eval`: reconstruction, splice and known-direction metrics of a checkpoint on activations."""

from __future__ import annotations

import argparse

from sdlkit.cli.options import add_device, add_json, comma_list, command, device, print_json


def add_commands(sub: argparse._SubParsersAction) -> None:
    """Register eval on the `sdlkit` sub-command parser."""
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
