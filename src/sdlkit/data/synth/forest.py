"""The feature forest of a SynthSAEBench model: which feature is whose child, which parents have mutually
exclusive children, and how the children's probabilities are compensated.

The layout is the LRB's (sdlkit.data.lrb.hierarchy): n_roots trees of branching b and `depth` levels below the
roots fill [0, n_tree) level by level, so the children of a node are a contiguous index range. SAELens's
`generate_hierarchy` with an integer branching factor builds the same layout (roots first, then breadth-first).

The rules (SAELens's hierarchy modifier, top-down): a child is active only when its parent is; among the
children of an active exclusive parent that were drawn active, one chosen uniformly at random survives; with
`scale_children`, a surviving child's magnitude is multiplied by parent magnitude / parent mean μ.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch

from sdlkit.data.lrb.hierarchy import Hierarchy
from sdlkit.data.synth.config import ForestConfig

__all__ = ["Forest", "build_forest", "compensated"]


@dataclass(frozen=True)
class Forest:
    """Index tensors of a forest over n features (features outside the trees have parent −1, level −1).

    parent [n]: the direct parent or −1; level [n]: 0 for roots, −1 outside the trees; child_start,
    child_count [n]: the children of f are child_start[f] + [0, child_count[f]); exclusive [n] (bool): f's
    children are mutually exclusive; scale_children: magnitudes scale with the parent's; depth: levels below
    the roots.
    """

    parent: torch.Tensor
    level: torch.Tensor
    child_start: torch.Tensor
    child_count: torch.Tensor
    exclusive: torch.Tensor
    scale_children: bool
    depth: int

    @property
    def free(self) -> torch.Tensor:
        """Features drawn without a parent (roots and features outside the trees), ascending [n_free]."""
        return (self.parent < 0).nonzero().squeeze(1)

    def to(self, device: torch.device) -> Forest:
        moved = {f: getattr(self, f).to(device) for f in ("parent", "level", "child_start", "child_count", "exclusive")}
        return replace(self, **moved)


def build_forest(config: ForestConfig, n_features: int, gen: torch.Generator) -> Forest:
    """The forest `config` describes over n_features features. Exclusive parents: all eligible ones (depth >=
    exclusive_min_depth) when exclusive_portion is 1, else a random int(portion · eligible) of them (`gen`)."""
    layout = Hierarchy.from_shape(config.n_roots, config.branching, config.depth)
    n = n_features
    parent = torch.full((n,), -1, dtype=torch.long)
    level = torch.full((n,), -1, dtype=torch.long)
    child_start = torch.zeros(n, dtype=torch.long)
    child_count = torch.zeros(n, dtype=torch.long)
    for depth, members in enumerate(layout.levels):
        level[members[0] : members[-1] + 1] = depth
    for p, children in layout.children.items():
        parent[children[0] : children[-1] + 1] = p
        child_start[p], child_count[p] = children[0], len(children)
    eligible = ((level >= config.exclusive_min_depth) & (child_count >= 2)).nonzero().squeeze(1)
    chosen = int(len(eligible) * config.exclusive_portion)
    if chosen < len(eligible):
        eligible = eligible[torch.randperm(len(eligible), generator=gen)[:chosen]]
    exclusive = torch.zeros(n, dtype=torch.bool)
    exclusive[eligible] = True
    return Forest(parent, level, child_start, child_count, exclusive, config.scale_children, config.depth)


def compensated(forest: Forest, base: torch.Tensor) -> torch.Tensor:
    """Probabilities [n] that make a child's rate after the rules roughly its base probability p_c:
    p_c / p_parent, and for exclusive siblings times 1 + (Σ_siblings p − p_c) / p_parent; clamped at 1.
    (SAELens's `compute_probability_correction_factors`, with base probabilities of the parents.)"""
    child = forest.parent >= 0
    p_parent = base[forest.parent.clamp_min(0)]
    factor = torch.where(child, 1 / p_parent, torch.ones_like(base))
    # Σ p over each sibling group: a cumulative sum read at the group's bounds (groups are contiguous).
    cumulative = torch.cat([base.new_zeros(1), base.cumsum(0)])
    parents = forest.parent.clamp_min(0)
    start, count = forest.child_start[parents], forest.child_count[parents]
    siblings = cumulative[start + count] - cumulative[start]
    exclusive = child & forest.exclusive[parents]
    factor = torch.where(exclusive, factor * (1 + (siblings - base).clamp_min(0) / p_parent), factor)
    return (base * factor).clamp(max=1.0)
