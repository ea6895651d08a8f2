"""Gated SAE (Rajamanoharan et al. 2024a): a gate path decides which latents fire, a magnitude path
with the same directions decides how much.

    gate: H(π_gate),  π_gate = W_E x + b_E = z          magnitude: ReLU(exp(r) ⊙ z + c)

The paper writes the magnitude path as exp(r) ⊙ W_E x + b_mag; ours is the same function family
(b_mag = exp(r) ⊙ b_E + c) written on z, so σ only needs the pre-activations. Gated is the one σ that
breaks eq. 10: the code is the magnitude, not z.

Loss: reconstruction + λ Σ_i ReLU(π_gate)_i ‖W_D[:, i]‖ + ‖x_r − (W_D ReLU(π_gate) + b_D)‖² with the
decoder frozen (detached) in the auxiliary term, which trains the gate to reconstruct on its own.
"""

from __future__ import annotations

from typing import ClassVar, Literal

import torch
from pydantic import Field

from sdlkit.core.exchange import Exchange, Reading, Written
from sdlkit.core.method import Activation, MethodConfig, register_method
from sdlkit.core.objective import L1Penalty, Reconstruction, Term, TermContext, as_coefficient, scaled, squared_error
from sdlkit.errors import CheckpointError


class Gated(Activation):
    """σ(z) = H(z) ⊙ ReLU(exp(r_mag) ⊙ z + b_mag); r_mag and b_mag are per-latent parameters."""

    def __init__(self, n_latents: int):
        super().__init__()
        self.r_mag = torch.nn.Parameter(torch.zeros(n_latents))
        self.b_mag = torch.nn.Parameter(torch.zeros(n_latents))

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return (z > 0) * torch.relu(self.r_mag.exp() * z + self.b_mag)

    def latent_parameters(self) -> dict[str, tuple[torch.Tensor, float]]:
        return {"r_mag": (self.r_mag, 0.0), "b_mag": (self.b_mag, 0.0)}


class GateL1(L1Penalty):
    """The L1 penalty on the gate's ReLU(π_gate), not on the codes."""

    name = "l1"
    on_codes = False

    def activations(self, ctx: TermContext) -> torch.Tensor:
        return torch.relu(ctx.z)


class GateReconstruction(torch.nn.Module):
    """‖x_r − (W_D ReLU(π_gate) + b_D)‖² through a frozen decoder (Rajamanoharan et al.'s L_aux)."""

    name = "gate_aux"

    def __init__(self, coefficient: float):
        super().__init__()
        self.register_buffer("coefficient", as_coefficient(coefficient))

    def forward(self, ctx: TermContext) -> torch.Tensor:
        model = ctx.model
        b_D = None if model.b_D is None else model.b_D.detach()
        x_gate = torch.nn.functional.linear(torch.relu(ctx.z), model.W_D.detach(), b_D)
        return scaled(self.coefficient, squared_error(ctx.x_r, x_gate).mean())


def _write_saelens(config: GatedConfig, activation: Gated, bias: torch.Tensor) -> Written:
    """SAELens's gate bias is b_E; its magnitude path xc (W_enc ⊙ e^r) + b_mag needs b_mag = e^r b_E + c."""
    r_mag = activation.r_mag.detach().to(torch.float64)
    b_mag = r_mag.exp() * bias + activation.b_mag.detach().to(torch.float64)
    return Written({"b_gate": bias, "r_mag": r_mag, "b_mag": b_mag})


def _read_saelens(reading: Reading) -> None:
    if reading.config.get("normalize_decoder"):
        raise CheckpointError(f"{reading.config_path}: gated SAEs with normalize_decoder = true are not supported")
    b_gate, r_mag, b_mag = (reading.take(name) for name in ("b_gate", "r_mag", "b_mag"))
    reading.b_E = b_gate - reading.shift
    # magnitude path: xc W_enc e^r + b_mag = e^r (x W_enc + b_E) + (b_mag − e^r b_gate); the shift cancels
    reading.extras |= {"r_mag": r_mag, "b_mag": b_mag - r_mag.exp() * b_gate}
    reading.method = {"name": "gated"}


@register_method
class GatedConfig(MethodConfig):
    """Gated SAE: L1 on the gate, an auxiliary gate reconstruction through the frozen decoder."""

    name: Literal["gated"] = "gated"
    """Method tag: Gated SAE."""
    l1_coefficient: float = Field(0.1, ge=0)
    """λ of the L1 penalty on ReLU(π_gate), weighted by decoder norms."""
    l1_warmup_steps: int = Field(0, ge=0)
    """λ rises linearly from 0 over this many steps."""
    aux_coefficient: float = Field(1.0, ge=0)
    """Weight of the frozen-decoder gate reconstruction (Rajamanoharan et al.: 1)."""
    exchange: ClassVar[dict[str, Exchange | str]] = {
        "saelens": Exchange("gated", _write_saelens, _read_saelens),  # SAELens has no Gated transcoder
    }

    def build_activation(self, n_latents: int) -> Activation:
        return Gated(n_latents)

    def build_terms(self, n_latents: int, n_out: int) -> list[Term]:
        return [
            Reconstruction(),
            GateL1(self.l1_coefficient, self.l1_warmup_steps, weight_by_decoder_norm=True),
            GateReconstruction(self.aux_coefficient),
        ]
