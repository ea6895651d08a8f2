"""The paper's Table 2 protocol on any labelled activation store, with the reference rows that say what
the numbers mean.

Protocol (paper Sec. 5.2): the proxy ground truth is the normalised, uncentred class means of the store's
training rows (eq. 23–24); an anchored run pulls its first k latents to k of them (a seeded draw, λ_anchor
= 1.0); every run is scored on the class means that were NOT anchored: M_GT (share with a best |cos| >
τ = 0.95) and M_IP (mean best |cos|), from encoder rows (the paper's metric) and decoder columns.

Reference rows, scored the same way on the same classes:
- `anchors only`: a dictionary holding just the k anchor directions. Class means are far from orthogonal
  (they share the representation's mean direction), so an anchored latent can be the best match of an
  unanchored class; this row is how much of an anchored run's score the anchors give by themselves;
- `free latents`: each run's score with its first k latents removed (what the rest of the dictionary
  learned);
- `chance`: random unit directions, as many as the runs have latents.
"""

from __future__ import annotations

from typing import Any

import torch

from sdlkit.data.directions import KnownDirections
from sdlkit.eval.recovery import best_match, gt_recovery, max_inner_product

TAU = 0.95


def _scores(rows: torch.Tensor, truth: torch.Tensor, tau: float) -> tuple[float, float]:
    """(M_GT, M_IP) of learned directions `rows` [n_q, d] against the columns of `truth` [d, n]."""
    best = best_match(rows, truth)[0]
    return gt_recovery(best, tau), max_inner_product(best)


def unanchored(truth: KnownDirections, anchored: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """The class means that are scored: (W_p, W_r) columns of every class not in `anchored`."""
    keep = torch.ones(truth.W_p.shape[1], dtype=torch.bool)
    keep[anchored] = False
    return truth.W_p[:, keep], truth.W_r[:, keep]


def score_dictionary(
    W_E: torch.Tensor,
    W_D: torch.Tensor,
    truth: KnownDirections,
    anchored: list[int],
    n_anchored_latents: int = 0,
    tau: float = TAU,
) -> dict[str, float]:
    """Table 2's scores of a dictionary (W_E [n_q, n_in], W_D [n_out, n_q]) on the unanchored class means,
    plus the same without its first `n_anchored_latents` latents (`free_*`)."""
    W_p, W_r = unanchored(truth, anchored)
    W_E, W_D = W_E.detach().float().cpu(), W_D.detach().float().cpu()
    out: dict[str, float] = {}
    out["M_GT"], out["M_IP"] = _scores(W_E, W_p.float().cpu(), tau)
    out["M_GT_dec"], out["M_IP_dec"] = _scores(W_D.T, W_r.float().cpu(), tau)
    if n_anchored_latents:
        out["free_M_GT"], out["free_M_IP"] = _scores(W_E[n_anchored_latents:], W_p.float().cpu(), tau)
    return out


def anchors_only(truth: KnownDirections, anchored: list[int], tau: float = TAU) -> dict[str, float]:
    """Scores of a dictionary that holds only the anchor directions (unit class means of `anchored`)."""
    A = torch.nn.functional.normalize(truth.W_p[:, anchored].T.float().cpu(), dim=1)
    B = torch.nn.functional.normalize(truth.W_r[:, anchored].float().cpu(), dim=0)
    return score_dictionary(A, B, truth, anchored, tau=tau)


def chance(
    truth: KnownDirections, anchored: list[int], n_latents: int, seed: int = 0, tau: float = TAU
) -> dict[str, float]:
    """Scores of `n_latents` random unit directions (encoder rows = decoder columns)."""
    g = torch.Generator().manual_seed(seed)
    R = torch.nn.functional.normalize(torch.randn(n_latents, truth.W_p.shape[0], generator=g), dim=1)
    R_out = R if truth.W_r.shape[0] == truth.W_p.shape[0] else torch.randn(n_latents, truth.W_r.shape[0], generator=g)
    return score_dictionary(R, R_out.T, truth, anchored, tau=tau)


def class_mean_geometry(truth: KnownDirections, anchored: list[int]) -> dict[str, Any]:
    """How similar the class means are: the mean and largest cosine between two different classes, and the
    share of unanchored classes whose nearest anchor has cosine > τ (those an anchor alone recovers)."""
    U = torch.nn.functional.normalize(truth.W_p.T.double().cpu(), dim=1)
    cos = U @ U.T
    n = cos.shape[0]
    off = cos[~torch.eye(n, dtype=torch.bool)]
    keep = torch.ones(n, dtype=torch.bool)
    keep[anchored] = False
    nearest_anchor = cos[keep][:, anchored].max(dim=1).values
    return {
        "classes": n,
        "mean_cos": float(off.mean()),
        "max_cos": float(off.max()),
        "nearest_anchor_cos_mean": float(nearest_anchor.mean()),
        "covered_by_an_anchor": float((nearest_anchor > TAU).double().mean()),
    }


def anchor_specificity(label_counts: torch.Tensor, counts: torch.Tensor, label_rows: torch.Tensor, anchored: list[int]):
    """Do anchored latents fire on their own class (the paper's App. H reading)? Latent i (i < k) is anchored to
    class anchored[i]. From a scan's rows-fired-on by label `label_counts` [L, C], firing counts `counts` [L]
    and rows per label `label_rows` [C]: the mean share of an anchored latent's rows that carry its class
    (`precision`), that share over the class's base rate (`lift`), and the share of anchored latents whose
    most frequent label is their class (`top_label`)."""
    k = len(anchored)
    own = torch.as_tensor(anchored)
    fired = counts[:k].clamp(min=1).double()
    precision = label_counts[torch.arange(k), own].double() / fired
    base = label_rows[own].double() / label_rows.sum().double()
    top = label_counts[:k].argmax(dim=1) == own
    alive = counts[:k] > 0
    return {
        "precision": float(precision[alive].mean()) if alive.any() else 0.0,
        "lift": float((precision / base)[alive].mean()) if alive.any() else 0.0,
        "top_label": float(top[alive].double().mean()) if alive.any() else 0.0,
        "base_rate": float(base.mean()),
    }
