"""JumpReLU with a learned per-latent threshold and an L0 penalty (Rajamanoharan et al. 2024b).

σ(z)_i = z_i · H(z_i − θ_i), θ = exp(log_threshold). H has no useful derivative in θ, so both the
activation and the L0 penalty use straight-through estimators with a rectangle kernel of bandwidth ε:

    ∂/∂θ [z·H(z−θ)] := −(θ/ε) K((z−θ)/ε),     ∂/∂θ H(z−θ) := −(1/ε) K((z−θ)/ε),    K(u) = 1[|u| < ½]

These are the exact θ-derivatives of the ε-smoothed step H_ε(u) = clamp(u/ε + ½, 0, 1) (for the
activation, with z ≈ θ inside the kernel). Gradients to z are the ordinary ones: H(z − θ) for the
activation and none for the L0 penalty.
"""

from __future__ import annotations

import math
from typing import ClassVar, Literal

import torch
from pydantic import Field

from sdlkit.core.exchange import Exchange, Reading, Written
from sdlkit.core.method import Activation, MethodConfig, register_method
from sdlkit.core.objective import Reconstruction, Term, TermContext, as_coefficient, scaled, warmed_up
from sdlkit.errors import CheckpointError


def rectangle(u: torch.Tensor) -> torch.Tensor:
    """K(u) = 1[|u| < ½]: the kernel of the straight-through estimators."""
    return (u.abs() < 0.5).to(u.dtype)


class _JumpReLUFn(torch.autograd.Function):
    generate_vmap_rule = True  # torch.func.vmap works through it (batched training, sdlkit.train.ensemble)

    @staticmethod
    def forward(z: torch.Tensor, threshold: torch.Tensor, bandwidth: float) -> torch.Tensor:
        return z * (z > threshold)

    @staticmethod
    def setup_context(ctx, inputs, output) -> None:
        z, threshold, bandwidth = inputs
        ctx.save_for_backward(z, threshold)
        ctx.bandwidth = bandwidth

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor):
        z, threshold = ctx.saved_tensors
        eps = ctx.bandwidth
        grad_z = grad_out * (z > threshold)
        grad_threshold = -(threshold / eps) * rectangle((z - threshold) / eps) * grad_out
        return grad_z, grad_threshold.sum_to_size(threshold.shape), None


class _StepFn(_JumpReLUFn):
    """H(z − θ), with the same saved context as JumpReLU and the rectangle-kernel gradient for θ only."""

    @staticmethod
    def forward(z: torch.Tensor, threshold: torch.Tensor, bandwidth: float) -> torch.Tensor:
        return (z > threshold).to(z.dtype)

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor):
        z, threshold = ctx.saved_tensors
        eps = ctx.bandwidth
        grad_threshold = -(1.0 / eps) * rectangle((z - threshold) / eps) * grad_out
        return None, grad_threshold.sum_to_size(threshold.shape), None


def jumprelu(z: torch.Tensor, threshold: torch.Tensor, bandwidth: float) -> torch.Tensor:
    """z·H(z − θ) with the straight-through θ-gradient. z [B, n], θ [n]."""
    return _JumpReLUFn.apply(z, threshold, bandwidth)


def step(z: torch.Tensor, threshold: torch.Tensor, bandwidth: float) -> torch.Tensor:
    """H(z − θ) with the straight-through θ-gradient (and no z-gradient). z [B, n], θ [n]."""
    return _StepFn.apply(z, threshold, bandwidth)


class JumpReLU(Activation):
    """σ(z)_i = z_i · H(z_i − θ_i) with θ_i = exp(log_threshold_i) > 0 learned."""

    def __init__(self, n_latents: int, init_threshold: float, bandwidth: float):
        super().__init__()
        self.bandwidth = bandwidth
        self.init_log_threshold = math.log(init_threshold)
        self.log_threshold = torch.nn.Parameter(torch.full((n_latents,), self.init_log_threshold))

    @property
    def threshold(self) -> torch.Tensor:
        return self.log_threshold.exp()

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return jumprelu(z, self.threshold, self.bandwidth)

    def latent_parameters(self) -> dict[str, tuple[torch.Tensor, float]]:
        return {"log_threshold": (self.log_threshold, self.init_log_threshold)}


class L0Penalty(torch.nn.Module):
    """λ(step) · E Σ_i H(z_i − θ_i) ('step'), or λ · E Σ_i tanh(c·|x_q,i|·‖W_D[:, i]‖) ('tanh',
    Anthropic's January 2025 update), a smooth L0 proxy that needs no straight-through estimator."""

    name = "l0"

    def __init__(self, coefficient: float, warmup_steps: int, form: str, tanh_scale: float):
        super().__init__()
        self.register_buffer("coefficient", as_coefficient(coefficient))
        self.warmup_steps = warmup_steps
        self.form = form
        self.tanh_scale = tanh_scale

    def forward(self, ctx: TermContext) -> torch.Tensor:
        activation = ctx.model.activation
        if self.form == "step":
            counts = step(ctx.z, activation.threshold, activation.bandwidth)
        else:
            counts = torch.tanh(self.tanh_scale * ctx.x_q.abs() * ctx.model.decoder_norms())
        return scaled(warmed_up(self.coefficient, self.warmup_steps, ctx.step), counts.sum(dim=-1).mean())


def _write_saelens(config: JumpReLUConfig, activation: JumpReLU, bias: torch.Tensor) -> Written:
    return Written({"b_enc": bias, "threshold": activation.threshold.detach().to(torch.float64)})


def _read_saelens(reading: Reading) -> None:
    """SAELens's f = ReLU(h)·1[h > ReLU(θ)] is ours with log_threshold = log θ, so every θ must be > 0."""
    reading.b_E = reading.take("b_enc") - reading.shift
    if not reading.has("threshold") and reading.has("log_threshold"):
        threshold = reading.take("log_threshold").exp()
        reading.notes.append("log_threshold (older SAELens) read as threshold = exp(log_threshold)")
    else:
        threshold = reading.take("threshold")
    bad = int((threshold <= 0).sum())
    if bad:
        raise CheckpointError(
            f"{reading.weights_path}: {bad} of {len(threshold)} JumpReLU thresholds are <= 0 (smallest "
            f"{threshold.min().item():.3g}); sdlkit stores log(threshold) and needs every threshold > 0"
        )
    reading.extras["log_threshold"] = threshold.log()
    reading.method = {"name": "jumprelu"}


@register_method
class JumpReLUConfig(MethodConfig):
    """JumpReLU SAE trained on reconstruction plus an L0 penalty."""

    name: Literal["jumprelu"] = "jumprelu"
    """Method tag: JumpReLU."""
    l0_coefficient: float = Field(0.01, ge=0)
    """λ of the L0 penalty."""
    l0_warmup_steps: int = Field(0, ge=0)
    """λ rises linearly from 0 over this many steps."""
    l0_form: Literal["step", "tanh"] = "step"
    """'step': Heaviside with straight-through gradients (Rajamanoharan et al.); 'tanh': smooth proxy."""
    tanh_scale: float = Field(4.0, gt=0)
    """c in tanh(c·|x|·‖W_D‖) for l0_form = 'tanh'."""
    bandwidth: float = Field(0.001, gt=0)
    """ε, the kernel width of the straight-through estimators (Rajamanoharan et al.: 0.001)."""
    init_threshold: float = Field(0.001, gt=0)
    """θ at initialisation (Rajamanoharan et al.: 0.001)."""
    exchange: ClassVar[dict[str, Exchange | str]] = {
        "saelens": Exchange("jumprelu", _write_saelens, _read_saelens, transcoder="jumprelu_transcoder"),
    }

    def build_activation(self, n_latents: int) -> Activation:
        return JumpReLU(n_latents, self.init_threshold, self.bandwidth)

    def build_terms(self, n_latents: int, n_out: int) -> list[Term]:
        return [Reconstruction(), L0Penalty(self.l0_coefficient, self.l0_warmup_steps, self.l0_form, self.tanh_scale)]
