"""The fixed parts of a SynthSAEBench model, drawn once from its config: `build_model(config) -> SynthModel`.

    p_i      Zipfian base probabilities (`zipf_probabilities`), raised for children by the forest's
             compensation (sdlkit.data.synth.forest) and clamped at 1
    μ_i, σ_i magnitude means, linear over the index; standard deviations |N(std_mean, std_std²)|
    F        the copula's factor [n, rank] (`correlation_factor`), or none
    W, b     unit feature vectors [n, d] (`random_dictionary`, then `orthogonalize`) and the hidden bias [d]

Each part has its own seed stream (sdlkit.seeding.derive_seed of the data seed and the part's name), so
changing one setting never reshuffles the others.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from sdlkit.data.synth.config import MagnitudeConfig, SynthConfig
from sdlkit.data.synth.forest import Forest, build_forest, compensated
from sdlkit.seeding import derive_seed

__all__ = [
    "SynthModel",
    "build_model",
    "correlation_factor",
    "orthogonalize",
    "random_dictionary",
    "seeded_generator",
    "zipf_probabilities",
]

MIN_DIAG = 0.01
"""A copula factor row keeps ‖f_i‖² <= 1 − MIN_DIAG, so every feature keeps some noise of its own."""


@dataclass
class SynthModel:
    """A synth model's fixed parts on one device.

    vectors [n, d]: unit rows, feature i writes vectors[i] (the ground truth: W_p = vectors.T); bias [d];
    base_probs [n] (float64): the Zipfian probabilities; probs [n] (float64): what each feature is drawn with
    (children compensated, clamped at 1); means, stds [n]: ReLU(μ + σ·N(0, 1)) when active; factor [n, rank]
    or None: the copula; forest or None.
    """

    vectors: torch.Tensor
    bias: torch.Tensor
    base_probs: torch.Tensor
    probs: torch.Tensor
    means: torch.Tensor
    stds: torch.Tensor
    factor: torch.Tensor | None
    forest: Forest | None

    @property
    def n_features(self) -> int:
        return self.vectors.shape[0]


def seeded_generator(seed: int, stream: str, index: int, device: torch.device) -> torch.Generator:
    """A generator on `device` for the named stream of a data seed."""
    gen = torch.Generator(device=device)
    gen.manual_seed(derive_seed(seed, stream, index))
    return gen


def zipf_probabilities(n: int, exponent: float, max_prob: float, min_prob: float) -> torch.Tensor:
    """p_i = min + (max − min)·(r_i − r_n)/(r_1 − r_n) with r_i = i^(−exponent), i = 1..n [n] (float64)."""
    if n == 1:
        return torch.tensor([max_prob], dtype=torch.float64)
    r = torch.arange(1, n + 1, dtype=torch.float64).pow(-exponent)
    return min_prob + (max_prob - min_prob) * (r - r[-1]) / (r[0] - r[-1])


def magnitude_parameters(n: int, cfg: MagnitudeConfig, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """(μ [n] linear from mean_start to mean_end, σ [n] = |std_mean + std_std·N(0, 1)|), float32."""
    means = torch.linspace(cfg.mean_start, cfg.mean_end, n) if n > 1 else torch.tensor([cfg.mean_start])
    noise = torch.randn(n, generator=gen, device=gen.device).cpu()
    return means, (cfg.std_mean + cfg.std_std * noise).abs()


def correlation_factor(n: int, rank: int, scale: float, gen: torch.Generator) -> torch.Tensor:
    """Copula factor [n, rank]: N(0, scale²) entries; rows with ‖f_i‖² > 1 − MIN_DIAG shrunk onto that sphere."""
    factor = torch.randn(n, rank, generator=gen, device=gen.device) * scale
    sq = factor.pow(2).sum(dim=1)
    over = sq > 1 - MIN_DIAG
    factor[over] *= ((1 - MIN_DIAG) / sq[over]).sqrt().unsqueeze(1)
    return factor


def random_dictionary(n: int, d: int, bias_norm: float, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """(unit rows [n, d] drawn uniformly on the sphere, a bias [d] of norm `bias_norm` in a random direction)."""
    vectors = torch.randn(n, d, generator=gen, device=gen.device)
    vectors /= vectors.norm(dim=1, keepdim=True).clamp_min(1e-8)
    bias = torch.randn(d, generator=gen, device=gen.device)
    return vectors, bias / bias.norm().clamp_min(1e-8) * bias_norm


@torch.no_grad()
def _orthogonality_grad(vectors: torch.Tensor, chunk: int) -> torch.Tensor:
    """Gradient of Σ_{i≠j} ⟨v_i, v_j⟩² + n·Σ_i (‖v_i‖² − 1)²: 4·(G − diag G)·V + 4n·(diag G − 1)·V, G = V Vᵀ,
    `chunk` rows of G at a time (memory O(chunk · n))."""
    n = vectors.shape[0]
    grad = torch.empty_like(vectors)
    for start in range(0, n, chunk):
        rows = vectors[start : start + chunk]
        gram = rows @ vectors.T  # [c, n]
        diag = gram.diagonal(offset=start).clone()
        gram.diagonal(offset=start).zero_()
        grad[start : start + chunk] = 4 * (gram @ vectors) + (4 * n * (diag - 1)).unsqueeze(1) * rows
    return grad


def orthogonalize(vectors: torch.Tensor, steps: int, lr: float, chunk: int = 1024) -> torch.Tensor:
    """Adam (β = 0.9, 0.999) for `steps` steps on Σ_{i≠j} ⟨v_i, v_j⟩² + n·Σ_i (‖v_i‖² − 1)² from unit rows
    [n, d], then unit rows again: SAELens's `orthogonalize_embeddings`, with the gradient in closed form."""
    param = torch.nn.Parameter(vectors / vectors.norm(dim=1, keepdim=True).clamp_min(1e-8))
    optimizer = torch.optim.Adam([param], lr=lr)
    for _ in range(steps):
        param.grad = _orthogonality_grad(param.data, chunk)
        optimizer.step()
    out = param.data
    return out / out.norm(dim=1, keepdim=True).clamp_min(1e-8)


def build_model(config: SynthConfig, device: str | torch.device = "cpu") -> SynthModel:
    """Every fixed part of the model `config` describes, on `device` (see the module docstring)."""
    device = torch.device(device)
    n, seed = config.n_features, config.seed
    firing = config.firing
    base = zipf_probabilities(n, firing.exponent, firing.max_prob, firing.min_prob)
    forest = None
    probs = base
    if config.hierarchy is not None:
        forest = build_forest(config.hierarchy, n, seeded_generator(seed, "forest", 0, torch.device("cpu")))
        probs = compensated(forest, base) if config.hierarchy.compensate else base
    means, stds = magnitude_parameters(n, config.magnitudes, seeded_generator(seed, "magnitudes", 0, device))
    factor = None
    if config.correlation is not None:
        gen = seeded_generator(seed, "correlation", 0, device)
        factor = correlation_factor(n, config.correlation.rank, config.correlation.scale, gen)
    vectors, bias = random_dictionary(
        n, config.hidden_dim, config.bias, seeded_generator(seed, "dictionary", 0, device)
    )
    if config.orthogonalization is not None:
        vectors = orthogonalize(vectors, config.orthogonalization.steps, config.orthogonalization.lr)
    return SynthModel(
        vectors=vectors,
        bias=bias,
        base_probs=base.to(device),
        probs=probs.to(device),
        means=means.to(device),
        stds=stds.to(device),
        factor=factor,
        forest=forest.to(device) if forest is not None else None,
    )


def normal_quantile_upper(p: torch.Tensor) -> torch.Tensor:
    """t with Pr(N(0, 1) > t) = p: √2·erfinv(1 − 2p) (−inf at p = 1)."""
    return math.sqrt(2) * torch.erfinv(1 - 2 * p)


def normal_upper_tail(x: torch.Tensor) -> torch.Tensor:
    """Pr(N(0, 1) > x) = erfc(x / √2) / 2."""
    return 0.5 * torch.erfc(x / math.sqrt(2))
