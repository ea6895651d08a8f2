"""Statistics of synthetic codes, and a two-sample comparison with tolerances from sampling error.

`CodeStatistics` streams dense codes [rows, n] (from any generator: sdlkit's or SAELens's) and keeps per-feature
firing counts and magnitude moments, the L0's first two moments, violations of the forest's rules, and the
co-firing counts of a few tracked features. `compare_statistics(a, b)` tests two such summaries, drawn
independently from the same model, for equality in distribution; every tolerance is a multiple of the
difference's standard error (see each check's `tolerance` text). `mean_max_cos` measures a dictionary.
"""

from __future__ import annotations

import math
from statistics import NormalDist
from typing import Any

import torch

from sdlkit.data.synth.forest import Forest

__all__ = ["CodeStatistics", "compare_statistics", "mean_max_cos"]

MIN_COUNT = 20
"""Features (or pairs) enter a z-test only when both samples hold at least this many firings: the normal
approximation of a binomial count is poor below that."""
FAMILY_ALPHA = 1e-3
"""Family-wise false-alarm rate of the max-|z| tests (Bonferroni over the features or pairs compared)."""


class CodeStatistics:
    """Streaming statistics of codes [rows, n] (see the module docstring). `tracked` [k]: the features whose
    pairwise firing correlation is kept."""

    def __init__(self, n_features: int, forest: Forest | None = None, tracked: torch.Tensor | None = None):
        self.n = n_features
        self.forest = forest
        self.tracked = tracked if tracked is not None else torch.arange(min(n_features, 32))
        self.samples = 0
        self.count = torch.zeros(n_features, dtype=torch.float64)
        self.mag_sum = torch.zeros(n_features, dtype=torch.float64)
        self.mag_sq = torch.zeros(n_features, dtype=torch.float64)
        self.l0_sum = self.l0_sq = 0.0
        self.parent_violations = self.exclusive_violations = 0
        k = len(self.tracked)
        self.cofire = torch.zeros(k, k, dtype=torch.float64)

    @torch.no_grad()
    def add(self, codes: torch.Tensor) -> None:
        """Add a batch of codes [rows, n] (non-negative; active = > 0)."""
        codes = codes.detach().to("cpu", torch.float64)
        active = codes > 0
        values = codes * active
        self.samples += codes.shape[0]
        self.count += active.sum(dim=0)
        self.mag_sum += values.sum(dim=0)
        self.mag_sq += values.pow(2).sum(dim=0)
        l0 = active.sum(dim=1).double()
        self.l0_sum += float(l0.sum())
        self.l0_sq += float(l0.pow(2).sum())
        tracked = active[:, self.tracked].double()
        self.cofire += tracked.T @ tracked
        if self.forest is not None:
            self._forest_violations(active)

    def _forest_violations(self, active: torch.Tensor) -> None:
        forest = self.forest
        assert forest is not None
        children = (forest.parent >= 0).nonzero().squeeze(1)
        self.parent_violations += int((active[:, children] & ~active[:, forest.parent[children]]).sum())
        parents = forest.exclusive.nonzero().squeeze(1)
        if len(parents):
            width = int(forest.child_count[parents].max())
            index = forest.child_start[parents].unsqueeze(1) + torch.arange(width)
            valid = torch.arange(width) < forest.child_count[parents].unsqueeze(1)
            on = active[:, index.clamp(max=self.n - 1)] & valid
            self.exclusive_violations += int((on.sum(dim=2) > 1).sum())

    def summary(self) -> dict[str, Any]:
        """rate [n], l0 (mean), l0_var, magnitude_mean / magnitude_var [n] (over active entries; NaN where none),
        correlation [k, k] of the tracked features' firing indicators and joint_count [k, k] (samples where both
        fire), the counts, violations, samples."""
        N = self.samples
        rate = self.count / N
        safe = self.count.clamp_min(1)
        mean = torch.where(self.count > 0, self.mag_sum / safe, torch.nan)
        var = torch.where(
            self.count > 1, (self.mag_sq - self.count * mean.nan_to_num().pow(2)) / (safe - 1).clamp_min(1), torch.nan
        )
        p = rate[self.tracked]
        cov = self.cofire / N - p.unsqueeze(1) * p.unsqueeze(0)
        sd = (p * (1 - p)).sqrt().clamp_min(1e-12)
        l0 = self.l0_sum / N
        return {
            "samples": N,
            "rate": rate,
            "count": self.count,
            "l0": l0,
            "l0_var": self.l0_sq / N - l0**2,
            "magnitude_mean": mean,
            "magnitude_var": var,
            "correlation": cov / sd.unsqueeze(1) / sd.unsqueeze(0),
            "joint_count": self.cofire.clone(),
            "parent_violations": self.parent_violations,
            "exclusive_violations": self.exclusive_violations,
        }


@torch.no_grad()
def mean_max_cos(vectors: torch.Tensor, chunk: int = 2048) -> float:
    """Mean over the rows i of vectors [n, d] of max_{j≠i} |cos(v_i, v_j)|."""
    unit = vectors.double() / vectors.double().norm(dim=1, keepdim=True).clamp_min(1e-12)
    best = []
    for start in range(0, len(unit), chunk):
        sims = (unit[start : start + chunk] @ unit.T).abs_()
        sims.diagonal(offset=start).zero_()
        best.append(sims.max(dim=1).values)
    return float(torch.cat(best).mean())


def _bonferroni(m: int) -> float:
    """|z| bound that m independent standard normals all stay under with probability 1 − FAMILY_ALPHA."""
    return NormalDist().inv_cdf(1 - FAMILY_ALPHA / (2 * max(m, 1)))


def _z_check(name: str, z: torch.Tensor, what: str) -> dict[str, Any]:
    """max |z| against its Bonferroni bound, and the mean z² (≈ 1 when the two samples agree)."""
    m = int(z.numel())
    bound = _bonferroni(m)
    worst = float(z.abs().max()) if m else 0.0
    return {
        "check": name,
        "compared": m,
        "max_abs_z": worst,
        "mean_z2": float(z.pow(2).mean()) if m else math.nan,
        "tolerance": f"max |z| <= {bound:.2f} (Bonferroni, {FAMILY_ALPHA:g} family-wise over {m} {what})",
        "holds": worst <= bound,
    }


def compare_statistics(a: dict[str, Any], b: dict[str, Any]) -> list[dict[str, Any]]:
    """Two-sample checks of summaries `a`, `b` (`CodeStatistics.summary`) drawn independently from one model:
    per-feature firing rates, mean L0, forest violations (must be 0 in both), the tracked features' firing
    correlations, per-feature magnitude means. Returns one record per check: check, holds, tolerance, numbers."""
    Na, Nb = a["samples"], b["samples"]
    both = (a["count"] >= MIN_COUNT) & (b["count"] >= MIN_COUNT)
    pooled = (a["count"] + b["count"]) / (Na + Nb)
    z_rate = (a["rate"] - b["rate"]) / (pooled * (1 - pooled) * (1 / Na + 1 / Nb)).sqrt().clamp_min(1e-12)
    checks = [_z_check("firing rate per feature", z_rate[both], "features")]
    z_l0 = (a["l0"] - b["l0"]) / math.sqrt(a["l0_var"] / Na + b["l0_var"] / Nb)
    checks.append(
        {
            "check": "mean L0",
            "a": a["l0"],
            "b": b["l0"],
            "z": z_l0,
            "tolerance": "|z| <= 4 (z = difference / its standard error)",
            "holds": abs(z_l0) <= 4,
        }
    )
    violations = {k: (a[k], b[k]) for k in ("parent_violations", "exclusive_violations")}
    checks.append(
        {
            "check": "forest rules",
            **{k: list(v) for k, v in violations.items()},
            "tolerance": "0 in both",
            "holds": all(v == (0, 0) for v in violations.values()),
        }
    )
    # Correlations are compared through the joint firing rates Pr(i and j), binomial proportions with an
    # exact standard error (given matching rates, equal joint rates mean equal correlations).
    joint_a, joint_b = a["joint_count"], b["joint_count"]
    pairs = torch.triu(torch.ones_like(joint_a, dtype=torch.bool), diagonal=1)
    pairs &= (joint_a >= MIN_COUNT) & (joint_b >= MIN_COUNT)
    pooled_joint = (joint_a + joint_b) / (Na + Nb)
    se_joint = (pooled_joint * (1 - pooled_joint) * (1 / Na + 1 / Nb)).sqrt().clamp_min(1e-12)
    check = _z_check("joint firing rate of tracked pairs", ((joint_a / Na - joint_b / Nb) / se_joint)[pairs], "pairs")
    check["max_abs_correlation_difference"] = float((a["correlation"] - b["correlation"])[pairs].abs().max())
    checks.append(check)
    enough = both & (a["count"] >= 2 * MIN_COUNT) & (b["count"] >= 2 * MIN_COUNT)
    se = (a["magnitude_var"] / a["count"].clamp_min(1) + b["magnitude_var"] / b["count"].clamp_min(1)).sqrt()
    z_mag = (a["magnitude_mean"] - b["magnitude_mean"]) / se.clamp_min(1e-12)
    checks.append(_z_check("active magnitude mean per feature", z_mag[enough], "features"))
    return checks
