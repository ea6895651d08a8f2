"""`sdlkit diagnose`: the activation-pattern census of one dictionary trained on LRB data (see
sdlkit.paper.diagnose)."""

from __future__ import annotations

import argparse
from pathlib import Path

from sdlkit.cli.options import add_device, add_json, command, device, print_json


def add_commands(sub: argparse._SubParsersAction) -> None:
    """Register diagnose on the `sdlkit` sub-command parser."""
    diagnose = command(
        sub,
        "diagnose",
        "activation-pattern census of a dictionary trained on bench data",
        "Every ground-truth feature is presented alone; latents are monosemantic, polysemantic or dead, features\n"
        "recovered, absorbed or lost (the paper's Def 3.1).",
    )
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
    add_json(diagnose, "the whole census")
    add_device(diagnose)
    diagnose.set_defaults(func=cmd_diagnose)


def cmd_diagnose(args: argparse.Namespace) -> int:
    import sdlkit
    from sdlkit.data.lrb.source import LRBSource
    from sdlkit.paper.diagnose import bench_data_config, census, census_table, to_json

    where = device(args)
    model = sdlkit.load(args.checkpoint, device=where)
    source = LRBSource(bench_data_config(Path(args.checkpoint), args.bench_config), device=where)
    result = census(model, source, args.min_activation)
    if args.json:
        print_json(to_json(result))
        return 0
    print(census_table(result))
    for feature in result["absorbed"][:20]:
        print(f"feature {feature} is absorbed into latents {result['absorbed_into'].get(feature, [])}")
    if len(result["absorbed"]) > 20:
        print(f"… and {len(result['absorbed']) - 20} more absorbed features (see --json)")
    return 0
