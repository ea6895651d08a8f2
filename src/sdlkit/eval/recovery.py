"""Ground-truth recovery metrics for the Linear Representation Bench (paper section 5.1, App. C).

On the bench the true feature directions W_p [n_in, n] (and W_r [n_out, n]) are known, so a learned
dictionary can be scored by how well its latents line up with them:

    S = |Ŵᵀ W|  [n_q, n]   (cosines: learned directions and true columns unit-normalised)
    s_i = max_j S_ji       best-match score of ground-truth feature i
    M_GT = (1/n) Σ_i 1{s_i > τ}      GT recovery (τ = 0.95 in Table 1)
    M_IP = (1/n) Σ_i s_i             maximum inner product

The paper compares ENCODER ROWS (W_E) with W_p: the encoder row is what decides when a latent fires,
so a latent "is" feature i only if it reads feature i's direction. Decoder columns (W_D) are what the
latent writes back; they are reported alongside (suffix `_decoder`) against W_r, because a
dictionary can reconstruct well with decoder columns on the features while its encoder reads
mixtures, and vice versa.

Best matching is many-to-one: one latent may be the best match of several nearly parallel features.
`matched_recovery` adds a stricter one-to-one (Hungarian) matching.

Everything runs under no_grad on the tensors' device, in float32 (float64 when an input is float64),
and never materialises the whole [n_q, n] similarity matrix: learned rows are processed in chunks
with a running maximum, so n_q = 16,384, n = 1,000 needs a few tens of MB.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment

from sdlkit.core.model import SparseDictionary
from sdlkit.errors import ConfigError, ShapeError, check_matrix

__all__ = [
    "best_match",
    "dictionary_recovery",
    "feature_mask",
    "gt_recovery",
    "matched_recovery",
    "matched_scores",
    "max_inner_product",
    "recovery_curve",
]

_EPS = 1e-12


# ----- helpers ------------------------------------------------------------------------------------
def _compute_dtype(*tensors: torch.Tensor) -> torch.dtype:
    """float64 if any input is float64, else float32 (bfloat16/float16 are upcast)."""
    return torch.float64 if any(t.dtype == torch.float64 for t in tensors) else torch.float32


def _check_pair(learned: object, truth: object) -> tuple[torch.Tensor, torch.Tensor]:
    learned = check_matrix("learned", learned)
    truth = check_matrix("truth", truth)
    if learned.shape[1] != truth.shape[0]:
        raise ShapeError(
            f"learned has shape {tuple(learned.shape)} (rows of width {learned.shape[1]}) but truth has shape "
            f"{tuple(truth.shape)} (columns of height {truth.shape[0]}); the widths must agree"
        )
    if learned.shape[0] == 0:
        raise ShapeError("learned has no rows: there are no latents to match")
    return learned, truth


def _check_chunk(chunk_size: int) -> None:
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1:
        raise ConfigError(f"chunk_size = {chunk_size!r} is not allowed: it must be a positive integer")


def _unit_rows(x: torch.Tensor, name: str) -> torch.Tensor:
    """Rows divided by their ℓ2 norm; zero rows stay zero (similarity 0, never NaN)."""
    if not torch.isfinite(x).all():
        raise ShapeError(f"{name} contains NaN or inf values; recovery is undefined for them")
    return x / x.norm(dim=1, keepdim=True).clamp_min(_EPS)


def _unit_truth(truth: torch.Tensor, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """Truth columns, unit-normalised, as a [d, n] matrix in `dtype` on `device`."""
    t = truth.detach().to(device=device, dtype=dtype)
    return _unit_rows(t.T, "truth").T


def _chunks(learned: torch.Tensor, truth_unit: torch.Tensor, chunk_size: int):
    """Yield (start, |cos| block [c, n]) for consecutive blocks of `chunk_size` learned rows."""
    dtype = truth_unit.dtype
    for start in range(0, learned.shape[0], chunk_size):
        block = _unit_rows(learned[start : start + chunk_size].detach().to(dtype), "learned")
        yield start, (block @ truth_unit).abs_()


def _check_tau(tau: float) -> float:
    if isinstance(tau, bool) or not isinstance(tau, int | float) or not 0 < tau <= 1:
        raise ConfigError(f"tau = {tau!r} is not allowed: it must be in (0, 1]")
    return float(tau)


def _check_best(best: object) -> torch.Tensor:
    if not isinstance(best, torch.Tensor):
        raise ShapeError(f"best must be a torch.Tensor, got {type(best).__name__}")
    if best.ndim != 1:
        raise ShapeError(f"best has shape {tuple(best.shape)}; a 1-D tensor of per-feature scores is needed")
    return best.detach().to(torch.float64)


# ----- best match -----------------------------------------------------------------------------------
@torch.no_grad()
def best_match(learned: torch.Tensor, truth: torch.Tensor, chunk_size: int = 4096) -> tuple[torch.Tensor, torch.Tensor]:
    """Best-matching latent for every ground-truth feature.

    learned [n_q, d]: one learned direction per ROW (encoder rows W_E, or decoder columns as W_D.T).
    truth [d, n]: one ground-truth direction per COLUMN (W_p or W_r).

    Returns (s [n], j [n]): s_i = max_j |cos(learned_j, truth_i)| and the index j (long) of the latent
    that attains it. Rows and columns are unit-normalised first, so the score ignores scale; a zero
    row or column has similarity 0. The [n_q, n] matrix is processed `chunk_size` learned rows at a
    time with a running max, so memory is O(chunk_size · n + d · n). Computed in float32, or in
    float64 when either input is float64; s comes back in that dtype, on learned's device.
    """
    learned, truth = _check_pair(learned, truth)
    _check_chunk(chunk_size)
    dtype = _compute_dtype(learned, truth)
    truth_unit = _unit_truth(truth, dtype, learned.device)
    n = truth.shape[1]
    best = torch.full((n,), -1.0, dtype=dtype, device=learned.device)
    index = torch.zeros(n, dtype=torch.long, device=learned.device)
    for start, sims in _chunks(learned, truth_unit, chunk_size):
        values, rows = sims.max(dim=0)
        better = values > best  # strict: on ties the earlier latent keeps the match
        best = torch.where(better, values, best)
        index = torch.where(better, rows + start, index)
    return best, index


def gt_recovery(best: torch.Tensor, tau: float = 0.95) -> float:
    """M_GT = share of features whose best-match score exceeds tau (strictly), tau in (0, 1].

    best [n]: the scores s from `best_match`. An empty tensor gives NaN.
    """
    tau = _check_tau(tau)
    s = _check_best(best)
    if s.numel() == 0:
        return float("nan")
    return (s > tau).to(torch.float64).mean().item()


def max_inner_product(best: torch.Tensor) -> float:
    """M_IP = mean best-match score over features (best [n] from `best_match`); NaN when empty."""
    s = _check_best(best)
    if s.numel() == 0:
        return float("nan")
    return s.mean().item()


def recovery_curve(best: torch.Tensor, taus: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """M_GT as a function of the threshold (the paper's Fig. 6).

    best [n]: best-match scores. taus [t]: thresholds (default 101 points from 0 to 1); any real
    values are accepted here, unlike `gt_recovery`, so the curve can start at 0.
    Returns (taus [t] float64, share [t] float64) with share_k = (1/n) Σ_i 1{s_i > taus_k}, computed
    with one sort and a searchsorted (no loop over thresholds). Non-increasing in tau.
    """
    s = _check_best(best)
    if taus is None:
        taus = torch.linspace(0.0, 1.0, 101, dtype=torch.float64, device=s.device)
    elif not isinstance(taus, torch.Tensor) or taus.ndim != 1:
        raise ShapeError("taus must be a 1-D torch.Tensor of thresholds")
    taus = taus.detach().to(device=s.device, dtype=torch.float64)
    n = s.numel()
    if n == 0:
        return taus, torch.full_like(taus, float("nan"))
    sorted_s = s.sort().values
    # number of scores <= tau is the right insertion point; the rest exceed tau
    at_most = torch.searchsorted(sorted_s, taus, right=True)
    return taus, (n - at_most).to(torch.float64) / n


# ----- one-to-one matching ------------------------------------------------------------------------
@torch.no_grad()
def _top_candidates(learned: torch.Tensor, truth_unit: torch.Tensor, k: int, chunk_size: int) -> torch.Tensor:
    """Indices [k, n] of each feature's k most similar latents, by a running top-k over row chunks."""
    n = truth_unit.shape[1]
    top_vals = torch.empty(0, n, dtype=truth_unit.dtype, device=truth_unit.device)
    top_rows = torch.empty(0, n, dtype=torch.long, device=truth_unit.device)
    for start, sims in _chunks(learned, truth_unit, chunk_size):
        rows = torch.arange(start, start + sims.shape[0], device=sims.device)[:, None].expand_as(sims)
        vals = torch.cat([top_vals, sims])
        idx = torch.cat([top_rows, rows])
        top_vals, pos = vals.topk(min(k, vals.shape[0]), dim=0)
        top_rows = idx.gather(0, pos)
    return top_rows


@torch.no_grad()
def matched_scores(
    learned: torch.Tensor, truth: torch.Tensor, candidates_per_feature: int = 8, chunk_size: int = 4096
) -> tuple[torch.Tensor, torch.Tensor]:
    """One-to-one matching of latents to features that maximises the total |cos| (Hungarian).

    learned [n_q, d] (directions as rows), truth [d, n] (directions as columns).
    Returns (s [n] float64, j [n] long): the matched |cos| of every feature and its latent; a feature
    left without a latent (n_q < n, or too few candidates) gets s = 0 and j = -1.

    The full [n_q, n] problem (16,384 × 1,000 on the bench) is too big for the Hungarian method, so
    the rows are restricted to the union R of every feature's top-`candidates_per_feature` latents
    (found chunked, like `best_match`) and the assignment is solved on that submatrix. Restricting
    the rows can only remove options, so the result is a LOWER BOUND on the full optimum, and it is
    EXACT whenever some optimal full assignment uses only rows in R. That holds in particular when
    candidates_per_feature >= n: a feature matched to a row outside its top n could swap to one of
    those n rows, of which the other n − 1 features hold at most n − 1, without lowering the total.
    """
    learned, truth = _check_pair(learned, truth)
    _check_chunk(chunk_size)
    k = candidates_per_feature
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ConfigError(f"candidates_per_feature = {k!r} is not allowed: it must be a positive integer")
    n = truth.shape[1]
    scores = torch.zeros(n, dtype=torch.float64, device=learned.device)
    latent = torch.full((n,), -1, dtype=torch.long, device=learned.device)
    if n == 0:
        return scores, latent
    dtype = _compute_dtype(learned, truth)
    truth_unit = _unit_truth(truth, dtype, learned.device)
    if k >= learned.shape[0]:  # every row is a candidate: skip the search (same rows, exact)
        rows = torch.arange(learned.shape[0], device=learned.device)
    else:
        rows = _top_candidates(learned, truth_unit, k, chunk_size).flatten().unique()
    sub = (_unit_rows(learned[rows].detach().to(dtype), "learned") @ truth_unit).abs_()
    row_ind, col_ind = linear_sum_assignment(sub.cpu().to(torch.float64).numpy(), maximize=True)
    row_t = torch.as_tensor(np.asarray(row_ind), dtype=torch.long, device=learned.device)
    col_t = torch.as_tensor(np.asarray(col_ind), dtype=torch.long, device=learned.device)
    scores[col_t] = sub[row_t, col_t].to(torch.float64)
    latent[col_t] = rows[row_t]
    return scores, latent


def matched_recovery(
    learned: torch.Tensor, truth: torch.Tensor, tau: float = 0.95, candidates_per_feature: int = 8
) -> dict[str, float]:
    """M_GT and M_IP under a one-to-one matching (each latent explains at most one feature).

    Stricter than best matching, where one latent may be the best match of several nearly parallel
    features. See `matched_scores` for the candidate restriction (exact when the optimal assignment
    uses only candidate rows, a lower bound otherwise). Unmatched features (n_q < n) count as 0.
    Returns {"matched_gt_recovery", "matched_max_inner_product"}.
    """
    tau = _check_tau(tau)
    scores, _ = matched_scores(learned, truth, candidates_per_feature)
    return {
        "matched_gt_recovery": gt_recovery(scores, tau),
        "matched_max_inner_product": max_inner_product(scores),
    }


# ----- a whole dictionary ---------------------------------------------------------------------------
def feature_mask(exclude: Sequence[int] | torch.Tensor | None, n: int) -> torch.Tensor:
    """[n] bool, False at the `exclude` indices (checked: integers in [0, n), not all of them)."""
    keep = torch.ones(n, dtype=torch.bool)
    if exclude is None:
        return keep
    if isinstance(exclude, torch.Tensor):
        if exclude.dtype == torch.bool or exclude.is_floating_point() or exclude.ndim > 1:
            raise ConfigError("exclude must be a 1-D tensor or sequence of integer feature indices")
        indices = exclude.tolist()
    else:
        indices = list(exclude)
    for i in indices:
        if isinstance(i, bool) or not isinstance(i, int | np.integer):
            raise ConfigError(f"exclude index {i!r} is not allowed: feature indices must be integers")
        if not 0 <= i < n:
            raise ConfigError(f"exclude index {i} is not allowed: it must be in [0, {n}) (n features)")
        keep[int(i)] = False
    if not keep.any():
        raise ConfigError(f"exclude lists all {n} features: none are left to score")
    return keep


def _scores(learned: torch.Tensor, truth: torch.Tensor, tau: float, suffix: str) -> dict[str, float]:
    best, _ = best_match(learned, truth)
    return _summary(best, tau, suffix)


def _summary(best: torch.Tensor, tau: float, suffix: str) -> dict[str, float]:
    return {f"gt_recovery{suffix}": gt_recovery(best, tau), f"max_inner_product{suffix}": max_inner_product(best)}


@torch.no_grad()
def dictionary_recovery(
    model: SparseDictionary,
    W_p: torch.Tensor,
    W_r: torch.Tensor,
    exclude: Sequence[int] | torch.Tensor | None = None,
    tau: float = 0.95,
    matched: bool = False,
    curves: bool = False,
) -> dict[str, Any]:
    """The bench's recovery record for one trained dictionary.

    W_p [n_in, n]: true input directions (columns); W_r [n_out, n]: true output directions (W_p for
    an SAE). `exclude`: ground-truth indices left out of every average (the anchored features: the
    paper evaluates "only on features not used for anchoring"); every latent stays a candidate.

    Fields (floats):
    - gt_recovery, max_inner_product: encoder rows W_E [n_latents, n_in] vs W_p (the paper's M_GT,
      M_IP): the encoder row decides which latent fires, so it is what identifies a feature;
    - gt_recovery_decoder, max_inner_product_decoder: decoder columns W_D [n_out, n_latents] vs W_r:
      what each latent writes back;
    - crosscoders (several in_blocks / out_blocks): the above on the concatenated directions, plus
      gt_recovery_source_j, max_inner_product_source_j (encoder row block j vs W_p block j) and their
      `_decoder` versions (decoder row block j vs W_r block j). A feature whose true block is zero
      scores 0 in that source;
    - matched=True: matched_gt_recovery, matched_max_inner_product and their `_decoder` versions,
      from a one-to-one Hungarian matching (see `matched_scores`) of the non-excluded features;
    - curves=True: recovery_curve = {"tau": [101], "encoder": [101], "decoder": [101]}, M_GT against τ
      (`recovery_curve`) from the same best matches.
    """
    _check_truth(model, W_p, W_r)
    tau = _check_tau(tau)
    n = W_p.shape[1]
    device = model.W_E.device
    keep = feature_mask(exclude, n).to(device)
    W_p = W_p.detach().to(device)[:, keep]
    W_r = W_r.detach().to(device)[:, keep]
    encoder = model.W_E.detach()  # [n_latents, n_in]: rows
    decoder = model.W_D.detach().T  # [n_latents, n_out]: columns as rows

    best_encoder, _ = best_match(encoder, W_p)
    best_decoder, _ = best_match(decoder, W_r)
    record: dict[str, Any] = {**_summary(best_encoder, tau, ""), **_summary(best_decoder, tau, "_decoder")}
    if curves:
        taus, encoder_curve = recovery_curve(best_encoder.cpu())
        record["recovery_curve"] = {
            "tau": [round(t, 4) for t in taus.tolist()],
            "encoder": encoder_curve.tolist(),
            "decoder": recovery_curve(best_decoder.cpu())[1].tolist(),
        }
    record |= _per_source(model, encoder, decoder, W_p, W_r, tau)
    if matched:
        for learned, truth, suffix in ((encoder, W_p, ""), (decoder, W_r, "_decoder")):
            scores, _ = matched_scores(learned, truth)
            record[f"matched_gt_recovery{suffix}"] = gt_recovery(scores, tau)
            record[f"matched_max_inner_product{suffix}"] = max_inner_product(scores)
    return record


def _check_truth(model: SparseDictionary, W_p: torch.Tensor, W_r: torch.Tensor) -> None:
    """ShapeError unless W_p [n_in, n] and W_r [n_out, n] are finite matrices that fit `model`, n >= 1."""
    for name, W, width, side in (("W_p", W_p, model.n_in, "n_in"), ("W_r", W_r, model.n_out, "n_out")):
        check_matrix(name, W)
        if W.shape[0] != width:
            raise ShapeError(f"{name} has shape {tuple(W.shape)}; this dictionary needs [{side} = {width}, n_features]")
    if W_p.shape[1] != W_r.shape[1]:
        raise ShapeError(f"W_p has {W_p.shape[1]} features but W_r has {W_r.shape[1]}; they must agree")
    if W_p.shape[1] == 0:
        raise ShapeError("W_p has no feature columns to score")


def _per_source(
    model: SparseDictionary,
    encoder: torch.Tensor,
    decoder: torch.Tensor,
    W_p: torch.Tensor,
    W_r: torch.Tensor,
    tau: float,
) -> dict[str, float]:
    """Crosscoders: the scores of each source's block of encoder rows / decoder columns (none otherwise)."""
    record: dict[str, float] = {}
    in_blocks = model.config.in_blocks or [model.n_in]
    out_blocks = model.config.out_blocks or [model.n_out]
    if len(in_blocks) > 1:
        for j, (E, P) in enumerate(zip(encoder.split(in_blocks, dim=1), W_p.split(in_blocks, dim=0), strict=True)):
            record |= _scores(E, P, tau, f"_source_{j}")
    if len(out_blocks) > 1:
        for j, (D, R) in enumerate(zip(decoder.split(out_blocks, dim=1), W_r.split(out_blocks, dim=0), strict=True)):
            record |= _scores(D, R, tau, f"_source_{j}_decoder")
    return record
