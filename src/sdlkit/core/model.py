"""SparseDictionary: the one model behind every SDL method (paper eq. 1–3).

    z = W_E x_p + b_E        x_q = σ(z)        x̂_r = W_D x_q + b_D

W_E [n_latents, n_in], b_E [n_latents], W_D [n_out, n_latents], b_D [n_out]. The method (σ and its
loss terms) comes from the registry; the data pair decides SAE (n_in = n_out, x_r = x_p), transcoder
(n_in may differ from n_out) or crosscoder (m sources concatenated; `in_blocks`/`out_blocks` give
the per-source widths so penalties and metrics can see them).

No pre-encoder bias subtraction: σ(W_E(x − b_D) + b_E) = σ(W_E x + b'_E) is the same function, and
the unified form must also serve transcoders, whose x_p and x_r live in different spaces.

Two kernels compute the same function: 'dense' (the reference: x_q is a [B, n_latents] tensor) and,
for the TopK family, 'sparse' (sdlkit.core.kernels: x_q is kept as its active entries, the decoder reads
only their columns, and the backward never builds a [B, n_latents] gradient).
"""

from __future__ import annotations

from collections.abc import Iterator
from functools import partial
from typing import Any, Literal

import torch
from pydantic import BaseModel, Field, SerializeAsAny, field_validator, model_validator
from torch import nn
from torch.nn import functional as F

from sdlkit.core.forward import Forward
from sdlkit.core.kernels import SparseCodes, SparsePattern, decode_entries, encode_entries
from sdlkit.core.method import MethodConfig, method_config
from sdlkit.errors import STRICT_CONFIG, ConfigError, ShapeError

DTYPES = {"float32": torch.float32, "float64": torch.float64, "bfloat16": torch.bfloat16}
SPARSE_CHUNK_ENTRIES = 1 << 23
"""The sparse kernel computes z in row blocks of about this many entries (32 MB in float32, one buffer
reused for every block): far below [B, n_latents], large enough for a full-speed GEMM."""
BLOCK_ENTRIES = 1 << 24
"""`SparseDictionary.blocks` runs the forward on row blocks of about this many codes (64 MB of a dense
[rows, n_latents] float32 x_q), so evaluation and the browser hold no more whatever the batch size."""


class ModelConfig(BaseModel):
    """Shape and constraints of a dictionary. n_in/n_out/blocks are filled from the data when omitted."""

    model_config = STRICT_CONFIG

    n_latents: int = Field(gt=0)
    """n_q, the number of dictionary latents."""
    n_in: int | None = Field(None, gt=0)
    """n_p, the width of x_p."""
    n_out: int | None = Field(None, gt=0)
    """n_r, the width of x_r (defaults to n_in)."""
    in_blocks: list[int] | None = None
    """Per-source widths of x_p for crosscoders (sum = n_in); default one block."""
    out_blocks: list[int] | None = None
    """Per-source widths of x_r (sum = n_out); default one block."""
    bias: bool = True
    """Learn b_E and b_D. The theory has none: set false to match it."""
    unit_norm_decoder: bool = True
    """Hold every decoder column at unit norm: the column-parallel gradient is projected out before
    each step and the columns renormalised after it."""
    init_decoder_norm: float = Field(0.1, gt=0)
    """Column norm of W_D at initialisation when `unit_norm_decoder` is false (Anthropic: 0.1)."""
    init_encoder_norm: float | None = Field(None, gt=0)
    """Row norm of W_E at initialisation (each row along its latent's decoder column). None = the
    method's choice, `method.init_encoder_norm`: 0.1 for the TopK family, the decoder's column norms
    for the others. Adam moves a weight by about lr per coordinate per step whatever its size, so small
    rows turn toward their features faster before TopK's competition silences them (benchmarks/README.md,
    "TopK recipes against sparsify and SAELens")."""
    dtype: Literal["float32", "float64", "bfloat16"] = "float32"
    """Dtype of the weights (and of the optimiser state)."""
    method: SerializeAsAny[MethodConfig] = Field(default_factory=lambda: method_config("topk"))
    """σ and its loss terms, e.g. {name: topk, k: 32}."""
    kernel: Literal["auto", "dense", "sparse"] = "auto"
    """How the forward and backward are computed (same function either way): 'dense' with
    [B, n_latents] codes (the reference); 'sparse' from the active entries alone (TopK family only; faster
    at large n_latents: benchmarks/README.md, "Training throughput"); 'auto' = sparse for the TopK family,
    dense otherwise."""

    @field_validator("method", mode="before")
    @classmethod
    def _method(cls, value: Any) -> MethodConfig:
        return method_config(value)

    @model_validator(mode="after")
    def _kernel(self) -> ModelConfig:
        if self.kernel == "sparse" and not self.method.topk_family:
            raise ValueError(
                f"kernel = 'sparse' needs a TopK-family method (topk, batchtopk, matryoshka) but method is "
                f"{self.method.name}; use kernel auto or dense"
            )
        return self

    @property
    def sparse_kernel(self) -> bool:
        """Whether training uses the sparse kernel ('auto' resolved)."""
        return self.kernel == "sparse" or (self.kernel == "auto" and self.method.topk_family)

    @model_validator(mode="after")
    def _blocks(self) -> ModelConfig:
        if self.n_in is None:
            return self
        if self.n_out is None:
            self.n_out = self.n_in
        for side, total in (("in", self.n_in), ("out", self.n_out)):
            blocks = getattr(self, f"{side}_blocks")
            if blocks is None:
                setattr(self, f"{side}_blocks", [total])
            elif sum(blocks) != total or min(blocks) <= 0:
                raise ValueError(f"{side}_blocks = {blocks} must be positive widths summing to n_{side} = {total}")
        return self

    @property
    def torch_dtype(self) -> torch.dtype:
        return DTYPES[self.dtype]


@torch.no_grad()
def normalize_columns_(W_D: torch.Tensor) -> None:
    """Rescale every column of W_D [..., n_out, n_latents] to unit norm in place (zero columns stay zero).
    Leading dims are a stack of dictionaries (sdlkit.train.ensemble)."""
    W_D.div_(W_D.norm(dim=-2, keepdim=True).clamp_min(1e-12))


@torch.no_grad()
def project_columns_(grad: torch.Tensor, W_D: torch.Tensor) -> None:
    """Remove in place from `grad` the part parallel to each unit column of W_D, both [..., n_out, n_latents]."""
    parallel = grad.new_zeros(*grad.shape[:-2], 1, grad.shape[-1])
    for g, w in zip(grad.split(64, dim=-2), W_D.split(64, dim=-2), strict=True):  # no W_D-sized temporary
        parallel += (g * w).sum(dim=-2, keepdim=True)
    grad.addcmul_(parallel, W_D, value=-1)


def available_memory(device: str | torch.device) -> int | None:
    """Bytes free on `device` now (the CPU: MemAvailable of /proc/meminfo), or None where unknown."""
    device = torch.device(device)
    if device.type == "cuda":  # free on the card, plus what torch's caching allocator holds but does not use
        return (
            torch.cuda.mem_get_info(device)[0]
            + torch.cuda.memory_reserved(device)
            - torch.cuda.memory_allocated(device)
        )
    try:
        with open("/proc/meminfo") as handle:
            fields = dict(line.split(":", 1) for line in handle if ":" in line)
        return int(fields["MemAvailable"].split()[0]) * 1024
    except (OSError, KeyError, ValueError):
        return None


def check_fits(config: ModelConfig, device: str | torch.device, copies: int, what: str) -> None:
    """ConfigError, before anything is allocated, when `copies` × the dictionary's parameters (in bytes
    of its dtype) exceed the memory free on `device`: it names what is needed and what is there."""
    n_params = config.n_latents * (config.n_in + config.n_out + 2) + config.n_out
    need = copies * n_params * torch.finfo(config.torch_dtype).bits // 8
    free = available_memory(device)
    if free is not None and need > free:
        raise ConfigError(
            f"model.n_latents = {config.n_latents} with n_in = {config.n_in}, n_out = {config.n_out} is "
            f"{n_params:,} parameters: {what} need {format_size(need)} but {torch.device(device)} has "
            f"{format_size(free)} free; lower model.n_latents"
        )


def format_size(n_bytes: float) -> str:
    """A byte count for people: '34.4 GB' (powers of 1000)."""
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if n_bytes < 1000 or unit == "TB":
            return f"{n_bytes:,.1f} {unit}"
        n_bytes /= 1000
    return f"{n_bytes} B"


class SparseDictionary(nn.Module):
    """Encoder, σ, decoder. Build from a `ModelConfig` whose n_in is set."""

    def __init__(self, config: ModelConfig, generator: torch.Generator | None = None):
        super().__init__()
        if config.n_in is None:
            raise ConfigError("model.n_in is not set: give it, or build the model from a data source")
        # The weights are drawn in float64 on the CPU: up to 4 float64 copies of them exist at once.
        check_fits(config.model_copy(update={"dtype": "float64"}), "cpu", 4, "the initialisation's float64 weights")
        self.config = config
        n_in, n_out, n_latents = config.n_in, config.n_out, config.n_latents
        dtype = config.torch_dtype
        self.method = config.method
        self.activation = config.method.build_activation(n_latents)

        W_D = torch.randn(n_out, n_latents, generator=generator, dtype=torch.float64)
        W_D = W_D / W_D.norm(dim=0, keepdim=True)
        if not config.unit_norm_decoder:
            W_D = W_D * config.init_decoder_norm
        if n_in == n_out:  # the encoder along the decoder's transpose
            W_E = W_D.T
        else:  # transcoder with n_in ≠ n_out: no transpose exists; random directions, the decoder's norms
            W_E = torch.randn(n_latents, n_in, generator=generator, dtype=torch.float64)
            W_E = W_E / W_E.norm(dim=1, keepdim=True) * W_D.norm(dim=0)[:, None]
        encoder_norm = config.init_encoder_norm or config.method.init_encoder_norm
        if encoder_norm is not None:
            W_E = W_E / W_E.norm(dim=1, keepdim=True) * encoder_norm
        # Contiguous, because fused Adam assumes a parameter, its gradient and its moments share one
        # memory layout (a resumed state is contiguous).
        W_E = W_E.contiguous()
        self.W_E = nn.Parameter(W_E.to(dtype))
        self.W_D = nn.Parameter(W_D.to(dtype))
        self.b_E = nn.Parameter(torch.zeros(n_latents, dtype=dtype)) if config.bias else None
        self.b_D = nn.Parameter(torch.zeros(n_out, dtype=dtype)) if config.bias else None
        self.activation.to(dtype)

    @classmethod
    def empty(cls, config: ModelConfig) -> SparseDictionary:
        """A dictionary of `config` whose tensors are allocated on the CPU but hold no values yet, for weights
        about to be loaded: built on the meta device, so the random initialisation and its float64 copies
        (several times the weights' size) never exist."""
        with torch.device("meta"):
            model = cls(config)
        return model.to_empty(device="cpu")

    # ----- shapes -------------------------------------------------------------------------------
    @property
    def n_in(self) -> int:
        return self.W_E.shape[1]

    @property
    def n_out(self) -> int:
        return self.W_D.shape[0]

    @property
    def n_latents(self) -> int:
        return self.W_E.shape[0]

    def _check_input(self, name: str, x: torch.Tensor, width: int) -> None:
        if not isinstance(x, torch.Tensor):
            raise ShapeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
        if x.ndim != 2 or x.shape[1] != width:
            raise ShapeError(f"{name} has shape {tuple(x.shape)}; this dictionary needs [batch, {width}]")
        if not x.is_floating_point():
            raise ShapeError(f"{name} has dtype {x.dtype}; a floating-point tensor is needed")

    # ----- the model ----------------------------------------------------------------------------
    def pre_activations(self, x_p: torch.Tensor, latents: torch.Tensor | None = None) -> torch.Tensor:
        """z = W_E x_p + b_E [B, n_latents], or only its columns `latents` (int64 [m]) [B, m]."""
        self._check_input("x_p", x_p, self.n_in)
        if latents is None:
            return F.linear(x_p.to(self.W_E.dtype), self.W_E, self.b_E)
        b_E = None if self.b_E is None else self.b_E[latents]
        return F.linear(x_p.to(self.W_E.dtype), self.W_E[latents], b_E)

    def encode(self, x_p: torch.Tensor) -> torch.Tensor:
        """x_q = σ(W_E x_p + b_E) [B, n_latents]."""
        return self.activation(self.pre_activations(x_p))

    def decode(self, x_q: torch.Tensor) -> torch.Tensor:
        """x̂_r = W_D x_q + b_D [B, n_out]."""
        return F.linear(x_q, self.W_D, self.b_D)

    def forward(self, x_p: torch.Tensor) -> Forward:
        if self.config.sparse_kernel:
            return self._sparse_forward(x_p)
        z = self.pre_activations(x_p)
        x_q = self.activation(z)
        return Forward(self.decode(x_q), z=z, x_q=x_q)

    def blocks(self, x_p: torch.Tensor) -> Iterator[tuple[int, Forward]]:
        """(first row, forward) over consecutive row blocks of x_p [B, n_in]: inference over any batch with
        [rows, n_latents] bounded. The dense kernel takes max(1, BLOCK_ENTRIES // n_latents) rows a block; the
        sparse kernel, already bounded, takes the batch whole. The codes are those of one forward over x_p
        (every σ is per sample at inference; BatchTopK in eval mode)."""
        rows = x_p.shape[0] if self.config.sparse_kernel else max(1, BLOCK_ENTRIES // self.n_latents)
        for start in range(0, x_p.shape[0], rows):
            yield start, self(x_p[start : start + rows])

    def _sparse_forward(self, x_p: torch.Tensor) -> Forward:
        """The sparse kernel: z is computed without autograd, a block of rows at a time, only for σ to
        choose its entries; then codes and x̂ come from the entries alone."""
        self._check_input("x_p", x_p, self.n_in)
        x = x_p.to(self.W_E.dtype)
        with torch.no_grad():
            pattern, pre = self.activation.select(self._pre_activation_chunks(x), x.shape[0])
        codes = SparseCodes(pattern, self.encode_entries(x, pre, pattern))
        return Forward(
            self.decode_entries(codes.values, pattern), codes=codes, pre_activations=partial(self.pre_activations, x)
        )

    def _pre_activation_chunks(self, x: torch.Tensor) -> Iterator[torch.Tensor]:
        """z = W_E x + b_E in blocks of rows, written into one reused buffer (so each block is only valid
        until the next one is drawn); under autocast, fresh blocks in the autocast dtype."""
        rows = max(1, SPARSE_CHUNK_ENTRIES // self.n_latents)
        starts = range(0, x.shape[0], rows)
        if torch.is_autocast_enabled(x.device.type):
            yield from (F.linear(x[start : start + rows], self.W_E, self.b_E) for start in starts)
            return
        buffer = x.new_empty(min(rows, x.shape[0]), self.n_latents)
        for start in starts:
            block, out = x[start : start + rows], buffer[: min(rows, x.shape[0] - start)]
            if self.b_E is None:
                yield torch.mm(block, self.W_E.t(), out=out)
            else:
                yield torch.addmm(self.b_E, block, self.W_E.t(), out=out)

    def encode_entries(self, x_p: torch.Tensor, pre: torch.Tensor, pattern: SparsePattern) -> torch.Tensor:
        """ReLU(z) at `pattern` [nnz] with the encoder's gradient, for x_p [B, n_in] and `pre` [nnz], z at
        the pattern computed without autograd: the TopK family's σ on its selected entries (eq. 10)."""
        x_p = x_p.to(self.W_E.dtype)
        return encode_entries(pre.to(self.W_E.dtype), x_p, self.W_E, self.b_E, pattern).relu()

    def decode_entries(self, values: torch.Tensor, pattern: SparsePattern, bias: bool = True) -> torch.Tensor:
        """W_D x_q (+ b_D) for codes given as `values` [nnz] at `pattern`: [pattern.n_rows, n_out]."""
        return decode_entries(values, self.W_D, self.b_D if bias else None, pattern)

    # ----- decoder geometry ---------------------------------------------------------------------
    def decoder_norms(self) -> torch.Tensor:
        """Σ_sources ‖W_D^(j)[:, i]‖ [n_latents]: the plain column norm for one source, the sum of
        per-source norms for crosscoders (Anthropic's crosscoder L1 weighting)."""
        blocks = self.config.out_blocks or [self.n_out]
        if len(blocks) == 1:
            return self.W_D.norm(dim=0)
        return torch.stack([part.norm(dim=0) for part in self.W_D.split(blocks, dim=0)]).sum(dim=0)

    @torch.no_grad()
    def normalize_decoder(self) -> None:
        """Rescale every decoder column to unit norm (zero columns stay zero)."""
        normalize_columns_(self.W_D)

    @torch.no_grad()
    def project_decoder_grad(self) -> None:
        """Remove from ∇W_D the part parallel to each (unit) column: the step then moves columns
        along the unit sphere's tangent, and renormalising afterwards changes them little."""
        if self.W_D.grad is not None:
            project_columns_(self.W_D.grad, self.W_D)

    def post_step(self) -> None:
        """Restore constraints after an optimiser step."""
        if self.config.unit_norm_decoder:
            self.normalize_decoder()
        self.activation.post_step()

    # ----- per-latent structure (resampling, optimiser resets) ------------------------------------
    def latent_parameters(self) -> list[tuple[str, torch.Tensor, int, float | None]]:
        """(name, parameter, latent dim, reset value or None) for every per-latent parameter."""
        params: list[tuple[str, torch.Tensor, int, float | None]] = [("W_E", self.W_E, 0, None)]
        if self.b_E is not None:
            params.append(("b_E", self.b_E, 0, 0.0))
        params.append(("W_D", self.W_D, 1, None))
        for name, (param, reset) in self.activation.latent_parameters().items():
            params.append((name, param, 0, reset))
        return params

    # ----- tensors by their paper names -------------------------------------------------------------
    def named_tensors(self) -> dict[str, torch.Tensor]:
        """Every parameter and buffer under its checkpoint name: W_E, b_E, W_D, b_D, then σ's own."""
        tensors = {}
        for name, tensor in [*self.named_parameters(), *self.named_buffers()]:
            tensors[name.removeprefix("activation.")] = tensor
        return tensors
