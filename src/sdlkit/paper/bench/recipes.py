"""Bench rows and their recipes.

A row is a line of the paper's Table 1: an SAE method, or a data mode (transcoder, crosscoder) or a
variant (topk-auxk) trained with one. A record's `row` names it; its `method` is always the σ from the
registry (`topk` for the transcoder row). `recipe(row, true_l0, steps)` gives each row the settings its
own paper recommends, scaled to the data's true L0.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from scipy.stats import poisson

TABLE1_ROWS = ["relu", "jumprelu", "topk", "batchtopk", "matryoshka", "transcoder", "crosscoder"]
EXTRA_ROWS = ["gated", "topk-auxk"]
ALL_ROWS = TABLE1_ROWS + EXTRA_ROWS

NAMES = {
    "relu": "ReLU SAE",
    "jumprelu": "JumpReLU SAE",
    "topk": "TopK SAE",
    "batchtopk": "BatchTopK SAE",
    "matryoshka": "Matryoshka SAE",
    "transcoder": "Transcoder",
    "crosscoder": "Crosscoder",
    "gated": "Gated SAE",
    "topk-auxk": "TopK + AuxK SAE",
}
"""Display names of the rows in reports."""

SWEPT = {"relu": "l1_coefficient", "jumprelu": "l0_coefficient", "gated": "l1_coefficient"}
"""Rows whose sparsity coefficient `--sweep` searches, and the method field it sets."""


@dataclass(frozen=True)
class Recipe:
    """A row's method config, its data overrides (mode, sources) and a one-line rationale."""

    method: dict[str, Any]
    data: dict[str, Any]
    note: str


def recipe(row: str, true_l0: float, steps: int) -> Recipe:
    """The recipe of bench row `row` for data with mean L0 `true_l0`. Active counts are Poisson(true_l0):
    per-sample TopK gets k at the 98th percentile (with k = mean it cannot reconstruct the busier samples
    and plateaus), BatchTopK and Matryoshka, whose k is a per-batch mean, get k = round(true L0).
    Sparsity coefficients were tuned on the quick preset to reach the true L0 (`--sweep` re-tunes them)."""
    k_mean = max(1, round(true_l0))
    k_tail = max(1, int(poisson.ppf(0.98, true_l0)))
    warmup = max(1, steps // 20)
    topk = {"name": "topk", "k": k_tail}
    recipes = {
        "relu": Recipe(
            {"name": "relu", "l1_coefficient": 0.2, "l1_warmup_steps": warmup},
            {},
            "L1 weighted by decoder norms, λ warmed up over the first 5% (Anthropic, April 2024)",
        ),
        "jumprelu": Recipe(
            {"name": "jumprelu", "l0_coefficient": 0.05, "bandwidth": 0.05, "init_threshold": 0.3},
            {},
            "L0 penalty with straight-through gradients, ε = 0.05, θ₀ = 0.3 (Rajamanoharan et al. 2024b)",
        ),
        "topk": Recipe(topk, {}, f"k = {k_tail}, the 98th percentile of the active count (Gao et al. 2024)"),
        "batchtopk": Recipe(
            {"name": "batchtopk", "k": k_mean},
            {},
            f"k = {k_mean} per sample on average, threshold θ at inference (Bussmann et al. 2024)",
        ),
        "matryoshka": Recipe(
            {"name": "matryoshka", "k": k_mean},
            {},
            f"BatchTopK k = {k_mean} under 5 nested prefixes n/16…n (Bussmann et al. 2025)",
        ),
        "gated": Recipe(
            {"name": "gated", "l1_coefficient": 0.5},
            {},
            "L1 on the gate + frozen-decoder aux loss (Rajamanoharan et al. 2024a)",
        ),
        "topk-auxk": Recipe(
            {**topk, "auxk": {}}, {}, f"TopK k = {k_tail} + AuxK, α = 1/32, k_aux = n_out/2 (Gao et al. 2024)"
        ),
        "transcoder": Recipe(topk, {"mode": "transcoder"}, f"TopK k = {k_tail}; x_r = W_r x with an independent W_r"),
        "crosscoder": Recipe(
            topk,
            {"mode": "crosscoder", "n_sources": 2},
            f"TopK k = {k_tail}; two sources, each its own W_p^(j)",
        ),
    }
    return recipes[row]
