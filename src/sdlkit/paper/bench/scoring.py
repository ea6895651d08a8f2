"""Scores of one dictionary against the bench's ground truth: `dictionary_recovery` (encoder rows and
decoder columns, anchored features excluded, one-to-one matching, the τ curves) and every registered
bench metric (`BENCH_METRICS`; the first is where the encoder rows sit between the features and their dual
frame). Runs and reference rows are scored here, the same way.

Adding a metric to every bench record and report table: its function (e.g. in sdlkit/eval/), one
`register_metric(BenchMetric(...))` line below, and its test.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from sdlkit.core.model import SparseDictionary
from sdlkit.data.lrb.source import LRBSource
from sdlkit.eval.recovery import best_match, dictionary_recovery, feature_mask, max_inner_product


@torch.no_grad()
def encoder_geometry(W_E: torch.Tensor, dual: torch.Tensor, exclude: list[int]) -> dict[str, float]:
    """Where the encoder rows W_E [n_latents, n_in] sit between the features and their dual frame `dual`
    [n_in, n] (`sdlkit.data.lrb.features.dual_frame`): `max_inner_product_dual`, M_IP of the encoder rows
    against the dual vectors (1 when every feature has a row along its dual vector, as the least-squares
    oracle has), beside the usual M_IP against the features. Anchored features (`exclude`) are left out."""
    keep = feature_mask(exclude, dual.shape[1])
    best, _ = best_match(W_E.detach().to(torch.float64), dual[:, keep])
    return {"max_inner_product_dual": max_inner_product(best)}


@dataclass(frozen=True)
class BenchMetric:
    """A metric every bench record carries: `compute(model, source, exclude)` returns record fields, and
    `columns` maps the fields the report tables show to their column titles (in `percent` as %)."""

    name: str
    compute: Callable[[SparseDictionary, LRBSource, list[int]], dict[str, float]]
    columns: dict[str, str] = field(default_factory=dict)
    percent: frozenset[str] = frozenset()


BENCH_METRICS: dict[str, BenchMetric] = {}
"""The registered bench metrics, in the order their columns appear."""


def register_metric(metric: BenchMetric) -> BenchMetric:
    if metric.name in BENCH_METRICS:
        raise ValueError(f"a bench metric named {metric.name!r} is already registered")
    BENCH_METRICS[metric.name] = metric
    return metric


def _dual_geometry(model: SparseDictionary, source: LRBSource, exclude: list[int]) -> dict[str, float]:
    return encoder_geometry(model.W_E, source.dual_p(), exclude)


register_metric(BenchMetric("encoder_dual", _dual_geometry, {"max_inner_product_dual": "M_IP dual"}))


def score(
    model: SparseDictionary, source: LRBSource, exclude: list[int], tau: float, curves: bool = True
) -> dict[str, Any]:
    """The recovery fields of a bench record (`dictionary_recovery` with matching, and the τ curves when
    `curves`) and every registered metric's fields."""
    truth = source.ground_truth()
    record = dictionary_recovery(
        model, truth["W_p"], truth["W_r"], exclude=exclude, tau=tau, matched=True, curves=curves
    )
    for metric in BENCH_METRICS.values():
        record |= metric.compute(model, source, exclude)
    return record
