"""Code carries no lab notebook: no docstring or comment under src/ quotes a measured figure or the
circumstances of a measurement. Figures live in benchmarks/README.md, which a docstring cites by section name.

The check is a heuristic: a percentage, a throughput, a size or a duration with its unit, a speed-up, a
"figure → figure" change, or words that describe the machine a measurement ran on. ALLOWED lists the few
lines where such a pattern states a definition, a constant's size or the paper's own number instead.
"""

from __future__ import annotations

import ast
import io
import re
import tokenize
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "sdlkit"

NUMBER = r"(?<![\w.])\d(?:[\d,.]*\d)?"
"""A number standing alone (not the 0 of L0s, nor the 2 of W2)."""
PATTERNS = {
    "a percentage": re.compile(rf"{NUMBER}\s?%"),
    "a throughput": re.compile(rf"{NUMBER}\s*(?:samples|rows|tokens|texts|steps|batches|items|it)\s*/\s*s\b"),
    "a size": re.compile(rf"{NUMBER}\s*[KMGT]i?B\b"),
    "a duration": re.compile(rf"{NUMBER}\s*(?:ms|µs|s|secs?|seconds|mins?|minutes|hours?)\b(?![-/])"),
    "a speed-up": re.compile(rf"{NUMBER}\s*[x×]\s*(?:faster|slower|longer|shorter|the speed)", re.IGNORECASE),
    "a change of figures": re.compile(rf"{NUMBER}%?\s*(?:->|→)\s*{NUMBER}"),
    "the machine it ran on": re.compile(
        r"\bon (?:this|that|the same) (?:machine|CPU|box)\b|\b\d+[- ]cores?\b|\bcores? (?:was|were) busy\b"
        r"|\bno GPU (?:was|is) lent\b|\bwas lent\b|\bsession\b|\bseen (?:in|with|on) ",
        re.IGNORECASE,
    ),
}
"""What a measurement looks like in prose: name -> pattern."""

ALLOWED = {
    "Anthropic: linear over the last 20%": "the published recipe (config.py)",
    "Anthropic: the first 5% of training": "the published recipe (methods/relu.py)",
    "the row's lr, a 5% warm-up": "the bench's recipe (paper/bench/spec.py)",
    "1e-3 with a 5% warm-up": "the check's recipe (paper/training_checks.py)",
    "every 10% of training until 60%": "the resampling schedule (paper/training_checks.py)",
    "more than 1% below": "the check's criterion (paper/training_checks.py)",
    "(0.849 = 84.9%)": "the unit of the paper's numbers (paper/published/paper.py)",
    "(85.5%": "the paper's own number (paper/published/paper.py)",
    "'M_GT 91.2% vs the paper's 84.9% (+6.3 pp, higher)'": "the output's format (paper/bench/report_text.py)",
    "6 standard deviations plus 25%": "the margin's definition (core/kernels.py)",
    "(98% for S = 0.99, b = 3)": "S^(b−1), arithmetic (eval/absorption.py)",
    "Φ̄(κ) ≈ 0.13% at κ = 3": "Φ̄(3), arithmetic (data/synth/sampler.py)",
    "at 3, ~0.13% of the free entries": "Φ̄(3), arithmetic (data/synth/sampler.py)",
    "'34.4 GB' (powers of 1000)": "the output's format (core/model.py)",
    "64 blocks of 64 KiB": "the fingerprint's definition (data/array/files.py)",
    "(32 MB in float32": "the constant's size (core/model.py)",
    "(64 MB of a dense": "the constant's size (core/model.py)",
    "cost matrix then holds 2.1 GB": "the constant's size (eval/consistency.py)",
    "256 MB in float32": "the constant's size (train/trainer.py)",
    "a line per 10 s, not per 0.1 s": "the log's interval (train/loop.py)",
}
"""Text on a flagged line -> why that figure is not a measurement (and the file under src/sdlkit it is in; the
text alone is the key, so that moving a module does not break the list)."""


def prose(source: str) -> list[tuple[int, str]]:
    """(line number, text) of every line of every comment and docstring-like string statement in `source`."""
    found = [
        (tok.start[0], tok.string)
        for tok in tokenize.generate_tokens(io.StringIO(source).readline)
        if tok.type == tokenize.COMMENT
    ]
    for node in ast.walk(ast.parse(source)):
        body = getattr(node, "body", None)
        for stmt in body if isinstance(body, list) else []:
            if (
                isinstance(stmt, ast.Expr)
                and isinstance(stmt.value, ast.Constant)
                and isinstance(stmt.value.value, str)
            ):
                found += [(stmt.lineno + k, line) for k, line in enumerate(stmt.value.value.splitlines())]
    return sorted(found)


def figures(source: str) -> list[tuple[int, str, str]]:
    """(line, what it looks like, the line) for every line of prose in `source` that matches a pattern."""
    return [
        (line, name, text.strip())
        for line, text in prose(source)
        for name, pattern in PATTERNS.items()
        if pattern.search(text)
    ]


def allowed(text: str) -> str | None:
    """The ALLOWED phrase on this line, if any."""
    return next((phrase for phrase in ALLOWED if phrase in text), None)


def test_no_docstring_or_comment_quotes_a_measurement() -> None:
    hits, used = [], set()
    for file in sorted(PACKAGE.rglob("*.py")):
        path = file.relative_to(PACKAGE).as_posix()
        for line, name, text in figures(file.read_text()):
            key = allowed(text)
            if key is None:
                hits.append(f"src/sdlkit/{path}:{line}: {name}: {text}")
            used.add(key)
    assert not hits, (
        "docstrings and comments quote measurements; move the figures to benchmarks/README.md and cite its "
        "section by name (or, for a definition, add the line to ALLOWED with the reason):\n" + "\n".join(hits)
    )
    stale = [key for key in ALLOWED if key not in used]
    assert not stale, f"ALLOWED entries that match nothing any more (remove them): {stale}"


@pytest.mark.parametrize(
    ("text", "name"),
    [
        ("the other features' encoder M_GT 92.8% -> 63.3% with it counted", "a percentage"),
        ("never-fired latents fell from 0.36 → 0.002", "a change of figures"),
        ("measured 3,700 samples/s", "a throughput"),
        ("peak memory 1,655 MB", "a size"),
        ("each run took 546 s", "a duration"),
        ("~7× faster than mask.nonzero()", "a speed-up"),
        ("took ~100x longer on a 2-core machine", "the machine it ran on"),
        ("(not measured: no GPU was lent)", "the machine it ran on"),
        ("(seen in session 12)", "the machine it ran on"),
    ],
)
def test_a_figure_put_back_is_caught(text: str, name: str) -> None:
    source = f'"""Module."""\n\nX = 1\n"""{text}"""\n\n\ndef f() -> None:\n    pass  # {text}\n'
    assert [(line, hit) for line, hit, _ in figures(source) if hit == name] == [(4, name), (8, name)]


def test_definitions_and_arithmetic_pass() -> None:
    source = (
        '"""Shapes [B, n_latents]; k = 32; lr 1e-3 over 500 steps of 1,024; t in [0, 1]; eq. 23–24; Table 4.\n\n'
        'W_E x_p + b_E → σ; 4x smaller data; cos 1/√2 ≈ 0.71; (1 − S)·n; 12 s_i; SAELens 6.x."""\n'
    )
    assert figures(source) == []
