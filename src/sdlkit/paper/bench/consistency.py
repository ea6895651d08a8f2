"""The bench report's cross-seed consistency section: PW-MCC (eval.consistency) of every row trained with
two or more seeds on the same data, read back from the runs' checkpoints.

Anchored runs are compared on their free latents (k: onwards): the anchored ones share their anchors and
would agree trivially. The bench draws each seed's data with that seed unless `--set data.seed=N` fixes
it; runs on different data are not compared (their dictionaries answer different ground truths).
"""

from __future__ import annotations

import json
import statistics
from collections import defaultdict
from pathlib import Path
from typing import Any

from sdlkit.errors import SdlkitError
from sdlkit.eval.consistency import consistency
from sdlkit.io import load
from sdlkit.paper.bench.recipes import NAMES
from sdlkit.report import format_table


def _pairwise(out: Path, runs: list[dict[str, Any]]) -> list[float] | None:
    """PW-MCC of every pair of `runs` (free latents), or None when a checkpoint cannot be read."""
    try:
        decoders = [load(out / r["run_dir"]).W_D.detach()[:, r["n_anchors"] :] for r in runs]
    except (SdlkitError, OSError):
        return None
    matrix = consistency(decoders).matrix
    return [matrix[i, j].item() for i in range(len(runs)) for j in range(i + 1, len(runs))]


def _line(key: tuple, runs: list[dict[str, Any]], pairs: list[float]) -> dict[str, str]:
    frame, setting, row, anchored = key
    spread = f" ± {statistics.stdev(pairs):.3f}" if len(pairs) > 1 else ""
    return {
        "frame": frame,
        "setting": setting or "–",
        "method": NAMES.get(row, row) + (" + FA" if anchored else ""),
        "seeds": ",".join(str(r["seed"]) for r in runs),
        "PW-MCC": f"{statistics.fmean(pairs):.3f}{spread}",
        "M_IP dec": f"{statistics.fmean(r['max_inner_product_decoder'] for r in runs):.3f}",
        "M_GT dec": f"{statistics.fmean(r['gt_recovery_decoder'] for r in runs):.1%}",
    }


def consistency_section(out: Path, records: list[dict[str, Any]]) -> list[str]:
    """Report lines: a PW-MCC table over the rows with >= 2 seeds, or a note saying why there is none.
    Nothing when no row has two seeds."""
    groups: dict[tuple, list[dict[str, Any]]] = defaultdict(list)
    for r in records:
        groups[(r["frame"], r["setting"], r["row"], r["anchored"])].append(r)
    groups = {key: runs for key, runs in groups.items() if len(runs) > 1}
    if not groups:
        return []
    table, other_data, unreadable = [], 0, 0
    for key, runs in groups.items():
        if len({json.dumps(r["config"]["data"], sort_keys=True) for r in runs}) > 1:
            other_data += 1
            continue
        pairs = _pairwise(out, runs)
        if pairs is None:
            unreadable += 1
            continue
        table.append(_line(key, runs, pairs))
    lines = [
        "## Cross-seed consistency (PW-MCC)",
        "",
        "PW-MCC: decoder columns of two seeds matched one-to-one (Hungarian) by |cos|, averaged (1 = the same "
        "directions); mean ± sd over the pairs of seeds. Anchored runs on their free latents only. What it "
        "predicts about recovery: benchmarks/README.md.",
        "",
    ]
    if table:
        lines += [format_table(table, list(table[0])), ""]
    if other_data:
        lines += [
            f"{other_data} rows are not compared: their seeds drew different data (the bench seeds the data with "
            "the run's seed); run the bench with `--set data.seed=0` to compare seeds on the same data.",
            "",
        ]
    if unreadable:
        lines += [f"{unreadable} rows are not compared: a checkpoint could not be read.", ""]
    return lines
