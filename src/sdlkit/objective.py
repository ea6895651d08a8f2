"""The SDL objective: a reconstruction term plus composable penalty terms.

    loss = Σ_terms coefficient(step) · term(ctx)

Every term sees the same `TermContext` (the batch, the forward pass, the model, the step and the
dead-latent mask) and returns a scalar. A method contributes its terms through its config's
`build_terms()`; the trainer only sums what it is given, so there is no per-method branching here.
Terms that belong to one σ alone (JumpReLU's L0 surrogate, Gated's auxiliary loss) live beside that σ.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

import torch

if TYPE_CHECKING:
    from sdlkit.model import SparseDictionary


@dataclass
class TermContext:
    """What a loss term may read. Shapes: x_p [B, n_in], x_r/x_hat [B, n_out], z/x_q [B, n_latents]."""

    x_p: torch.Tensor
    x_r: torch.Tensor
    z: torch.Tensor
    x_q: torch.Tensor
    x_hat: torch.Tensor
    model: SparseDictionary
    step: int = 0
    dead: torch.Tensor | None = None  # bool [n_latents]: latents that have not fired for the dead window


class Term(Protocol):
    """A loss term: `name` for logs, `__call__` returns the already-weighted scalar."""

    name: str

    def __call__(self, ctx: TermContext) -> torch.Tensor: ...


def warmed_up(coefficient: float, warmup_steps: int, step: int) -> float:
    """Linear coefficient warm-up from ~0 to `coefficient` over `warmup_steps` steps (0 = none)."""
    if warmup_steps <= 0:
        return coefficient
    return coefficient * min(1.0, (step + 1) / warmup_steps)


def squared_error(x_r: torch.Tensor, x_hat: torch.Tensor) -> torch.Tensor:
    """Per-sample ‖x_r − x̂_r‖² [B] (the paper's squared L2 norm, summed over dimensions)."""
    return (x_r - x_hat).pow(2).sum(dim=-1)


class Reconstruction:
    """E ‖x_r − x̂_r‖²: the SDL loss of eq. 3 (mean over the batch, sum over dimensions)."""

    name = "mse"

    def __call__(self, ctx: TermContext) -> torch.Tensor:
        return squared_error(ctx.x_r, ctx.x_hat).mean()


class L1Penalty:
    """λ(step) · E Σ_i |x_q,i| · w_i, with w_i = ‖W_D[:, i]‖ (summed over sources for crosscoders)
    when `weight_by_decoder_norm` (Anthropic, April 2024), else w_i = 1."""

    name = "l1"

    def __init__(self, coefficient: float, warmup_steps: int = 0, weight_by_decoder_norm: bool = True):
        self.coefficient = coefficient
        self.warmup_steps = warmup_steps
        self.weight_by_decoder_norm = weight_by_decoder_norm

    def activations(self, ctx: TermContext) -> torch.Tensor:
        """The non-negative codes the penalty acts on [B, n_latents]."""
        return ctx.x_q

    def __call__(self, ctx: TermContext) -> torch.Tensor:
        acts = self.activations(ctx).abs()
        if self.weight_by_decoder_norm:
            acts = acts * ctx.model.decoder_norms()
        return warmed_up(self.coefficient, self.warmup_steps, ctx.step) * acts.sum(dim=-1).mean()


class PrefixReconstruction:
    """Matryoshka (paper eq. 9): Σ_j λ_j E ‖x_r − W_D[:, :m_j] x_q[:m_j] − b_D‖² over nested prefixes.

    `prefixes` are increasing latent counts ending at n_latents. The prefix reconstructions are built
    incrementally, one group of latents at a time, so the cost is that of a single decode.
    """

    name = "mse"

    def __init__(self, prefixes: list[int], weights: list[float]):
        self.prefixes = prefixes
        self.weights = weights

    def __call__(self, ctx: TermContext) -> torch.Tensor:
        model = ctx.model
        partial = torch.zeros_like(ctx.x_r) if model.b_D is None else model.b_D.expand_as(ctx.x_r)
        total = ctx.x_r.new_zeros(())
        start = 0
        for stop, weight in zip(self.prefixes, self.weights, strict=True):
            partial = partial + ctx.x_q[:, start:stop] @ model.W_D[:, start:stop].T
            total = total + weight * squared_error(ctx.x_r, partial).mean()
            start = stop
        return total


class AuxK:
    """Gao et al. 2024's auxiliary loss for dead latents, usable with any TopK-family σ.

    The residual e = x_r − x̂_r (detached) is reconstructed from the top-k_aux pre-activations of the
    DEAD latents alone: L_aux = α · E‖e − W_D z_aux‖² / E‖e − ē‖². Normalising by the residual's
    variance makes α scale-free (as EleutherAI's sparsify does); α = 1/32 is Gao et al.'s value.
    Zero when no latent is dead.
    """

    name = "auxk"

    def __init__(self, k_aux: int, coefficient: float):
        self.k_aux = k_aux
        self.coefficient = coefficient

    def __call__(self, ctx: TermContext) -> torch.Tensor:
        if ctx.dead is None:
            return ctx.x_r.new_zeros(())
        k = min(self.k_aux, ctx.z.shape[-1])
        # Alive latents are pushed to -inf so top-k picks dead ones; with fewer than k dead latents
        # the rest of the picks are -inf, which relu turns into exact zeros.
        masked = ctx.z.masked_fill(~ctx.dead, float("-inf"))
        values, indices = masked.topk(k, dim=-1)
        values = values.relu()
        z_aux = torch.zeros_like(ctx.z).scatter(-1, indices, values)
        residual = (ctx.x_r - ctx.x_hat).detach()
        e_hat = z_aux @ ctx.model.W_D.T
        variance = (residual - residual.mean(dim=0)).pow(2).sum(dim=-1).mean().clamp_min(1e-12)
        loss = squared_error(residual, e_hat).mean() / variance
        # No dead latent: the term is exactly zero without a host sync to test for it.
        return self.coefficient * loss * ctx.dead.any()


class Objective:
    """The sum of a method's terms; returns the total and each term's value (detached) for logging."""

    def __init__(self, terms: list[Term]):
        names = [t.name for t in terms]
        if len(set(names)) != len(names):
            raise ValueError(f"objective terms must have distinct names, got {names}")
        self.terms = list(terms)

    def __call__(self, ctx: TermContext) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        parts = {term.name: term(ctx) for term in self.terms}
        total = torch.stack(list(parts.values())).sum()
        return total, {name: value.detach() for name, value in parts.items()}
