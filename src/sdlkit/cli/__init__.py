"""The command line: one module per command group (main.py builds the parser and dispatches)."""

from sdlkit.cli.main import main

__all__ = ["main"]
