"""Matryoshka SAE (Bussmann et al. 2025; paper eq. 9): nested latent prefixes, each of which must
reconstruct x_r on its own, so early latents learn general features and later ones refine them.

σ is TopK or BatchTopK over all latents; the loss is Σ_j λ_j ‖x_r − W_D[:, :m_j] x_q[:m_j] − b_D‖².
"""

from __future__ import annotations

import itertools
from typing import Literal

from pydantic import Field

from sdlkit.core.method import Activation, AuxKConfig, MethodConfig, check_k, register_method
from sdlkit.core.objective import PrefixReconstruction, Term
from sdlkit.errors import ConfigError
from sdlkit.methods.topk import BatchTopK, BatchTopKConfig, TopK, TopKConfig


@register_method
class MatryoshkaConfig(MethodConfig):
    """Matryoshka SAE over TopK or BatchTopK."""

    name: Literal["matryoshka"] = "matryoshka"
    """Method tag: Matryoshka."""
    topk_family = True
    init_encoder_norm = 0.1  # see ModelConfig.init_encoder_norm
    k: int = Field(32, ge=1)
    """Active latents per sample (mean, for BatchTopK)."""
    selection: Literal["topk", "batchtopk"] = "batchtopk"
    """The σ under the prefixes (Bussmann et al. 2025 use BatchTopK)."""
    prefixes: list[int] | None = None
    """Increasing prefix sizes m_1 < … < m_J = n_latents; default halves down from n_latents:
    n/16, n/8, n/4, n/2, n."""
    prefix_weights: list[float] | None = None
    """λ_j, one per prefix; default 1 each (eq. 9's plain sum)."""
    threshold_momentum: float = Field(0.99, ge=0, lt=1)
    """selection 'batchtopk' only: EMA momentum of the inference threshold θ."""
    auxk: AuxKConfig | None = None
    """Gao et al.'s AuxK loss for dead latents; None = off."""

    def resolved_prefixes(self, n_latents: int) -> list[int]:
        if self.prefixes is None:
            return sorted({max(1, n_latents // 2**j) for j in range(4, -1, -1)})
        prefixes = list(self.prefixes)
        if prefixes[-1] != n_latents or any(a >= b for a, b in itertools.pairwise(prefixes)):
            raise ConfigError(
                f"method.prefixes = {prefixes} is not allowed: it must increase strictly and end at "
                f"model.n_latents = {n_latents}"
            )
        if prefixes[0] < 1:
            raise ConfigError(f"method.prefixes = {prefixes} is not allowed: prefix sizes must be >= 1")
        return prefixes

    def inference_form(self) -> MethodConfig:
        """The prefixes only shape training: a trained Matryoshka dictionary is a TopK or BatchTopK one."""
        if self.selection == "topk":
            return TopKConfig(k=self.k)
        return BatchTopKConfig(k=self.k, threshold_momentum=self.threshold_momentum)

    def build_activation(self, n_latents: int) -> Activation:
        check_k("k", self.k, n_latents)
        self.resolved_prefixes(n_latents)
        if self.selection == "topk":
            return TopK(self.k)
        return BatchTopK(self.k, self.threshold_momentum)

    def build_terms(self, n_latents: int, n_out: int) -> list[Term]:
        prefixes = self.resolved_prefixes(n_latents)
        weights = self.prefix_weights if self.prefix_weights is not None else [1.0] * len(prefixes)
        if len(weights) != len(prefixes):
            raise ConfigError(
                f"method.prefix_weights has {len(weights)} entries but there are {len(prefixes)} prefixes {prefixes}"
            )
        return [PrefixReconstruction(prefixes, weights), *self.auxk_terms(n_out)]
