"""The report's sentences: one metric against the paper (`compare`), a row's verdict, the headline on which
frame reproduces the paper, and what the measurements say about the encoder rows.

Every sentence is computed from the records; the words that compare two numbers come from `compare`, which
never gives a direction to a difference that rounds to zero.
"""

from __future__ import annotations

import statistics
from typing import Any

from sdlkit.methods import METHODS
from sdlkit.paper.bench.recipes import NAMES, TABLE1_ROWS
from sdlkit.paper.bench.report_cells import group_records, mean_of

TOPK_FAMILY = tuple(row for row in TABLE1_ROWS if row in METHODS and METHODS[row].topk_family)
"""The SAE rows of Table 1 whose method is in the TopK family (`MethodConfig.topk_family`): the rows the paper
reports as recovering features; the headline compares frames on these."""
REPRODUCES_WITHIN = 0.02
"""A frame reproduces the paper when the TopK-family encoder M_IP is within this of Table 1 on average."""


def compare(name: str, ours: float, paper: float, percent: bool) -> str:
    """'M_GT 91.2% vs the paper's 84.9% (+6.3 pp, higher)': one metric against the paper, never a
    direction for a difference that rounds to zero."""
    if percent:
        diff = round((ours - paper) * 100, 1)
        text = f"{name} {ours:.1%} vs the paper's {paper:.1%}"
        delta = f"{diff:+.1f} pp"
    else:
        diff = round(ours - paper, 3)
        text = f"{name} {ours:.3f} vs the paper's {paper:.3f}"
        delta = f"{diff:+.3f}"
    if diff == 0:
        return text + " (equal)"
    return text + f" ({delta}, {'higher' if diff > 0 else 'lower'})"


def verdict(row: str, base: list[dict[str, Any]], fa: list[dict[str, Any]], paper: dict) -> str:
    """One sentence for a row on one frame: encoder M_GT and M_IP against the paper, separately; the
    decoder columns; what anchoring changed (only where it changed something)."""
    gt, ip = mean_of(base, "gt_recovery"), mean_of(base, "max_inner_product")
    gt_dec, ip_dec = mean_of(base, "gt_recovery_decoder"), mean_of(base, "max_inner_product_decoder")
    pair = paper.get((row, False))
    sentence = f"**{NAMES.get(row, row)}**: "
    if pair is None:
        sentence += f"not in the paper's table; encoder rows M_GT {gt:.1%}, M_IP {ip:.3f}"
    else:
        sentence += f"encoder rows {compare('M_GT', gt, pair[0], True)}; {compare('M_IP', ip, pair[1], False)}"
    sentence += f". Decoder columns: M_GT {gt_dec:.1%}, M_IP {ip_dec:.3f}"
    if fa:
        changes = []
        for key, where in (("gt_recovery", "encoder"), ("gt_recovery_decoder", "decoder")):
            delta = round((mean_of(fa, key) - mean_of(base, key)) * 100, 1)
            if delta != 0:
                changes.append(f"{delta:+.1f} pp on {where} M_GT")
        paper_fa = paper.get((row, True))
        paper_delta = round((paper_fa[0] - pair[0]) * 100, 1) if paper_fa and pair else None
        if changes:
            sentence += ". Anchoring: " + ", ".join(changes)
            if paper_delta:
                sentence += f" (paper: {paper_delta:+.1f} pp on encoder M_GT)"
        else:
            sentence += ". Anchoring changed neither M_GT"
    return sentence + "."


def headline(records: list[dict[str, Any]], table: dict) -> str | None:
    """Which frame reproduces the paper's TopK-family encoder rows (Table 1's setting), from the mean
    |M_IP − paper| over the TopK-family rows without anchoring; None when fewer than two frames or no
    TopK-family row with a paper number was run."""
    groups = group_records(records)
    frames = list(dict.fromkeys(r["frame"] for r in records))
    paper = table.get("", {})
    rows = [row for row in TOPK_FAMILY if (row, False) in paper]
    gaps: dict[str, tuple[float, float, float]] = {}
    for frame in frames:
        cells = [(groups.get((frame, "", row, False)), paper[(row, False)]) for row in rows]
        cells = [(runs, pair) for runs, pair in cells if runs]
        if cells:
            gap = statistics.fmean(abs(mean_of(runs, "max_inner_product") - pair[1]) for runs, pair in cells)
            gt = statistics.fmean(mean_of(runs, "gt_recovery") for runs, _ in cells)
            ip = statistics.fmean(mean_of(runs, "max_inner_product") for runs, _ in cells)
            gaps[frame] = (gap, gt, ip)
    if len(gaps) < 2:
        return None
    paper_gt = statistics.fmean(paper[(row, False)][0] for row in rows)
    paper_ip = statistics.fmean(paper[(row, False)][1] for row in rows)
    best = min(gaps, key=lambda f: gaps[f][0])
    parts = [f"the {f} frame {gaps[f][1]:.1%} / {gaps[f][2]:.3f}" for f in gaps]
    numbers = f"(TopK-family encoder rows, mean M_GT / M_IP: {', '.join(parts)}; paper {paper_gt:.1%} / {paper_ip:.3f})"
    if gaps[best][0] <= REPRODUCES_WITHIN:
        others = " and ".join(f for f in gaps if f != best)
        return (
            f"**The {best} frame reproduces the paper's encoder-row recovery; the {others} frame does not** {numbers}."
        )
    return f"**Neither frame reproduces the paper's encoder-row recovery; the {best} frame comes closest** {numbers}."


def mechanism(records: list[dict[str, Any]], references: list[dict[str, Any]]) -> list[str]:
    """Per frame: where the least-squares oracle's and TopK's encoder rows sit between the features and
    the dual frame (measured M_IP against each), beside the frame's own dual cosine."""
    lines = []
    for frame in dict.fromkeys(r["frame"] for r in records):
        runs = [r for r in records if r["frame"] == frame and r["row"] == "topk" and not r["anchored"]]
        oracle = [r for r in references if r["frame"] == frame and r["reference"] == "oracle"]
        if not runs:
            continue
        setting = runs[0]["setting"]
        runs = [r for r in runs if r["setting"] == setting]
        oracle = [r for r in oracle if r["setting"] == setting]
        g = runs[0]["frame_geometry"]
        ip, dual, dec = (
            mean_of(runs, k) for k in ("max_inner_product", "max_inner_product_dual", "max_inner_product_decoder")
        )
        text = (
            f"- **{frame}** frame{f' ({setting})' if setting else ''}, cond(W_p W_pᵀ) = {g['condition_number']:.1f}: "
            f"each feature's dual vector has mean cos {g['dual_cosine']:.3f} with the feature. "
        )
        if oracle:
            oracle_ip, oracle_dual = mean_of(oracle, "max_inner_product"), mean_of(oracle, "max_inner_product_dual")
            text += (
                f"The least-squares oracle's encoder rows score M_IP {oracle_ip:.3f} against "
                f"the features and {oracle_dual:.3f} against the dual vectors. "
            )
        closer = "the features" if ip > dual else "the dual vectors"
        text += (
            f"TopK's trained encoder rows score {ip:.3f} against the features and {dual:.3f} against the dual "
            f"vectors (closer to {closer}); its decoder columns score {dec:.3f} against the features."
        )
        lines.append(text)
    return lines
