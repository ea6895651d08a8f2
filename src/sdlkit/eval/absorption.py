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
  below with w_c; |cos| would count it as the child's.
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

Vectorised over samples and edges: inputs are encoded in batches of `batch_size` and the conditions of
every edge evaluated at once as [edges, batch] boolean tensors (whether a child-aligned latent fires, and
how many of a parent's children are active, by matmuls with 0/1 matrices: exact, as counts below 2^24 are).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import torch

from sdlkit.core.model import SparseDictionary
from sdlkit.data.lrb.hierarchy import Hierarchy
from sdlkit.data.lrb.source import LRBSource
from sdlkit.errors import ConfigError, ShapeError
from sdlkit.eval.recovery import best_match
from sdlkit.overrides import with_overrides

__all__ = ["DEFAULT_COS_THRESHOLD", "AbsorptionOptions", "absorption_rates", "aligned_latents"]

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


@dataclass(frozen=True)
class AbsorptionOptions:
    """How `absorption_rates` measures (the module docstring gives the definition and why these defaults)."""

    cos_threshold: float = DEFAULT_COS_THRESHOLD
    """cos above which a latent counts as aligned with a child (in (0, 1))."""
    match: Literal["decoder", "encoder"] = "decoder"
    """Match latents by decoder columns against W_r, or by encoder rows against W_p."""
    batch_size: int = 4096
    """Samples encoded at a time."""
    absorbed_above: float = 0.5
    """A child whose rate is above this counts as absorbed."""
    sole_child: bool = True
    """Count only samples where the child is its parent's only active child."""
    absolute: bool = False
    """Align children by |cos| instead of the signed cosine."""

    def __post_init__(self) -> None:
        if not 0 < self.cos_threshold < 1:
            raise ConfigError(f"cos_threshold = {self.cos_threshold!r} is not allowed: it must be in (0, 1)")
        if self.batch_size < 1:
            raise ConfigError(f"batch_size = {self.batch_size!r} is not allowed: it must be >= 1")


@dataclass
class _Edges:
    """The hierarchy's edges as index tensors (E = edges, P = non-leaf features, T = tree features)."""

    parent: torch.Tensor  # long [E]: the edge's parent feature
    child: torch.Tensor  # long [E]: the edge's child feature
    slot: torch.Tensor  # long [E]: the parent's position in hierarchy.parents
    parents: torch.Tensor  # long [P]: hierarchy.parents
    children_of: torch.Tensor  # float [P, T]: 1 where the feature is a direct child of the parent
    parent_latent: torch.Tensor  # long [T]: each tree feature's best-matching latent
    candidates: torch.Tensor  # long [K]: the latents aligned with some child (the only ones the matmul needs)
    aligned: torch.Tensor  # float [E, K]: 1 where candidate latent k is aligned with the edge's child

    @classmethod
    def build(cls, hierarchy: Hierarchy, parent_latent: torch.Tensor, aligned: torch.Tensor) -> _Edges:
        """From the hierarchy, the best-matching latents [T] and the alignment [n_q, T] (bool)."""
        device = aligned.device
        slot_of = {p: i for i, p in enumerate(hierarchy.parents)}
        parent = torch.tensor([p for p, _ in hierarchy.pairs], dtype=torch.long, device=device)
        child = torch.tensor([c for _, c in hierarchy.pairs], dtype=torch.long, device=device)
        slot = torch.tensor([slot_of[p] for p, _ in hierarchy.pairs], dtype=torch.long, device=device)
        children_of = torch.zeros(len(hierarchy.parents), hierarchy.n_tree, device=device)
        children_of[slot, child] = 1.0
        parents = torch.tensor(hierarchy.parents, dtype=torch.long, device=device)
        by_edge = aligned[:, child].T  # [E, n_q]
        candidates = by_edge.any(dim=0).nonzero().flatten()
        by_edge = by_edge[:, candidates].float().contiguous()
        return cls(parent, child, slot, parents, children_of, parent_latent, candidates, by_edge)


@dataclass
class _Counts:
    """Running sample counts: per edge (E) and per non-leaf feature (P), int64."""

    both: torch.Tensor  # [E]: parent latent silent and a child-aligned latent fires, over the counted samples
    silent: torch.Tensor  # [E]: parent latent silent, over the counted samples
    count: torch.Tensor  # [E]: counted samples (child active; its parent's only active child when sole_child)
    parent_count: torch.Tensor  # [P]: samples with the parent active
    parent_silent: torch.Tensor  # [P]: ... and its latent silent

    @classmethod
    def zeros(cls, n_edges: int, n_parents: int, device: torch.device) -> _Counts:
        edge, node = (torch.zeros(n, dtype=torch.long, device=device) for n in (n_edges, n_parents))
        return cls(edge, edge.clone(), edge.clone(), node, node.clone())

    def add(self, fires: torch.Tensor, active: torch.Tensor, edges: _Edges, sole_child: bool) -> None:
        """Add one batch: fires [B, n_q] (latent > 0) and active [B, T] (tree feature > 0), both bool."""
        # Samples along the last axis: picking rows of [n_q, B] / [T, B] is far faster than picking columns.
        fires, active = fires.T.contiguous(), active.T.contiguous()
        parent_active = active[edges.parents]  # [P, B]
        self.parent_count += parent_active.sum(1)
        self.parent_silent += (parent_active & ~fires[edges.parent_latent[edges.parents]]).sum(1)
        counted = active[edges.child]  # [E, B]
        if sole_child:  # the parent's active children, counted by a matmul (exact: small integers in float32)
            sole = (edges.children_of @ active.float()) == 1  # [P, B]
            counted = counted & sole[edges.slot]
        silent = counted & ~fires[edges.parent_latent[edges.parent]]
        child_fires = (edges.aligned @ fires[edges.candidates].float()) > 0  # [E, B]: a child-aligned latent fires
        self.count += counted.sum(1)
        self.silent += silent.sum(1)
        self.both += (silent & child_fires).sum(1)


@torch.no_grad()
def absorption_rates(
    model: SparseDictionary,
    source: LRBSource,
    n_samples: int = 8192,
    *,
    codes: torch.Tensor | None = None,
    x_p: torch.Tensor | None = None,
    options: AbsorptionOptions | None = None,
    **overrides: Any,
) -> dict[str, Any]:
    """Absorption of every child into its own latent, for a dictionary trained on hierarchical LRB data.

    model: the dictionary (only `encode`, W_E and W_D are used). source: the `LRBSource` it was trained
    on; it must have a hierarchy. Samples: `codes` [N, n] if given (x_p = codes W_pᵀ unless `x_p`
    [N, n_in] is given too), else `n_samples` fresh codes from the source's own "absorption" stream
    (never the training data). `options` (or keyword overrides of its fields, e.g. `sole_child=False`):
    see AbsorptionOptions and the module docstring.

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
      "cos_threshold", "sole_child", "absolute".
    """
    options = with_overrides(AbsorptionOptions, options, overrides, "absorption")
    hierarchy = getattr(source, "hierarchy", None)
    if hierarchy is None:
        raise ConfigError("absorption needs hierarchical data: set data.hierarchy (the source has no hierarchy)")
    learned, truth = _directions(model, source, options.match)
    codes = _samples(source, n_samples, codes, x_p)
    truth = truth[:, : hierarchy.n_tree]
    scores, parent_latent = best_match(learned, truth)
    aligned = aligned_latents(learned, truth, options.cos_threshold, options.absolute)  # [n_q, n_tree]
    edges = _Edges.build(hierarchy, parent_latent, aligned)
    counts = _count(model, source, codes, x_p, edges, options)
    rates, silent = _edge_rates(counts)
    report = _summary(hierarchy, rates, silent, options.absorbed_above)
    report["parents"] = _per_parent(hierarchy, rates, counts, scores, parent_latent, options.absorbed_above)
    report["child_latents"] = {c: aligned[:, c].nonzero().flatten().tolist() for _, c in hierarchy.pairs}
    report["child_counts"] = {c: n for (_, c), n in zip(hierarchy.pairs, counts.count.tolist(), strict=True)}
    report["n_samples"] = int(codes.shape[0])
    report.update({name: getattr(options, name) for name in ("match", "cos_threshold", "sole_child", "absolute")})
    return report


def _samples(source: LRBSource, n_samples: int, codes: torch.Tensor | None, x_p: torch.Tensor | None) -> torch.Tensor:
    """The codes [N, n] to measure on: `codes`, else `n_samples` from the source's "absorption" stream."""
    if codes is None:
        if x_p is not None:
            raise ConfigError("x_p needs its codes: pass codes= with x_p=")
        codes = source.sample_codes(n_samples, "absorption")
    if codes.ndim != 2 or codes.shape[1] != source.config.n_features:
        raise ShapeError(f"codes has shape {tuple(codes.shape)}; [N, {source.config.n_features}] is needed")
    if x_p is not None and (x_p.ndim != 2 or x_p.shape[0] != codes.shape[0]):
        raise ShapeError(f"x_p has shape {tuple(x_p.shape)}; it needs one row per code row ({codes.shape[0]})")
    return codes


def _count(
    model: SparseDictionary,
    source: LRBSource,
    codes: torch.Tensor,
    x_p: torch.Tensor | None,
    edges: _Edges,
    options: AbsorptionOptions,
) -> _Counts:
    """Encode the samples `options.batch_size` at a time and count the conditions of every edge."""
    device, tree, W_p = edges.children_of.device, edges.children_of.shape[1], source.W_p
    counts = _Counts.zeros(len(edges.child), len(edges.parents), device)
    for start in range(0, codes.shape[0], options.batch_size):
        c_batch = codes[start : start + options.batch_size]
        inputs = c_batch.to(W_p.device) @ W_p.T if x_p is None else x_p[start : start + options.batch_size]
        fires = model.encode(inputs.to(device)) > 0  # [B, n_q]
        counts.add(fires, c_batch[:, :tree].to(device) > 0, edges, options.sole_child)
    return counts


def _ratio(hits: list[int], totals: list[int]) -> list[float]:
    return [h / n if n else float("nan") for h, n in zip(hits, totals, strict=True)]


def _edge_rates(counts: _Counts) -> tuple[list[float], list[float]]:
    """(absorption rate, parent-silent rate) per edge; NaN where no sample was counted."""
    totals = counts.count.tolist()
    return _ratio(counts.both.tolist(), totals), _ratio(counts.silent.tolist(), totals)


def _summary(hierarchy: Hierarchy, rates: list[float], silent: list[float], absorbed_above: float) -> dict[str, Any]:
    """Per-child rates and their means over the children with samples (NaN rates left out)."""
    children = [c for _, c in hierarchy.pairs]
    seen = [r for r in rates if r == r]
    absorbed = [c for c, r in zip(children, rates, strict=True) if r > absorbed_above]
    return {
        "rates": dict(zip(children, rates, strict=True)),
        "parent_silent": dict(zip(children, silent, strict=True)),
        "mean_rate": sum(seen) / len(seen) if seen else float("nan"),
        "absorbed_fraction": len(absorbed) / len(seen) if seen else float("nan"),
        "n_absorbed": len(absorbed),
    }


def _per_parent(
    hierarchy: Hierarchy,
    rates: list[float],
    counts: _Counts,
    scores: torch.Tensor,
    parent_latent: torch.Tensor,
    absorbed_above: float,
) -> dict[int, dict[str, Any]]:
    """Each parent's latent, its match, its children's rates and how often its latent is silent."""
    rate_of = {c: r for (_, c), r in zip(hierarchy.pairs, rates, strict=True)}
    silent_rates = _ratio(counts.parent_silent.tolist(), counts.parent_count.tolist())
    out: dict[int, dict[str, Any]] = {}
    for p, silent_rate in zip(hierarchy.parents, silent_rates, strict=True):
        kids = hierarchy.children[p]
        kid_rates = [rate_of[c] for c in kids if rate_of[c] == rate_of[c]]
        out[p] = {
            "latent": int(parent_latent[p]),
            "cos": float(scores[p]),
            "children": list(kids),
            "mean_rate": sum(kid_rates) / len(kid_rates) if kid_rates else float("nan"),
            "absorbed": [c for c in kids if rate_of[c] > absorbed_above],
            "silent_rate": silent_rate,
        }
    return out
