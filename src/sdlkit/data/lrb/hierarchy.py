"""Hierarchical ground-truth features for the LRB (paper Def 3.2): trees of parents and sub-concepts.

A parent p and its children c_1..c_k satisfy p(x) > 0 ⟺ some c_i(x) > 0. `HierarchyConfig` (the
optional `data.hierarchy` section) describes `n_parents` trees, each node with `children_per_parent`
children, `depth` levels below the roots; `Hierarchy` is the resulting index layout.

Layout (level-major, deterministic): the tree features are the FIRST `n_tree` features of [0, n).
With b = children_per_parent and P = n_parents, level ℓ (ℓ = 0 roots … depth leaves) holds P·b^ℓ
features, stored after all shallower levels:

    offset_ℓ = P·(1 + b + … + b^(ℓ−1))        level ℓ = [offset_ℓ, offset_ℓ + P·b^ℓ)
    children of the k-th feature of level ℓ = offset_(ℓ+1) + k·b + [0, b)

so for P = 2, b = 3, depth = 1: roots 0, 1; children 0 → [2, 3, 4], 1 → [5, 6, 7]; features 8.. are
independent. Depth 2 adds grandchildren 8..25 (children of 2 are 8, 9, 10, …). The leaves are the last
level, contiguous, and every subtree's nodes of one level are contiguous too.

Sampling (`impose_hierarchy`): leaves fire independently with probability 1 − S like every other
feature; then, level by level from the bottom, a non-leaf node is active iff at least one child is.
A node h levels above its leaves is therefore active with probability 1 − S^(b^h) (a depth-1 parent:
1 − S^b), more often than a leaf. Active non-leaf nodes get their own magnitude c_min + Exp(β) like
any active feature (drawn by the caller after the activity pattern is fixed).
"""

from __future__ import annotations

from dataclasses import dataclass
from itertools import pairwise

import torch
from pydantic import BaseModel, ValidationInfo, field_validator

from sdlkit.errors import STRICT_CONFIG

__all__ = ["Hierarchy", "HierarchyConfig", "impose_hierarchy"]


class HierarchyConfig(BaseModel):
    """Trees of parent/child features placed at the start of [0, n) (Def 3.2): the bench's `data.hierarchy`."""

    model_config = STRICT_CONFIG

    n_parents: int
    """Number of trees, i.e. of top-level (root) parent features (>= 1)."""
    children_per_parent: int
    """Branching b: how many children every non-leaf node has (>= 2; one child would be the parent itself
    under Def 3.2)."""
    depth: int = 1
    """Levels below the roots (>= 1): 1 = parents with leaf children; 2 = each child also has b children of its own; and
    so on. A tree has 1 + b + … + b^depth features."""

    @field_validator("n_parents", "depth")
    @classmethod
    def _at_least_one(cls, value: int, info: ValidationInfo) -> int:
        if value < 1:
            raise ValueError(f"{info.field_name} must be >= 1")
        return value

    @field_validator("children_per_parent")
    @classmethod
    def _branching(cls, value: int) -> int:
        if value < 2:
            raise ValueError("children_per_parent must be >= 2 (a parent with one child is that child)")
        return value

    @property
    def n_tree_features(self) -> int:
        """Features the trees use: n_parents · (1 + b + … + b^depth)."""
        b = self.children_per_parent
        return self.n_parents * sum(b**level for level in range(self.depth + 1))

    def build(self) -> Hierarchy:
        """The index layout (see the module docstring)."""
        return Hierarchy.from_shape(self.n_parents, self.children_per_parent, self.depth)


@dataclass(frozen=True)
class Hierarchy:
    """Index layout of the tree features (level-major; see the module docstring).

    levels[ℓ]: the features of level ℓ (levels[0] = roots, levels[-1] = leaves).
    parents: every non-leaf feature (roots and, for depth >= 2, inner nodes), ascending.
    children[p]: the b direct children of non-leaf p. parent_of[c]: the direct parent of non-root c.
    leaves: features without children. n_tree: number of tree features (they are [0, n_tree)).
    pairs: every direct (parent, child) edge, parent-major.
    """

    n_parents: int
    children_per_parent: int
    depth: int
    levels: list[list[int]]
    parents: list[int]
    children: dict[int, list[int]]
    parent_of: dict[int, int]
    leaves: list[int]
    n_tree: int
    pairs: list[tuple[int, int]]

    @classmethod
    def from_shape(cls, n_parents: int, children_per_parent: int, depth: int) -> Hierarchy:
        b = children_per_parent
        levels: list[list[int]] = []
        start = 0
        for level in range(depth + 1):
            size = n_parents * b**level
            levels.append(list(range(start, start + size)))
            start += size
        children: dict[int, list[int]] = {}
        parent_of: dict[int, int] = {}
        for upper, lower in pairwise(levels):
            for k, p in enumerate(upper):
                children[p] = lower[k * b : (k + 1) * b]
                for c in children[p]:
                    parent_of[c] = p
        parents = [p for level in levels[:-1] for p in level]
        pairs = [(p, c) for p in parents for c in children[p]]
        return cls(n_parents, b, depth, levels, parents, children, parent_of, list(levels[-1]), start, pairs)

    @property
    def roots(self) -> list[int]:
        return self.levels[0]

    def height(self, feature: int) -> int:
        """Levels between `feature` and its leaves (0 for a leaf, depth for a root)."""
        for level, members in enumerate(self.levels):
            if members[0] <= feature <= members[-1]:
                return self.depth - level
        raise ValueError(f"feature {feature} is not in the hierarchy [0, {self.n_tree})")

    def activation_probability(self, S: float) -> torch.Tensor:
        """Pr(feature active) for each tree feature [n_tree] (float64): 1 − S^(b^h) at height h."""
        out = torch.empty(self.n_tree, dtype=torch.float64)
        for level, members in enumerate(self.levels):
            leaves_below = self.children_per_parent ** (self.depth - level)
            out[members[0] : members[-1] + 1] = 1 - S**leaves_below
        return out

    def expected_active(self, S: float) -> float:
        """Expected number of active tree features per sample."""
        return float(self.activation_probability(S).sum())


def impose_hierarchy(active: torch.Tensor, hierarchy: Hierarchy) -> torch.Tensor:
    """Make the activity mask `active` [rows, n] (bool) obey Def 3.2, in place, and return it.

    The leaves keep their (independent) draws; each level above is overwritten, bottom-up, with
    "any child active" (a reshape to [rows, nodes, b] and an any(), so no loop over samples). Features
    outside [0, n_tree) are untouched.
    """
    b = hierarchy.children_per_parent
    rows = active.shape[0]
    for upper, lower in reversed(list(pairwise(hierarchy.levels))):
        below = active[:, lower[0] : lower[-1] + 1].reshape(rows, len(upper), b)
        active[:, upper[0] : upper[-1] + 1] = below.any(dim=-1)
    return active
