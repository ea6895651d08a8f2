"""Codes of a SynthSAEBench model drawn as their active entries: `CodeSampler(model).draw(rows, gen)`.

The distribution is SAELens's (`ActivationGenerator.sample` followed by its hierarchy modifier):

    fire_i  = f_i·z + s_i·η_i > t_i     z ~ N(0, I_rank) per sample, η_i ~ N(0, 1), s_i = √(1 − ‖f_i‖²),
                                        t_i = Φ⁻¹(1 − p_i)      (no copula: fire_i ~ Bernoulli(p_i))
    v_i     = ReLU(μ_i + σ_i·N(0, 1))   when fire_i; a feature with v_i = 0 is inactive
    forest  top-down: a child counts only under an active parent; of the active children of an exclusive
            parent one uniformly random survives; v_child *= v_parent / μ_parent (scale_children)

SAELens draws all n features of every sample and then deletes the children of inactive parents, most of what it
drew (benchmarks/README.md, "SynthSAEBench data speed"). Here the work follows the active entries instead, using
two facts:

1. Given z, features fire independently, with Pr(fire_i | z) = Φ̄((t_i − f_i·z) / s_i). So the children of a
   parent are drawn only where the parent is active, each with its own conditional probability: exact.
2. The free features (roots and features outside the trees) are drawn by thinning. With a = f_i·z ≤ κ‖f_i‖,
   Pr(fire_i | z) <= q_i = Φ̄((t_i − κ‖f_i‖) / s_i); candidates are drawn with probability q_i (geometric gaps,
   cost ∝ candidates, in groups of q within a factor 2) and kept with probability Pr(fire_i | z) / q_i. The
   entries where f̂_i·z > κ (Pr = Φ̄(κ) ≈ 0.13% at κ = 3) break the bound; they are found by one [rows, n_free]
   product with the rank-r factor (a GEMM and a compare, no random numbers) and drawn directly.

Cost per sample: O(n_free · rank) for that product (copula only), plus O((candidates + active entries) · rank).
Without a copula, candidates are Bernoulli(p_i) draws and the cost is ∝ the active entries alone.
"""

from __future__ import annotations

import torch

from sdlkit.data.sampling import bernoulli_positions
from sdlkit.data.synth.features import SynthModel, normal_quantile_upper, normal_upper_tail

__all__ = ["KAPPA", "CodeSampler", "Entries", "bernoulli_positions", "rare_nonzero"]

KAPPA = 3.0
"""Bound on f̂_i·z used by the thinning (see the module docstring): larger means fewer exceptional entries but
more candidates; at 3, ~0.13% of the free entries are exceptional and rare features get ~40 candidates per
firing at the published settings."""
ROW_CHUNK = 1024
"""Rows per block of the copula's free-feature product (memory O(ROW_CHUNK · n_free)); part of the stream's
definition (the blocks draw their candidates in turn), so changing it changes the samples."""

Entries = tuple[torch.Tensor, torch.Tensor, torch.Tensor]
"""Codes as CSR: row_ptr [rows + 1] (int64), col [nnz] (feature, int64, ascending within a row), val [nnz]."""


def rare_nonzero(mask: torch.Tensor) -> torch.Tensor:
    """Flat positions of the True entries of a bool tensor whose True entries are rare: `nonzero` over 8 bytes at
    a time, then only inside the words that hold a hit (the same result as `mask.nonzero()`, ascending; faster on
    one CPU thread: benchmarks/README.md, "Two CPU kernel choices")."""
    flat = mask.reshape(-1)
    pad = (-flat.numel()) % 8
    if pad:
        flat = torch.cat([flat, flat.new_zeros(pad)])
    octets = flat.view(torch.uint8)
    hit = octets.view(torch.int64).nonzero().squeeze(1)
    sub = octets.view(-1, 8)[hit].nonzero()
    return hit[sub[:, 0]] * 8 + sub[:, 1]


def _groups(features: torch.Tensor, q: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor, float]]:
    """`features` (any labels) split into groups whose bound q lies within a factor 2 of the group's largest:
    [(features [m], q [m], q_max)]."""
    bucket = torch.floor(torch.log2(q.max() / q)).long()
    groups = []
    for b in bucket.unique().tolist():
        members = bucket == b
        groups.append((features[members], q[members], float(q[members].max())))
    return groups


class CodeSampler:
    """Draws the codes of `model` on its device (see the module docstring): `draw(rows, gen)` -> CSR entries."""

    def __init__(self, model: SynthModel, kappa: float = KAPPA):
        self.model = model
        self.kappa = kappa
        forest = model.forest
        n = model.n_features
        device = model.vectors.device
        self.free = forest.free if forest is not None else torch.arange(n, device=device)
        self.thresholds = normal_quantile_upper(model.probs)  # float64 [n]
        self.factor = model.factor
        if model.factor is None:
            bound = model.probs[self.free]
        else:
            sq = model.factor.double().pow(2).sum(dim=1)
            self.noise_scale = (1 - sq).sqrt()  # [n]
            self.norms = sq.sqrt()
            self.free_factor = model.factor[self.free]  # [n_free, rank]
            self.free_limit = (kappa * self.norms[self.free]).to(model.factor.dtype)
            bound = normal_upper_tail((self.thresholds - kappa * self.norms)[self.free] / self.noise_scale[self.free])
        self.groups = _groups(torch.arange(len(self.free), device=device), bound)

    # ---- public ----
    @torch.no_grad()
    def draw(self, rows: int, gen: torch.Generator) -> Entries:
        """The codes of `rows` samples, all random numbers from `gen`, as CSR entries sorted by (row, feature)."""
        n = self.model.n_features
        z = None
        if self.factor is not None:
            z = torch.randn(rows, self.factor.shape[1], generator=gen, device=gen.device, dtype=self.factor.dtype)
        row, col = self._free_firing(rows, z, gen)
        val = self._magnitudes(col, gen)
        active = val > 0
        row, col, val = row[active], col[active], val[active]
        parts = [(row, col, val)]
        for _ in range(self.model.forest.depth if self.model.forest is not None else 0):
            row, col, val = self._children(row, col, val, z, gen)
            parts.append((row, col, val))
        row, col, val = (torch.cat(part) for part in zip(*parts, strict=True))
        order = torch.argsort(row * n + col)
        row_ptr = torch.zeros(rows + 1, dtype=torch.int64, device=row.device)
        row_ptr[1:] = torch.bincount(row, minlength=rows).cumsum(0)
        return row_ptr, col[order], val[order]

    def conditional_probability(self, row: torch.Tensor, col: torch.Tensor, z: torch.Tensor | None) -> torch.Tensor:
        """Pr(feature col fires | z of sample row) for entries (row, col) [m] (float64); p_col without a copula."""
        if z is None:
            return self.model.probs[col]
        assert self.factor is not None
        return self._given(col, (self.factor[col] * z[row]).sum(dim=1))

    # ---- internals ----
    def _bernoulli(self, prob: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        """A bool [m]: entry i is True with probability prob[i]."""
        return torch.rand(prob.shape, generator=gen, device=prob.device, dtype=torch.float64) < prob

    def _candidates(self, rows: int, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(row, position in `free`, q) of free entries, each drawn with probability q (its bound)."""
        out = []
        for positions, q, q_max in self.groups:
            m = len(positions)
            flat = bernoulli_positions(rows * m, q_max, gen, positions.device)
            local = flat % m
            keep = self._bernoulli(q[local] / q_max, gen)
            out.append((flat[keep] // m, positions[local[keep]], q[local[keep]]))
        return tuple(torch.cat(part) for part in zip(*out, strict=True))  # type: ignore[return-value]

    def _free_firing(
        self, rows: int, z: torch.Tensor | None, gen: torch.Generator
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(row, col) of the free features that fire (in no particular order)."""
        if z is None:
            row, pos, _ = self._candidates(rows, gen)
            return row, self.free[pos]
        rows_out, cols_out = [], []
        for start in range(0, rows, ROW_CHUNK):
            row, col = self._copula_block(z[start : start + ROW_CHUNK], gen)
            rows_out.append(row + start)
            cols_out.append(col)
        return torch.cat(rows_out), torch.cat(cols_out)

    def _copula_block(self, z: torch.Tensor, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """Free firings of the samples with latent factors z [c, rank]: thinned candidates where a = f·z is
        under its bound κ‖f‖, direct draws where it is over (one [c, n_free] product gives every a)."""
        projection = z @ self.free_factor.T  # [c, n_free]: a for every free entry
        row, pos, q = self._candidates(len(z), gen)
        a = projection[row, pos]
        regular = a <= self.free_limit[pos]
        row, pos, q, a = row[regular], pos[regular], q[regular], a[regular]
        keep = self._bernoulli(self._given(self.free[pos], a) / q, gen)
        hits = rare_nonzero(projection > self.free_limit)
        ex_row, ex_pos = hits // projection.shape[1], hits % projection.shape[1]
        ex_keep = self._bernoulli(self._given(self.free[ex_pos], projection[ex_row, ex_pos]), gen)
        return torch.cat([row[keep], ex_row[ex_keep]]), self.free[torch.cat([pos[keep], ex_pos[ex_keep]])]

    def _given(self, col: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
        """Pr(fire | f_col·z = a) = Φ̄((t_col − a) / s_col) [m] (float64)."""
        return normal_upper_tail((self.thresholds[col] - a.double()) / self.noise_scale[col])

    def _magnitudes(self, col: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        """ReLU(μ + σ·N(0, 1)) for fired entries of features `col` [m]; 0 means the entry is not active."""
        noise = torch.randn(col.shape, generator=gen, device=col.device, dtype=self.model.means.dtype)
        return (self.model.means[col] + self.model.stds[col] * noise).relu_()

    def _children(
        self, row: torch.Tensor, col: torch.Tensor, val: torch.Tensor, z: torch.Tensor | None, gen: torch.Generator
    ) -> Entries:
        """The active children of the active entries (row, col, val) (one level down), after the rules."""
        forest = self.model.forest
        assert forest is not None
        count = forest.child_count[col]
        parent = torch.repeat_interleave(torch.arange(len(col), device=col.device), count)
        offset = torch.arange(len(parent), device=col.device) - torch.repeat_interleave(count.cumsum(0) - count, count)
        child_row, child_col = row[parent], forest.child_start[col][parent] + offset
        fired = self._bernoulli(self.conditional_probability(child_row, child_col, z), gen)
        parent, child_row, child_col = parent[fired], child_row[fired], child_col[fired]
        child_val = self._magnitudes(child_col, gen)
        active = child_val > 0
        parent, child_row, child_col, child_val = (
            parent[active],
            child_row[active],
            child_col[active],
            child_val[active],
        )
        survive = self._exclusion(parent, forest.exclusive[col[parent]], gen)
        parent, child_row, child_col = parent[survive], child_row[survive], child_col[survive]
        child_val = child_val[survive]
        if forest.scale_children:
            child_val = child_val * val[parent] / self.model.means[col[parent]]
        return child_row, child_col, child_val

    @staticmethod
    def _exclusion(parent: torch.Tensor, exclusive: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        """A bool [m] over active children with parent entry ids `parent`: False for all but one uniformly random
        child of each parent entry whose children are `exclusive`."""
        keep = torch.ones(len(parent), dtype=torch.bool, device=parent.device)
        if not exclusive.any():
            return keep
        score = torch.rand(len(parent), generator=gen, device=parent.device, dtype=torch.float64)
        key = parent.double() + 0.5 * score  # sorts by parent entry, then score
        order = torch.argsort(key)
        last = torch.ones(len(order), dtype=torch.bool, device=parent.device)
        last[:-1] = parent[order[1:]] != parent[order[:-1]]
        winner = torch.zeros_like(keep)
        winner[order[last]] = True
        return keep & (winner | ~exclusive)
