"""Options and argument parsing shared by every `sdlkit` command, so each flag means one thing everywhere.

- `--device`: cpu, cuda, cuda:N or auto, resolved once by `device(args)` (a device this machine lacks is
  a one-line error, exit 2).
- `--seed`: only on commands whose result it changes (train, theory; bench takes `--seeds`).
- `--json`: print the command's result as JSON on standard output, instead of the table.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from sdlkit.devices import resolve_device
from sdlkit.errors import SdlkitError


class Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line on stderr and exit status 2."""

    def error(self, message: str) -> None:  # type: ignore[override]
        print(f"{self.prog}: error: {message} (see {self.prog} --help)", file=sys.stderr)
        raise SystemExit(2)


def command(sub: argparse._SubParsersAction, name: str, summary: str, details: str = "") -> argparse.ArgumentParser:
    """A subcommand whose `--help` starts with `summary` (the line `sdlkit --help` lists) and `details`."""
    description = summary[0].upper() + summary[1:] + "." + (f"\n\n{details}" if details else "")
    return sub.add_parser(
        name, help=summary, description=description, formatter_class=argparse.RawDescriptionHelpFormatter
    )


def add_device(parser: argparse.ArgumentParser, default: str = "cpu") -> None:
    parser.add_argument("--device", default=None, help=f"cpu, cuda, cuda:N or auto (default: {default})")
    parser.set_defaults(default_device=default)


def add_seed(parser: argparse.ArgumentParser, what: str) -> None:
    parser.add_argument("--seed", type=int, default=None, help=f"seed for {what}")


def add_json(parser: argparse.ArgumentParser, what: str) -> None:
    parser.add_argument("--json", action="store_true", help=f"print {what} as JSON on standard output")


def device(args: argparse.Namespace) -> str:
    """The command's device: --device, else the command's default, with 'auto' resolved."""
    return resolve_device(args.device or args.default_device, "--device")


def print_json(value: Any) -> None:
    print(json.dumps(value, indent=2, default=str))


def comma_list(text: str | None) -> list[str] | None:
    """'a, b,' -> ['a', 'b']; None stays None."""
    return [item.strip() for item in text.split(",") if item.strip()] if text else None


def names(flag: str, text: str) -> list[str]:
    """A non-empty comma-separated list of names (one-line error naming `flag` when empty)."""
    parts = comma_list(text)
    if not parts:
        raise SdlkitError(f"{flag} is empty: name at least one, e.g. {flag} topk,relu")
    return parts


def int_list(flag: str, text: str) -> list[int]:
    try:
        return [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise SdlkitError(f"{flag} {text!r} is not a comma-separated list of integers, e.g. 0,1,2") from None
