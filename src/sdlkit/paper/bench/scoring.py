"""Scores of one dictionary against the bench's ground truth: `dictionary_recovery` (encoder rows and
decoder columns, anchored features excluded, one-to-one matching, the τ curves) and where the encoder rows
sit between the features and their dual frame. Runs and reference rows are scored here, the same way."""

from __future__ import annotations

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


def score(
    model: SparseDictionary, source: LRBSource, exclude: list[int], tau: float, curves: bool = True
) -> dict[str, Any]:
    """The recovery fields of a bench record (`dictionary_recovery` with matching, and the τ curves when
    `curves`) and the encoder geometry."""
    truth = source.ground_truth()
    record = dictionary_recovery(
        model, truth["W_p"], truth["W_r"], exclude=exclude, tau=tau, matched=True, curves=curves
    )
    return record | encoder_geometry(model.W_E, source.dual_p(), exclude)
