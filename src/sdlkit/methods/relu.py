"""ReLU + L1 (paper eq. 5; Bricken et al. 2023, Anthropic's April 2024 update)."""

from __future__ import annotations

from typing import ClassVar, Literal

import torch
from pydantic import Field

from sdlkit.core.exchange import Exchange, Reading, Written
from sdlkit.core.method import Activation, MethodConfig, register_method
from sdlkit.core.objective import L1Penalty, Reconstruction, Term


class ReLU(Activation):
    """σ(z) = max(z, 0)."""

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return torch.relu(z)


def _read_saelens(reading: Reading) -> None:
    reading.b_E = reading.take("b_enc") - reading.shift
    reading.method = {"name": "relu"}


def _write_saelens(config: ReLUConfig, activation: ReLU, bias: torch.Tensor) -> Written:
    return Written({"b_enc": bias})


@register_method
class ReLUConfig(MethodConfig):
    """ReLU SAE trained with an L1 penalty on the codes."""

    name: Literal["relu"] = "relu"
    """Method tag: ReLU with an L1 penalty."""
    l1_coefficient: float = Field(0.1, ge=0)
    """λ in E[‖x_r − x̂_r‖² + λ Σ_i |x_q,i| w_i]."""
    l1_warmup_steps: int = Field(0, ge=0)
    """λ rises linearly from 0 over this many steps (Anthropic: the first 5% of training)."""
    weight_by_decoder_norm: bool = True
    """w_i = ‖W_D[:, i]‖ (Anthropic April 2024); matters when decoder norms are free."""
    exchange: ClassVar[dict[str, Exchange | str]] = {
        "saelens": Exchange("standard", _write_saelens, _read_saelens, transcoder="transcoder"),
    }

    def build_activation(self, n_latents: int) -> Activation:
        return ReLU()

    def build_terms(self, n_latents: int, n_out: int) -> list[Term]:
        return [Reconstruction(), L1Penalty(self.l1_coefficient, self.l1_warmup_steps, self.weight_by_decoder_norm)]
