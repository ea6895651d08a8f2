"""What a method is, and the registry of them: every SDL method is one activation σ plus its loss terms.

A method is a pydantic config class (`MethodConfig` subclass) registered under its `name`. The config
builds the σ module (`build_activation`) and the loss terms (`build_terms`), so adding a method is one
small file in sdlkit.methods: a σ, its config, `@register_method`. The registry lives here, in the core,
so that the model can resolve a method by name without importing the methods; importing `sdlkit`
imports sdlkit.methods, which registers the built-in ones.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from pydantic import BaseModel, Field
from torch import nn

from sdlkit.core.exchange import Exchange
from sdlkit.core.kernels import Chunks, SparsePattern
from sdlkit.core.objective import AuxK, Reconstruction, Term
from sdlkit.errors import STRICT_CONFIG, ConfigError


class Activation(nn.Module):
    """σ: pre-activations z = W_E x_p + b_E [B, n_latents] → codes x_q [B, n_latents].

    Every σ except gated satisfies the paper's eq. 10: σ(z)_i ∈ {0, z_i}.
    """

    def latent_parameters(self) -> dict[str, tuple[torch.Tensor, float]]:
        """Per-latent parameters (dim 0 indexes latents) and the value resampling resets them to."""
        return {}

    def select(self, chunks: Chunks, n_rows: int) -> tuple[SparsePattern, torch.Tensor]:
        """For the sparse kernel: the entries of z that σ keeps (σ(z) = ReLU(z) there, 0 elsewhere)
        and z at them [nnz]. z [n_rows, n_latents] arrives as consecutive row blocks, so it never has
        to exist whole. Only the TopK family (`MethodConfig.topk_family`) implements it."""
        raise NotImplementedError(f"{type(self).__name__} has no sparse kernel")

    has_post_step: ClassVar[bool] = False
    """True when the σ overrides `post_step`: a stacked ensemble (sdlkit.train.ensemble) cannot run it,
    so it refuses such a method."""

    def post_step(self) -> None:
        """Called after every optimiser step (e.g. to keep a parameter in its domain). A σ that overrides
        it sets `has_post_step`."""


class AuxKConfig(BaseModel):
    """Gao et al. 2024's AuxK loss for dead latents (TopK family only)."""

    model_config = STRICT_CONFIG

    k_aux: int | None = Field(None, ge=1)
    """Dead latents used to model the residual; default n_out // 2 (as sparsify; Gao et al. used 512)."""
    coefficient: float = Field(1 / 32, ge=0)
    """α in L + α·L_aux (Gao et al.)."""


class MethodConfig(BaseModel):
    """Base of every method's config. Subclasses set `name` to a Literal and register themselves."""

    model_config = STRICT_CONFIG

    name: str
    init_encoder_norm: ClassVar[float | None] = None
    """Row norm of W_E at initialisation unless `model.init_encoder_norm` says otherwise; None = the
    decoder's column norms (W_E = W_Dᵀ)."""
    topk_family: ClassVar[bool] = False
    """True for σ that select a fixed number of latents (TopK, BatchTopK, Matryoshka): AuxK applies,
    and σ implements `Activation.select`, so the sparse kernel (sdlkit.core.kernels) can train it."""
    exchange: ClassVar[dict[str, Exchange | str]] = {}
    """Its form in other libraries' formats by format name (sdlkit.core.exchange, used by sdlkit.interop);
    a string says why a format cannot hold it."""

    def inference_form(self) -> MethodConfig:
        """The method whose σ this one uses at inference, which is what an export writes: itself, unless
        the method only shapes training around another σ (Matryoshka)."""
        return self

    def build_activation(self, n_latents: int) -> Activation:
        raise NotImplementedError

    def build_terms(self, n_latents: int, n_out: int) -> list[Term]:
        """The method's loss terms; the default is plain reconstruction plus AuxK when configured."""
        return [Reconstruction(), *self.auxk_terms(n_out)]

    def auxk_terms(self, n_out: int) -> list[Term]:
        auxk: AuxKConfig | None = getattr(self, "auxk", None)
        if auxk is None:
            return []
        return [AuxK(max(1, n_out // 2) if auxk.k_aux is None else auxk.k_aux, auxk.coefficient)]


METHODS: dict[str, type[MethodConfig]] = {}


def register_method(cls: type[MethodConfig]) -> type[MethodConfig]:
    """Class decorator: make `cls` available under its `name` default."""
    name = cls.model_fields["name"].default
    if not isinstance(name, str):
        raise TypeError(f"{cls.__name__}.name needs a string default")
    METHODS[name] = cls
    return cls


def method_config(spec: MethodConfig | dict[str, Any] | str) -> MethodConfig:
    """Build a method config from a name, a dict with a `name`, or pass an instance through."""
    if isinstance(spec, MethodConfig):
        return spec
    if isinstance(spec, str):
        spec = {"name": spec}
    if not isinstance(spec, dict) or "name" not in spec:
        raise ConfigError(f"method must be a mapping with a 'name' (one of {sorted(METHODS)}), got {spec!r}")
    name = spec["name"]
    if name not in METHODS:
        raise ConfigError(f"unknown method {name!r}; known methods: {', '.join(sorted(METHODS))}")
    cls = METHODS[name]
    unknown = sorted(set(spec) - set(cls.model_fields))
    if unknown:
        raise ConfigError(
            f"unknown option {unknown[0]!r} of method {name}; allowed here: {', '.join(cls.model_fields)}"
        )
    return cls.model_validate(spec)


def check_k(field: str, k: int, n_latents: int) -> None:
    """k must select at least one and at most all latents."""
    if not 1 <= k <= n_latents:
        raise ConfigError(f"method.{field} = {k} is not allowed: it must be in [1, model.n_latents = {n_latents}]")
