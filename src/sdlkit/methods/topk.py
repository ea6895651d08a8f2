"""TopK (Makhzani & Frey 2014; Gao et al. 2024) and BatchTopK (Bussmann et al. 2024)."""

from __future__ import annotations

from typing import ClassVar, Literal

import torch
from pydantic import Field

from sdlkit.core.exchange import Exchange, Reading, Written
from sdlkit.core.kernels import Chunks, SparsePattern, select_above, select_batch_topk, select_topk
from sdlkit.core.method import Activation, AuxKConfig, MethodConfig, check_k, register_method


def topk_per_sample(z: torch.Tensor, k: int) -> torch.Tensor:
    """Keep the k largest entries of each row, then ReLU: exactly min(k, #positive) non-zeros a row."""
    values, indices = z.topk(k, dim=-1, sorted=False)
    return torch.zeros_like(z).scatter(-1, indices, values.relu())


class TopK(Activation):
    """σ(z) = ReLU(TopK_k(z)) per sample (paper eq. 7)."""

    def __init__(self, k: int):
        super().__init__()
        self.k = k

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return topk_per_sample(z, self.k)

    def select(self, chunks: Chunks, n_rows: int) -> tuple[SparsePattern, torch.Tensor]:
        return select_topk(chunks, self.k)


class BatchTopK(Activation):
    """Training: keep the k·B largest entries of the whole batch (samples get different L0s).
    Inference: σ(z)_i = z_i · 1[z_i > θ] with θ the running mean of the smallest kept value, so a
    sample's code does not depend on the rest of its batch (Bussmann et al. 2024)."""

    def __init__(self, k: int, threshold_momentum: float = 0.99):
        super().__init__()
        self.k = k
        self.threshold_momentum = threshold_momentum
        self.register_buffer("threshold", torch.zeros(()))
        self.register_buffer("threshold_initialised", torch.zeros((), dtype=torch.bool))

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        if not self.training:
            return z * (z > self.threshold.clamp_min(0))
        flat = z.reshape(-1)
        values, indices = flat.topk(min(self.k * z.shape[0], flat.numel()), sorted=False)
        values = values.relu()
        self._update_threshold(values.detach())
        return torch.zeros_like(flat).scatter(0, indices, values).reshape(z.shape)

    def select(self, chunks: Chunks, n_rows: int) -> tuple[SparsePattern, torch.Tensor]:
        if not self.training:
            return select_above(chunks, self.threshold.clamp_min(0))
        pattern, pre = select_batch_topk(chunks, self.k * n_rows)
        self._update_threshold(pre.detach().relu())
        return pattern, pre

    @torch.no_grad()
    def _update_threshold(self, kept: torch.Tensor) -> None:
        """θ ← EMA of the smallest positive kept value; a batch with none leaves θ alone (no host sync)."""
        batch_min = kept.masked_fill(kept <= 0, float("inf")).min().to(self.threshold.dtype)
        valid = torch.isfinite(batch_min)
        m = self.threshold_momentum
        blended = torch.where(self.threshold_initialised, m * self.threshold + (1 - m) * batch_min, batch_min)
        self.threshold.copy_(torch.where(valid, blended, self.threshold))
        self.threshold_initialised.logical_or_(valid)


# ----- exchange with SAELens and sparsify (sdlkit.core.exchange) ---------------------------------------
def _read_topk_saelens(reading: Reading) -> None:
    """SAELens 'topk'; with rescale_acts_by_decoder_norm, folded into weights with unit decoder columns."""
    b_E = reading.take("b_enc") - reading.shift
    reading.method = {"name": "topk", "k": reading.integer("k")}
    if reading.config.get("rescale_acts_by_decoder_norm"):
        # TopK ranks h·‖W_dec row‖ and decodes f/‖W_dec row‖: fold both scalings into the weights
        norms = reading.W_D.norm(dim=0)
        reading.W_E, b_E = reading.W_E * norms[:, None], b_E * norms
        reading.W_D = reading.W_D / torch.where(norms > 0, norms, 1.0)  # zero columns stay zero
        reading.notes.append("rescale_acts_by_decoder_norm folded into W_E, b_E and unit-norm decoder columns")
    reading.b_E = b_E


def _read_topk_sparsify(reading: Reading) -> None:
    reading.b_E = reading.take("encoder.bias") - reading.shift
    reading.method = {"name": "topk", "k": reading.integer("k")}


def _write_topk_saelens(config: TopKConfig, activation: TopK, bias: torch.Tensor) -> Written:
    return Written({"b_enc": bias}, {"k": config.k, "rescale_acts_by_decoder_norm": False})


def _write_topk_sparsify(config: TopKConfig, activation: TopK, bias: torch.Tensor) -> Written:
    return Written({"encoder.bias": bias}, {"k": config.k})


def _write_batchtopk_saelens(config: BatchTopKConfig, activation: BatchTopK, bias: torch.Tensor) -> Written:
    """The inference form: JumpReLU with the learned global threshold on every latent (SAELens saves its
    own BatchTopK SAEs that way), so codes no longer depend on the batch."""
    threshold = activation.threshold.detach().to(torch.float64).clamp_min(0).expand(len(bias))
    note = (
        f"BatchTopK exported in its inference form: JumpReLU with the learned global threshold "
        f"{threshold[0].item():.6g} on every latent (codes no longer depend on the batch)"
    )
    return Written({"b_enc": bias, "threshold": threshold}, notes=[note])


@register_method
class TopKConfig(MethodConfig):
    """TopK SAE: exactly k active latents per sample; no sparsity penalty needed."""

    name: Literal["topk"] = "topk"
    """Method tag: TopK."""
    topk_family = True
    init_encoder_norm = 0.1  # see ModelConfig.init_encoder_norm
    k: int = Field(32, ge=1)
    """Active latents per sample; set it to the true L0 of the data when known."""
    auxk: AuxKConfig | None = None
    """Gao et al.'s AuxK loss for dead latents; None = off."""
    exchange: ClassVar[dict[str, Exchange | str]] = {
        "saelens": Exchange("topk", _write_topk_saelens, _read_topk_saelens),  # SAELens has no TopK transcoder
        "sparsify": Exchange("topk", _write_topk_sparsify, _read_topk_sparsify, transcoder="topk"),
    }

    def build_activation(self, n_latents: int) -> Activation:
        check_k("k", self.k, n_latents)
        return TopK(self.k)


@register_method
class BatchTopKConfig(MethodConfig):
    """BatchTopK SAE: k·batch active latents per batch, a learned threshold at inference."""

    name: Literal["batchtopk"] = "batchtopk"
    """Method tag: BatchTopK."""
    topk_family = True
    init_encoder_norm = 0.1  # see ModelConfig.init_encoder_norm
    k: int = Field(32, ge=1)
    """Mean active latents per sample."""
    threshold_momentum: float = Field(0.99, ge=0, lt=1)
    """EMA momentum of the inference threshold θ."""
    auxk: AuxKConfig | None = None
    """Gao et al.'s AuxK loss for dead latents; None = off."""
    exchange: ClassVar[dict[str, Exchange | str]] = {
        "saelens": Exchange("jumprelu", _write_batchtopk_saelens, transcoder="jumprelu_transcoder"),
        "sparsify": "uses a BatchTopK threshold at inference, which sparsify's per-sample TopK cannot express: "
        "export it with --format saelens (as JumpReLU)",
    }

    def build_activation(self, n_latents: int) -> Activation:
        check_k("k", self.k, n_latents)
        return BatchTopK(self.k, self.threshold_momentum)
