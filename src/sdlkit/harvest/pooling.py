"""Per-sample poolings of a per-token output, as sentence encoders make their embeddings.

    mean:      e = Σ_t m_t h_t / Σ_t m_t          (sentence-transformers' Pooling, pooling_mode_mean_tokens)
    unit-mean: e / ‖e‖                            (its Normalize step; all-MiniLM-L6-v2 ends with both)

h [B, T, D] is the module's output and m [B, T] the attention mask (every token of the sample, special
tokens included, padding excluded: what the encoder itself attends to). Computed in the output's dtype
with the same operations as sentence-transformers, so a harvested embedding is the model's own.
"""

from __future__ import annotations

import torch

from sdlkit.errors import ConfigError

POOLED_ROLES = ("mean", "unit-mean")


def pool_tokens(x: torch.Tensor, attention: torch.Tensor | None, role: str, key: str = "module") -> torch.Tensor:
    """The pooled rows [B, D] of x [B, T, D] under `role` ('mean' or 'unit-mean'); `attention` [B, T]
    (None: every token counts, as for image patches)."""
    if x.ndim != 3:
        raise ConfigError(
            f"{key} pools tokens, but the module gives shape {list(x.shape)}, not [batch, tokens, dim]; "
            "pool a module with one vector per token"
        )
    if attention is None:
        attention = torch.ones(x.shape[:2], dtype=x.dtype, device=x.device)
    mask = attention.to(x.device, x.dtype).unsqueeze(-1)
    pooled = (x * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
    if role == "unit-mean":
        pooled = torch.nn.functional.normalize(pooled, p=2, dim=1)
    return pooled
