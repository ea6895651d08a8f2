"""`sdlkit config show` (every field of a run config: type, default, doc) and `sdlkit config example` (the
commented example configs that ship with the package)."""

from __future__ import annotations

import argparse
import dataclasses
import json
import re
import textwrap
from pathlib import Path
from typing import TYPE_CHECKING

from sdlkit.cli.options import Parser, add_json, command, print_json
from sdlkit.errors import SdlkitError

if TYPE_CHECKING:
    from sdlkit.config_docs import FieldDoc

LINE_WIDTH = 120
"""`config show` cuts each row's doc (its first sentence) to end within this many columns; --json has them whole."""


def add_commands(sub: argparse._SubParsersAction) -> None:
    config = command(
        sub,
        "config",
        "describe run configs: every field, and shipped examples",
        "`sdlkit config show` lists every field of a run config with its type, default and doc;\n"
        "`sdlkit config example NAME --out FILE` writes a commented example to start from.",
    )
    actions = config.add_subparsers(dest="action", required=True, parser_class=Parser)
    show = command(
        actions,
        "show",
        "list every field of a run config with its type, default and doc",
        "Fields are grouped by section and named by the dotted path `--set` takes (e.g. train.lr).\n"
        "The data section is that of --data KIND, the method section that of --method NAME.",
    )
    show.add_argument("--method", default="topk", metavar="NAME", help="the method whose fields to list (topk)")
    show.add_argument("--data", default="lrb", metavar="KIND", help="the data kind whose fields to list (lrb)")
    add_json(show, "a list of {path, type, default, required, doc}")
    show.set_defaults(func=cmd_show)
    example = command(
        actions,
        "example",
        "print or write a commented example config",
        "Without NAME, lists the examples. Start from one: sdlkit config example quick-topk --out run.yaml",
    )
    example.add_argument("name", nargs="?", default=None, metavar="NAME", help="which example (none: list them)")
    example.add_argument("--out", default=None, metavar="FILE", help="write it to FILE instead of printing it")
    example.add_argument("--overwrite", action="store_true", help="replace FILE when it exists")
    example.set_defaults(func=cmd_example)


def cmd_show(args: argparse.Namespace) -> int:
    from sdlkit.config_docs import run_config_fields

    fields = run_config_fields(method=args.method, kind=args.data)
    if args.json:
        print_json([{k: v for k, v in dataclasses.asdict(f).items() if k != "about"} for f in fields])
        return 0
    from sdlkit.core.method import METHODS
    from sdlkit.data.source import SOURCES

    print(format_fields(fields))
    print(
        f"\nRows show a doc's first sentence; --json prints the docs whole.\n"
        f"Methods (--method): {', '.join(sorted(METHODS))}. Data kinds (--data): {', '.join(SOURCES)}."
    )
    return 0


def format_fields(fields: list[FieldDoc]) -> str:
    """The fields as an aligned listing: the top level first, then one block per section (its path and what
    it is), each row a field's name, type, default and the first sentence of its doc."""
    groups: dict[str, list[FieldDoc]] = {"": []}
    for field in fields:
        groups[field.path.rpartition(".")[0]].append(field)
        if field.about is not None:
            groups[field.path] = []
    about = {field.path: field.about for field in fields if field.about is not None}
    blocks = [_block(path, about.get(path, ""), rows) for path, rows in groups.items()]
    return "\n\n".join(blocks)


def _block(path: str, about: str, fields: list[FieldDoc]) -> str:
    title = f"{path}: {about}" if path else "run config (top level): a YAML mapping with these keys"
    lines = textwrap.wrap(title, LINE_WIDTH, subsequent_indent="    ")
    rows = [
        (f.path.rpartition(".")[2], f.type, "required" if f.required else json.dumps(f.default), f.doc) for f in fields
    ]
    widths = [max(len(row[i]) for row in rows) for i in range(3)]
    doc_width = max(50, LINE_WIDTH - sum(widths) - 8)
    for *cells, doc in rows:
        aligned = "  ".join(cell.ljust(width) for cell, width in zip(cells, widths, strict=True))
        lines.append(f"  {aligned}  {first_sentence(doc, doc_width)}".rstrip())
    return "\n".join(lines)


def first_sentence(doc: str, width: int) -> str:
    """The doc up to its first sentence end (not an abbreviation's period), cut to `width` characters."""
    sentence = re.split(r"(?<!App\.)(?<!Def\.)(?<!Fig\.)(?<!Eq\.)(?<=[.!?])\s+(?=[A-Z])", doc, maxsplit=1)[0]
    return textwrap.shorten(sentence, width, placeholder=" …")


def cmd_example(args: argparse.Namespace) -> int:
    from sdlkit.config_docs import example_names, example_text
    from sdlkit.io import write_text_atomically

    if args.name is None:
        if args.out is not None:
            raise SdlkitError("--out needs an example NAME; list them with `sdlkit config example`")
        for name in example_names():
            print(f"{name:20} {example_text(name).splitlines()[0].lstrip('# ')}")
        return 0
    text = example_text(args.name)
    if args.out is None:
        print(text, end="")
        return 0
    out = Path(args.out)
    if out.is_dir():
        raise SdlkitError(f"--out {out} is a folder; give a file name, e.g. --out {out / args.name}.yaml")
    if out.exists() and not args.overwrite:
        raise SdlkitError(f"--out {out} exists; choose another file or add --overwrite")
    write_text_atomically(out, text)
    print(f"wrote {out}; train with: sdlkit train --config {out} --out runs/{out.stem}")
    return 0
