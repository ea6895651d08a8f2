"""Feature absorption on hierarchical LRB data (paper Thm 3.8, Example 3.7).

With hierarchical features (Def 3.2: parent p active ⟺ some child active) a dictionary can "absorb"
a child c into its own latent: the parent's latent stays silent whenever c is active, and a
c-specific latent, whose decoder column writes w_c + w_p, fires instead (Thm 3.8's pattern
(F_1, …, F_i∖{c}, {c}, …)). This module measures how often that happens.

For every direct (parent p, child c) edge of the source's hierarchy, over samples where c is active
(hence p too) and, by default, c is p's ONLY active child (`sole_child=True`):

    j_p  = the parent's best-matching latent: argmax_j |cos(W_D[:, j], w_r^p)|
    A_c  = the child-aligned latents: {j : cos(W_D[:, j], w_r^c) > cos_threshold}   (signed)
    absorption(c) = Pr( x_q[j_p] == 0  and  some j in A_c has x_q[j] > 0  |  x_c > 0 )

- (a) alone ("parent silent") also counts samples where the parent is simply lost (a dead or
  shrunken parent latent); (b) requires that the child's information went somewhere else, which is
  what absorption is. A dead parent latent with no child latent firing is therefore NOT absorption.
- Matching by DECODER columns (default, against W_r, which is W_p for an SAE) because the decoder
  column is what a latent writes into the reconstruction, i.e. which concept its activity stands for:
  the absorbing latent's signature is a decoder column ≈ w_c + w_p, while its encoder row may read
  mostly w_c. `match="encoder"` uses encoder rows W_E against W_p instead (what makes a latent fire;
  the paper's recovery metric uses these) for both j_p and A_c.
- cos_threshold = 0.5: an absorbing latent writes the child plus the ancestors it replaced. For
  (near-)orthogonal features that is cos 1/√2 ≈ 0.71 with w_c for one absorbed parent and 1/√3 ≈ 0.58
  with a parent and a grandparent (depth 2), both above 0.5; a latent for an unrelated feature has
  cos <= the bench's interference M (0.1 by default). A pure child latent (cos ≈ 1) also qualifies,
  so "parent silent while the child's own latent fires" counts: the parent was not represented.
- Signed cosine for A_c (`absolute=False`): codes are non-negative, so a latent whose decoder column
  is ≈ −w_c never writes the child. The bench only bounds overlaps from ABOVE (<w_i, w_j> <= M), and
  its interference penalty pushes them negative, so another feature's latent can sit at cos −0.5 or
  below with w_c (seen with n_p = 12, n = 10, M = 0); |cos| would count it as the child's.
  `absolute=True` uses |cos|. The parent's latent j_p is `recovery.best_match` (|cos|, as in the
  recovery metrics).
- sole_child (default True): when two children of p are active and only one of them is absorbed,
  the parent latent is silent because of that one, yet the other child's own latent fires too, so
  without the restriction the sibling would be charged with absorption at a rate Pr(absorbed
  sibling active). Restricting to samples where c is p's only active child attributes the
  silence to c (the single-child setting of Thm 3.8). At the bench's sparsity the restriction
  keeps a share S^(b−1) of the samples (98% for S = 0.99, b = 3), so the two nearly coincide;
  `sole_child=False` gives the plain "c active" conditioning.
- An edge whose child was never active in the samples has rate NaN and is left out of the means.

Vectorised over samples: inputs are encoded in batches of `batch_size` and the conditions evaluated
as boolean tensors; only the (few) edges are looped over.
"""

from __future__ import annotations

from typing import Any, Literal

import torch

from sdlkit.core.model import SparseDictionary
from sdlkit.data.lrb.source import LRBSource
from sdlkit.errors import ConfigError, ShapeError
from sdlkit.eval.recovery import best_match

__all__ = ["DEFAULT_COS_THRESHOLD", "absorption_rates", "aligned_latents"]

DEFAULT_COS_THRESHOLD = 0.5
"""|cos| above which a latent counts as aligned with a child (see the module docstring)."""

_EPS = 1e-12


def _directions(model: SparseDictionary, source: LRBSource, match: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(learned [n_q, d] as rows, truth [d, n] as columns) for the chosen matching."""
    if match == "decoder":
        learned, truth = model.W_D.detach().T, source.W_r
    elif match == "encoder":
        learned, truth = model.W_E.detach(), source.W_p
    else:
        raise ConfigError(f"match = {match!r} is not allowed: use 'decoder' or 'encoder'")
    if learned.shape[1] != truth.shape[0]:
        raise ShapeError(
            f"the dictionary's {match} directions have width {learned.shape[1]} but the source's features "
            f"have {truth.shape[0]}: the model was not built for this data"
        )
    return learned, truth.to(learned.device)


@torch.no_grad()
def aligned_latents(
    learned: torch.Tensor, truth: torch.Tensor, threshold: float, absolute: bool = False
) -> torch.Tensor:
    """Boolean [n_q, n]: cos(learned row j, truth column i) > threshold (|cos| when `absolute`); zero
    rows never align."""
    dtype = torch.float64 if torch.float64 in (learned.dtype, truth.dtype) else torch.float32
    rows = learned.to(dtype)
    rows = rows / rows.norm(dim=1, keepdim=True).clamp_min(_EPS)
    cols = truth.to(dtype=dtype, device=learned.device)
    cols = cols / cols.norm(dim=0, keepdim=True).clamp_min(_EPS)
    cos = rows @ cols
    return (cos.abs() if absolute else cos) > threshold


@torch.no_grad()
def absorption_rates(
    model: SparseDictionary,
    source: LRBSource,
    n_samples: int = 8192,
    *,
    codes: torch.Tensor | None = None,
    x_p: torch.Tensor | None = None,
    cos_threshold: float = DEFAULT_COS_THRESHOLD,
    match: Literal["decoder", "encoder"] = "decoder",
    batch_size: int = 4096,
    absorbed_above: float = 0.5,
    sole_child: bool = True,
    absolute: bool = False,
) -> dict[str, Any]:
    """Absorption of every child into its own latent, for a dictionary trained on hierarchical LRB data.

    model: the dictionary (only `encode`, W_E and W_D are used). source: the `LRBSource` it was trained
    on; it must have a hierarchy. Samples: `codes` [N, n] if given (x_p = codes W_pᵀ unless `x_p`
    [N, n_in] is given too), else `n_samples` fresh codes from the source's own "absorption" stream
    (never the training data). See the module docstring for the definition and the defaults.

    Returns a dict:
    - "rates": {child: absorption rate} for every child of the hierarchy (NaN if never active);
    - "parent_silent": {child: Pr(parent latent silent | child active)} (condition (a) alone);
    - "mean_rate": mean rate over children with samples; "absorbed_fraction": share of those children
      with rate > `absorbed_above` (0.5); "n_absorbed": their count;
    - "parents": {parent: {"latent": j_p, "cos": |cos| of j_p with the parent, "children": [...],
      "mean_rate", "absorbed": [children with rate > absorbed_above], "silent_rate": Pr(j_p silent |
      parent active)}};
    - "child_latents": {child: [latents aligned with it]}; "child_counts": {child: samples counted
      (child active, and its parent's only active child when sole_child)}; "n_samples", "match",
      "cos_threshold", "sole_child".
    """
    hierarchy = getattr(source, "hierarchy", None)
    if hierarchy is None:
        raise ConfigError("absorption needs hierarchical data: set data.hierarchy (the source has no hierarchy)")
    if not 0 < cos_threshold < 1:
        raise ConfigError(f"cos_threshold = {cos_threshold!r} is not allowed: it must be in (0, 1)")
    if batch_size < 1:
        raise ConfigError(f"batch_size = {batch_size!r} is not allowed: it must be >= 1")
    learned, truth = _directions(model, source, match)
    device = learned.device

    if codes is None:
        if x_p is not None:
            raise ConfigError("x_p needs its codes: pass codes= with x_p=")
        codes = source.sample_codes(n_samples, "absorption")
    if codes.ndim != 2 or codes.shape[1] != source.config.n_features:
        raise ShapeError(f"codes has shape {tuple(codes.shape)}; [N, {source.config.n_features}] is needed")
    if x_p is not None and (x_p.ndim != 2 or x_p.shape[0] != codes.shape[0]):
        raise ShapeError(f"x_p has shape {tuple(x_p.shape)}; it needs one row per code row ({codes.shape[0]})")

    tree = hierarchy.n_tree
    scores, parent_latent = best_match(learned, truth[:, :tree])
    aligned = aligned_latents(learned, truth[:, :tree], cos_threshold, absolute)  # [n_q, n_tree]
    pairs = hierarchy.pairs
    child_sets = {c: aligned[:, c].nonzero().flatten() for _, c in pairs}

    n_pairs = len(pairs)
    both = torch.zeros(n_pairs, dtype=torch.long, device=device)
    silent = torch.zeros(n_pairs, dtype=torch.long, device=device)
    count = torch.zeros(n_pairs, dtype=torch.long, device=device)
    parents = hierarchy.parents
    parent_idx = torch.tensor(parents, device=device)
    parent_count = torch.zeros(len(parents), dtype=torch.long, device=device)
    parent_silent = torch.zeros(len(parents), dtype=torch.long, device=device)
    W_p = source.W_p
    for start in range(0, codes.shape[0], batch_size):
        c_batch = codes[start : start + batch_size]
        inputs = c_batch.to(W_p.device) @ W_p.T if x_p is None else x_p[start : start + batch_size]
        fires = model.encode(inputs.to(device)) > 0  # [B, n_q]
        truth_active = c_batch[:, :tree].to(device) > 0  # [B, n_tree]
        p_silent = ~fires[:, parent_latent[parent_idx]]  # [B, n_parents_all]
        p_active = truth_active[:, parent_idx]
        parent_count += p_active.sum(0)
        parent_silent += (p_active & p_silent).sum(0)
        n_kids = {p: truth_active[:, hierarchy.children[p]].sum(dim=1) for p in parents} if sole_child else {}
        for k, (p, c) in enumerate(pairs):
            c_active = truth_active[:, c] & (n_kids[p] == 1) if sole_child else truth_active[:, c]
            a = ~fires[:, parent_latent[p]] & c_active
            b = fires[:, child_sets[c]].any(dim=1)
            count[k] += c_active.sum()
            silent[k] += a.sum()
            both[k] += (a & b).sum()

    counts = count.tolist()
    rate_list = [b / n if n else float("nan") for b, n in zip(both.tolist(), counts, strict=True)]
    silent_list = [s / n if n else float("nan") for s, n in zip(silent.tolist(), counts, strict=True)]
    rates = {c: r for (_, c), r in zip(pairs, rate_list, strict=True)}
    seen = [r for r in rate_list if r == r]
    absorbed = [c for c, r in rates.items() if r > absorbed_above]
    per_parent: dict[int, dict[str, Any]] = {}
    for i, p in enumerate(parents):
        kids = hierarchy.children[p]
        kid_rates = [rates[c] for c in kids if rates[c] == rates[c]]
        pc = int(parent_count[i])
        per_parent[p] = {
            "latent": int(parent_latent[p]),
            "cos": float(scores[p]),
            "children": list(kids),
            "mean_rate": sum(kid_rates) / len(kid_rates) if kid_rates else float("nan"),
            "absorbed": [c for c in kids if rates[c] > absorbed_above],
            "silent_rate": int(parent_silent[i]) / pc if pc else float("nan"),
        }
    return {
        "rates": rates,
        "parent_silent": {c: s for (_, c), s in zip(pairs, silent_list, strict=True)},
        "mean_rate": sum(seen) / len(seen) if seen else float("nan"),
        "absorbed_fraction": len(absorbed) / len(seen) if seen else float("nan"),
        "n_absorbed": len(absorbed),
        "parents": per_parent,
        "child_latents": {c: child_sets[c].tolist() for _, c in pairs},
        "child_counts": {c: n for (_, c), n in zip(pairs, counts, strict=True)},
        "n_samples": int(codes.shape[0]),
        "match": match,
        "cos_threshold": cos_threshold,
        "sole_child": sole_child,
        "absolute": absolute,
    }
