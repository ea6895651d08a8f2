"""Keyword options of library functions (sdlkit.overrides): an options dataclass or keyword overrides of its
fields; a misspelt or missing option is a one-line ConfigError, not a TypeError."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest

from sdlkit.errors import ConfigError
from sdlkit.eval.absorption import absorption_rates
from sdlkit.eval.evaluate import evaluate_checkpoint
from sdlkit.eval.splice import splice_metrics
from sdlkit.overrides import with_overrides
from sdlkit.paper.table2.run import table2
from sdlkit.paper.theory.minima import spurious_minimum


@dataclass(frozen=True)
class Demo:
    size: int
    scale: float = 1.0


def test_overrides_replace_fields() -> None:
    assert with_overrides(Demo, None, {"size": 2}, "demo") == Demo(2, 1.0)
    assert with_overrides(Demo, Demo(2), {"scale": 3.0}, "demo") == Demo(2, 3.0)
    assert with_overrides(Demo, Demo(2), {}, "demo") == Demo(2)


def test_unknown_and_missing_options_are_one_line_errors() -> None:
    with pytest.raises(ConfigError, match=r"^unknown demo option 'sise'; known: scale, size$"):
        with_overrides(Demo, None, {"sise": 2}, "demo")
    with pytest.raises(ConfigError, match=r"^demo needs the option 'size'$"):
        with_overrides(Demo, None, {"scale": 2.0}, "demo")


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: absorption_rates(None, None, sole_chid=False), "unknown absorption option 'sole_chid'"),  # type: ignore[arg-type]
        (lambda: evaluate_checkpoint("run", "store", all_row=True), "unknown eval option 'all_row'"),
        (lambda: splice_metrics(None, None, [], "m", abs, batch_sise=2), "unknown splice option 'batch_sise'"),  # type: ignore[arg-type]
        (lambda: spurious_minimum([[0]], None, None, 1.0, 1, abs, encodr="paper"), "unknown spurious_minimum option"),  # type: ignore[arg-type]
        (lambda: table2(Path("s"), {}, out=Path("o"), n_latents=8, steps=1), "table2 needs the option 'batch_size'"),
    ],
)
def test_library_functions_refuse_a_misspelt_option(call, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        call()
