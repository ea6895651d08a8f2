"""The SDL objective: a reconstruction term plus composable penalty terms.

    loss = Σ_terms coefficient(step) · term(ctx)

Every term sees the same `TermContext` (the batch, the forward pass, the model, the step and the
dead-latent mask) and returns a scalar. A method contributes its terms through its config's
`build_terms()`; the trainer only sums what it is given, so there is no per-method branching here.
Terms that belong to one σ alone (JumpReLU's L0 surrogate, Gated's auxiliary loss) live beside that σ.

From the sparse kernel (sdlkit.core.kernels) the context carries `codes`, x_q's active entries; the terms
of the TopK family read those, and any other term still gets a dense x_q (built on first use).
"""

from __future__ import annotations

from typing import ClassVar, Protocol

import torch
from torch import nn

from sdlkit.core.forward import Forward
from sdlkit.core.kernels import SparsePattern, rows_entries


class Dictionary(Protocol):
    """What a term may read of the model: a `sdlkit.core.model.SparseDictionary` (named by its surface
    here, because the model imports the method registry, which imports these terms)."""

    W_E: torch.Tensor
    W_D: torch.Tensor
    b_D: torch.Tensor | None
    activation: nn.Module
    n_latents: int

    def pre_activations(self, x_p: torch.Tensor, latents: torch.Tensor | None = None) -> torch.Tensor: ...
    def decoder_norms(self) -> torch.Tensor: ...
    def encode_entries(self, x_p: torch.Tensor, pre: torch.Tensor, pattern: SparsePattern) -> torch.Tensor: ...
    def decode_entries(self, values: torch.Tensor, pattern: SparsePattern, bias: bool = True) -> torch.Tensor: ...


class TermContext:
    """What a loss term may read: the batch x_p [B, n_in], x_r [B, n_out]; the forward pass `forward`
    of `model` on it (its z, x_q, x_hat, codes and z_columns are read through, see Forward); the step;
    and `dead`, bool [n_latents], the latents that have not fired for the dead window."""

    def __init__(
        self,
        forward: Forward,
        x_p: torch.Tensor,
        x_r: torch.Tensor,
        model: Dictionary,
        step: int = 0,
        dead: torch.Tensor | None = None,
    ):
        self.forward, self.x_p, self.x_r, self.model, self.step, self.dead = forward, x_p, x_r, model, step, dead
        self.x_hat, self.codes = forward.x_hat, forward.codes

    @property
    def z(self) -> torch.Tensor:
        return self.forward.z

    @property
    def x_q(self) -> torch.Tensor:
        return self.forward.x_q

    def z_columns(self, latents: torch.Tensor) -> torch.Tensor:
        return self.forward.z_columns(latents)


class Term(Protocol):
    """A loss term: `name` for logs, `__call__` returns the already-weighted scalar. The built-in terms
    are modules whose coefficients are buffers (see `as_coefficient`)."""

    name: str

    def __call__(self, ctx: TermContext) -> torch.Tensor: ...


def as_coefficient(value: float) -> torch.Tensor:
    """A coefficient, to register as a term's buffer: an ensemble (sdlkit.train.ensemble) swaps in each
    member's with torch.func.functional_call. float64 holds the config's float exactly; see `scaled`."""
    return torch.tensor(value, dtype=torch.float64)


def scaled(coefficient: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
    """coefficient · value, rounded as if the coefficient were a Python float: both operands in the
    precision torch computes `value`'s products in (float32 for float32 and narrower), then value's dtype."""
    compute = torch.float64 if value.dtype == torch.float64 else torch.float32
    return (value.to(compute) * coefficient.to(compute)).to(value.dtype)


def warmed_up(coefficient: torch.Tensor | float, warmup_steps: int, step: int) -> torch.Tensor | float:
    """Linear coefficient warm-up from ~0 to `coefficient` over `warmup_steps` steps (0 = none)."""
    if warmup_steps <= 0:
        return coefficient
    return coefficient * min(1.0, (step + 1) / warmup_steps)


def squared_error(x_r: torch.Tensor, x_hat: torch.Tensor) -> torch.Tensor:
    """Per-sample ‖x_r − x̂_r‖² [B] (the paper's squared L2 norm, summed over dimensions)."""
    return (x_r - x_hat).pow(2).sum(dim=-1)


class Reconstruction(nn.Module):
    """E ‖x_r − x̂_r‖²: the SDL loss of eq. 3 (mean over the batch, sum over dimensions)."""

    name = "mse"

    def forward(self, ctx: TermContext) -> torch.Tensor:
        return squared_error(ctx.x_r, ctx.x_hat).mean()


class L1Penalty(nn.Module):
    """λ(step) · E Σ_i |x_q,i| · w_i, with w_i = ‖W_D[:, i]‖ (summed over sources for crosscoders)
    when `weight_by_decoder_norm` (Anthropic, April 2024), else w_i = 1."""

    name = "l1"
    on_codes: ClassVar[bool] = True
    """The penalty acts on x_q itself, so on the sparse path it reads the codes' entries. A subclass
    whose `activations` are something else sets it False."""

    def __init__(self, coefficient: float, warmup_steps: int = 0, weight_by_decoder_norm: bool = True):
        super().__init__()
        self.register_buffer("coefficient", as_coefficient(coefficient))
        self.warmup_steps = warmup_steps
        self.weight_by_decoder_norm = weight_by_decoder_norm

    def activations(self, ctx: TermContext) -> torch.Tensor:
        """The non-negative codes the penalty acts on [B, n_latents]."""
        return ctx.x_q

    def forward(self, ctx: TermContext) -> torch.Tensor:
        factor = warmed_up(self.coefficient, self.warmup_steps, ctx.step)
        weights = ctx.model.decoder_norms() if self.weight_by_decoder_norm else None
        if ctx.codes is not None and self.on_codes:
            acts = ctx.codes.values.abs()
            if weights is not None:
                acts = acts * weights[ctx.codes.pattern.latents]
            return scaled(factor, acts.sum()) / ctx.x_hat.shape[0]
        acts = self.activations(ctx).abs()
        if weights is not None:
            acts = acts * weights
        return scaled(factor, acts.sum(dim=-1).mean())


class PrefixReconstruction(nn.Module):
    """Matryoshka (paper eq. 9): Σ_j λ_j E ‖x_r − W_D[:, :m_j] x_q[:m_j] − b_D‖² over nested prefixes.

    `prefixes` are increasing latent counts ending at n_latents. The prefix reconstructions are built
    incrementally, one group of latents at a time, so the cost is that of a single decode.
    """

    name = "mse"

    def __init__(self, prefixes: list[int], weights: list[float]):
        super().__init__()
        self.prefixes = prefixes
        self.weights = weights

    def forward(self, ctx: TermContext) -> torch.Tensor:
        if ctx.codes is not None:
            return self._sparse(ctx)
        model = ctx.model
        partial = torch.zeros_like(ctx.x_r) if model.b_D is None else model.b_D.expand_as(ctx.x_r)
        total = ctx.x_r.new_zeros(())
        start = 0
        for stop, weight in zip(self.prefixes, self.weights, strict=True):
            partial = partial + ctx.x_q[:, start:stop] @ model.W_D[:, start:stop].T
            total = total + weight * squared_error(ctx.x_r, partial).mean()
            start = stop
        return total

    def _sparse(self, ctx: TermContext) -> torch.Tensor:
        """The same sum from the code entries: one decode into a bag per (sample, prefix group), then a
        cumulative sum over the groups gives every prefix's reconstruction."""
        model, codes = ctx.model, ctx.codes
        pattern = codes.pattern
        n_groups = len(self.prefixes)
        bounds = torch.tensor(self.prefixes, device=pattern.latents.device)
        group = torch.searchsorted(bounds, pattern.latents, right=True)  # latents ascend in a row: CSR order kept
        groups = pattern.with_rows(pattern.rows * n_groups + group, pattern.n_rows * n_groups)
        parts = model.decode_entries(codes.values, groups, bias=False).view(pattern.n_rows, n_groups, -1)
        partial = parts.cumsum(dim=1)
        if model.b_D is not None:
            partial = partial + model.b_D
        errors = (ctx.x_r[:, None, :] - partial).pow(2).sum(dim=-1).mean(dim=0)  # [n_groups]
        return (errors * errors.new_tensor(self.weights)).sum()


class AuxK(nn.Module):
    """Gao et al. 2024's auxiliary loss for dead latents, usable with any TopK-family σ.

    The residual e = x_r − x̂_r (detached) is reconstructed from the top-k_aux pre-activations of the
    DEAD latents alone: L_aux = α · E‖e − W_D z_aux‖² / E‖e − ē‖². Normalising by the residual's
    variance makes α scale-free (as EleutherAI's sparsify does); α = 1/32 is Gao et al.'s value.
    Zero when no latent is dead.
    """

    name = "auxk"

    def __init__(self, k_aux: int, coefficient: float):
        super().__init__()
        self.k_aux = k_aux
        self.register_buffer("coefficient", as_coefficient(coefficient))

    def forward(self, ctx: TermContext) -> torch.Tensor:
        if ctx.dead is None:
            return ctx.x_r.new_zeros(())
        if ctx.codes is not None:
            return self._sparse(ctx)
        k = min(self.k_aux, ctx.z.shape[-1])
        # Alive latents are pushed to -inf so top-k picks dead ones; with fewer than k dead latents
        # the rest of the picks are -inf, which relu turns into exact zeros.
        masked = ctx.z.masked_fill(~ctx.dead, float("-inf"))
        values, indices = masked.topk(k, dim=-1)
        z_aux = torch.zeros_like(ctx.z).scatter(-1, indices, values.relu())
        error, variance = _residual_error(ctx, z_aux @ ctx.model.W_D.T)
        # No dead latent: the term is exactly zero without a host sync to test for it.
        return scaled(self.coefficient, error / variance) * ctx.dead.any()

    def _sparse(self, ctx: TermContext) -> torch.Tensor:
        """The same loss from entries: top-k_aux of the dead latents' columns of z (only those columns are
        computed), encoded and decoded by the sparse kernel (the dense form's -inf picks are exact
        zeros, so they are left out)."""
        model = ctx.model
        dead = ctx.dead.nonzero().squeeze(1)
        if dead.numel() == 0:
            return ctx.x_r.new_zeros(())
        pre, picks = ctx.z_columns(dead).topk(min(self.k_aux, dead.numel()), dim=-1, sorted=False)
        pattern, pre = rows_entries(dead[picks], pre, model.n_latents)
        values = model.encode_entries(ctx.x_p, pre, pattern)
        error, variance = _residual_error(ctx, model.decode_entries(values, pattern, bias=False))
        return scaled(self.coefficient, error) / variance


def _residual_error(ctx: TermContext, e_hat: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """E‖e − ê‖² and the residual's variance E‖e − ē‖² (floored) for the residual e = x_r − x̂_r, detached."""
    residual = (ctx.x_r - ctx.x_hat).detach()
    variance = (residual - residual.mean(dim=0)).pow(2).sum(dim=-1).mean().clamp_min(1e-12)
    return squared_error(residual, e_hat).mean(), variance


class Objective(nn.Module):
    """The sum of a method's terms; returns the total and each term's value (detached) for logging.

    Terms that are modules are registered under their names, so that their coefficient buffers are the
    objective's ('l1.coefficient', ...): an ensemble swaps in each member's values."""

    def __init__(self, terms: list[Term]):
        super().__init__()
        names = [t.name for t in terms]
        if len(set(names)) != len(names):
            raise ValueError(f"objective terms must have distinct names, got {names}")
        self.terms = list(terms)
        for term in self.terms:
            if isinstance(term, nn.Module):
                self.add_module(term.name, term)

    def forward(self, ctx: TermContext) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        parts = {term.name: term(ctx) for term in self.terms}
        total = torch.stack(list(parts.values())).sum()
        return total, {name: value.detach() for name, value in parts.items()}
