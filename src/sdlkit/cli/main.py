"""The `sdlkit` command: the root parser, the command groups, and the exit-status convention.

Each command group is one module with `add_commands(sub)`: train.py (train, info), config.py (config show,
config example), bench.py, theory.py, diagnose.py, harvest.py, eval.py, exchange.py (export, import),
browse.py, compare.py (compare, anchors).

Errors in what the user gave (a bad option, config value, checkpoint, an unusable path) print one line
on standard error and exit with status 2; a diverged run exits 3 after naming its last good checkpoint;
a fault of the machine (full disk, out of memory, I/O error) prints one line and exits 1 (see `main`).
"""

from __future__ import annotations

import argparse
import errno
import sys
from collections.abc import Sequence

from sdlkit.cli import bench, browse, compare, config, diagnose, eval, exchange, harvest, theory, train
from sdlkit.cli.options import Parser
from sdlkit.errors import SdlkitError, TrainingDiverged

COMMAND_GROUPS = (train, config, bench, theory, diagnose, harvest, eval, exchange, browse, compare)


def build_parser() -> argparse.ArgumentParser:
    from sdlkit import __version__

    parser = Parser(prog="sdlkit", description="Sparse dictionary learning under one objective.")
    parser.add_argument("--version", action="version", version=f"sdlkit {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=Parser)
    for group in COMMAND_GROUPS:
        group.add_commands(sub)
    return parser


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
