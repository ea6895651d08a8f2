"""Dead-latent tracking and resampling (Towards Monosemanticity, Bricken et al. 2023).

A latent is dead when it has not fired on any of the last `window` training samples. Resampling gives
each dead latent a direction the dictionary reconstructs badly: an input drawn with probability ∝ its
squared loss², decoder column ← that input's normalised residual, encoder row ← that input's direction
scaled to `encoder_scale` × the mean alive encoder-row norm, b_E ← 0, σ's per-latent parameters reset,
and Adam's moments for those latents zeroed so stale momentum does not undo the move.
"""

from __future__ import annotations

import torch

from sdlkit.core.model import SparseDictionary
from sdlkit.data.source import Batch


class DeadLatents:
    """Samples since each latent last fired [n_latents], or [E, n_latents] for a stack of E dictionaries
    (sdlkit.train.ensemble) (int64, on the model's device)."""

    def __init__(self, shape: int | tuple[int, int], window: int, device: torch.device | str):
        self.window = window
        self.since_fired = torch.zeros(shape, dtype=torch.int64, device=device)

    @torch.no_grad()
    def update(self, x_q: torch.Tensor) -> None:
        """Count one batch of codes x_q [B, n_latents]: fired latents reset to 0, the rest age by B."""
        self.update_fired((x_q != 0).any(dim=0), x_q.shape[0])

    @torch.no_grad()
    def update_fired(self, fired: torch.Tensor, n_samples: int) -> None:
        """Count one batch of `n_samples` in which the latents where `fired` (shaped as the counts) is true fired."""
        self.since_fired = torch.where(fired, 0, self.since_fired + n_samples)

    @property
    def dead(self) -> torch.Tensor:
        """bool [n_latents]."""
        return self.since_fired >= self.window

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {"since_fired": self.since_fired}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        self.since_fired = state["since_fired"].to(self.since_fired.device, torch.int64)


@torch.no_grad()
def resample_dead_latents(
    model: SparseDictionary,
    optimizer: torch.optim.Optimizer,
    dead: torch.Tensor,
    inputs: Batch,
    generator: torch.Generator,
    encoder_scale: float = 0.2,
) -> int:
    """Resample the latents where `dead` [n_latents] is true using `inputs`; returns how many."""
    dead_idx = dead.nonzero().squeeze(1)
    n_dead = dead_idx.numel()
    if n_dead == 0:
        return 0
    was_training = model.training
    model.eval()  # e.g. BatchTopK must not move its inference threshold on these inputs
    residual = inputs.x_r.to(model.W_D.dtype) - model(inputs.x_p).x_hat
    model.train(was_training)
    weights = residual.pow(2).sum(dim=-1).pow(2)
    if not torch.isfinite(weights).all() or weights.sum() <= 0:
        return 0  # nothing is under-reconstructed (or the loss is broken): leave the latents alone
    picks = torch.multinomial(weights.float(), n_dead, replacement=True, generator=generator)

    def unit(rows: torch.Tensor) -> torch.Tensor:
        return rows / rows.norm(dim=1, keepdim=True).clamp_min(1e-12)

    new_decoder = unit(residual[picks])
    if not model.config.unit_norm_decoder:
        new_decoder = new_decoder * model.W_D.norm(dim=0)[~dead].mean().nan_to_num(1.0)
    model.W_D[:, dead_idx] = new_decoder.T.to(model.W_D.dtype)
    alive_norm = model.W_E[~dead].norm(dim=1).mean() if bool((~dead).any()) else model.W_E.new_ones(())
    model.W_E[dead_idx] = (unit(inputs.x_p[picks].to(model.W_E.dtype)) * encoder_scale * alive_norm).to(model.W_E.dtype)
    for _name, param, dim, reset in model.latent_parameters():
        if reset is not None:
            param.index_fill_(dim, dead_idx, reset)
        state = optimizer.state.get(param, {})
        for key in ("exp_avg", "exp_avg_sq"):
            if key in state:
                state[key].index_fill_(dim, dead_idx, 0.0)
    return n_dead
