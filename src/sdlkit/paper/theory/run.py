"""`sdlkit theory --out DIR`: every numerical check of the paper's theory, with a verdict per claim.

Writes `DIR/results.json` (a list of {check, claim, holds, figures}; README.md, "The theory, checked by numbers"),
`DIR/report.md` (claim by claim: holds / does not hold, with the measured figures) and PNG figures.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from sdlkit.errors import ConfigError
from sdlkit.io import mark_folder, remove_owned_folder, write_json_atomically

CHECK_ORDER = ["example-3.5", "thm-3.6", "thm-3.4", "thm-3.1", "thm-3.3", "thm-3.8", "absorption", "resampling"]


def _checks(quick: bool, device: str, seed: int, out: Path) -> dict[str, Callable[[], dict[str, Any]]]:
    from sdlkit.paper.theory import math_checks, training_checks

    seeds = [seed] if quick else [seed, seed + 1, seed + 2]
    paired = [seed, seed + 1] if quick else seeds  # a small paired effect needs more than one seed to mean anything
    return {
        "example-3.5": lambda: math_checks.example_35_check(seed),
        "thm-3.6": lambda: math_checks.thm36_check(seed, n_partitions=60 if quick else 300),
        "thm-3.4": lambda: math_checks.thm34_check(seed),
        "thm-3.1": lambda: math_checks.thm31_check(seed, out / "thm31_loss_gap.png", quick),
        "thm-3.3": lambda: math_checks.thm33_check(seed, out / "thm33_bounds.png"),
        "thm-3.8": lambda: math_checks.thm38_check(seed, n_cases=100 if quick else 500),
        "absorption": lambda: training_checks.absorption_check(quick, device, seeds, out / "absorption.png"),
        "resampling": lambda: training_checks.resampling_check(quick, device, paired, out / "resampling.png"),
    }


def run_theory(
    out: Path,
    quick: bool = False,
    device: str = "cpu",
    seed: int = 0,
    only: list[str] | None = None,
    overwrite: bool = False,
) -> list[dict[str, Any]]:
    """Run the checks (all, or `only` those), write results.json, report.md and figures into `out`."""
    only = only or CHECK_ORDER
    unknown = [name for name in only if name not in CHECK_ORDER]
    if unknown:
        raise ConfigError(f"unknown check {unknown[0]!r}; known checks: {', '.join(CHECK_ORDER)}")
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {out} is a file, not a folder: choose a folder path")
    if out.exists() and any(out.iterdir()):
        if not overwrite:
            raise ConfigError(f"output folder {out} is not empty: pass --overwrite to replace it")
        remove_owned_folder(out, "theory")
    mark_folder(out, "theory")
    checks = _checks(quick, device, seed, out)
    results = []
    started = time.perf_counter()
    for name in only:
        t0 = time.perf_counter()
        print(f"[{len(results) + 1}/{len(only)}] {name}", flush=True)
        record = checks[name]()
        record["seconds"] = round(time.perf_counter() - t0, 2)
        results.append(record)
        write_json_atomically(out / "results.json", results)
        print(f"    {'holds' if record['holds'] else 'DOES NOT HOLD'}: {record['claim']}", flush=True)
    write_report(out, results, time.perf_counter() - started, quick)
    return results


def _summary(record: dict[str, Any]) -> str:
    """The figures behind a verdict, in one line (nested detail stays in results.json)."""
    parts = []
    for key, value in record["figures"].items():
        if isinstance(value, bool | int | str):
            parts.append(f"{key} = {value}")
        elif isinstance(value, float):
            parts.append(f"{key} = {value:.4g}")
        elif isinstance(value, dict) and all(isinstance(v, int | float) for v in value.values()) and len(value) <= 6:
            parts.append(f"{key}: " + ", ".join(f"{k} {v:.4g}" for k, v in value.items()))
    return "; ".join(parts)


def write_report(out: Path, results: list[dict[str, Any]], wall: float, quick: bool) -> Path:
    lines = [
        "# The paper's theory, checked by numbers",
        "",
        f"{'Quick' if quick else 'Full'} run, {wall:.0f} s wall time. Each claim below is a check in "
        "`results.json`; the verdict is computed from the figures, not written by hand.",
        "",
        "| check | verdict | claim |",
        "|---|---|---|",
    ]
    lines += [f"| `{r['check']}` | {'holds' if r['holds'] else '**does not hold**'} | {r['claim']} |" for r in results]
    lines.append("")
    for r in results:
        lines += [
            f"## `{r['check']}`: {'holds' if r['holds'] else 'does not hold'}",
            "",
            r["claim"],
            "",
            _summary(r) + ".",
            "",
        ]
        if r.get("table"):
            lines += [r["table"], ""]
        for figure in r.get("plots", []):
            lines += [f"![{r['check']}]({figure})", ""]
        if r.get("note"):
            lines += [r["note"], ""]
    path = out / "report.md"
    path.write_text("\n".join(lines))
    return path
