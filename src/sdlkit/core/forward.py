"""Forward: what one forward pass of the dictionary computed, with z and x_q built only when read."""

from __future__ import annotations

from collections.abc import Callable

import torch

from sdlkit.core.kernels import SparseCodes


class Forward:
    """One forward pass. z, x_q [B, n_latents]; x_hat [B, n_out].

    The dense kernel gives z and x_q. The sparse kernel gives `codes`, x_q's entries, and
    `pre_activations`, which computes z (or its columns `latents`) again: the kernel never holds z whole.
    Then x_q is built from `codes` on first read (with its gradient) and z without gradient.
    `fired()` and `count_nonzero()` work on either form without building them."""

    def __init__(
        self,
        x_hat: torch.Tensor,
        z: torch.Tensor | None = None,
        x_q: torch.Tensor | None = None,
        codes: SparseCodes | None = None,
        pre_activations: Callable[[torch.Tensor | None], torch.Tensor] | None = None,
    ):
        if (z is None or x_q is None) and (codes is None or pre_activations is None):
            raise ValueError("a Forward needs z and x_q, or codes and pre_activations")
        self.x_hat, self.codes = x_hat, codes
        self._z, self._x_q, self._pre_activations = z, x_q, pre_activations

    @property
    def z(self) -> torch.Tensor:
        if self._z is None:
            with torch.no_grad():
                self._z = self._pre_activations(None)
        return self._z

    def z_columns(self, latents: torch.Tensor) -> torch.Tensor:
        """z[:, latents] [B, m] (without gradient on the sparse path: only those columns are computed)."""
        if self._z is not None:
            return self._z.index_select(1, latents)
        with torch.no_grad():
            return self._pre_activations(latents)

    @property
    def x_q(self) -> torch.Tensor:
        if self._x_q is None:
            self._x_q = self.codes.to_dense()
        return self._x_q

    def fired(self) -> torch.Tensor:
        """bool [n_latents]: latents with a non-zero code in some sample of the batch."""
        return self.codes.fired() if self.codes is not None else (self.x_q.detach() != 0).any(dim=0)

    def entries(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """x_q's non-zero codes as (row, latent, value), each [nnz], without gradient: read off the sparse
        kernel's entries where it ran (no [B, n_latents] tensor is built), else off the dense x_q."""
        if self.codes is not None:
            values = self.codes.values.detach()
            keep = values != 0
            return self.codes.pattern.rows[keep], self.codes.pattern.latents[keep], values[keep]
        x_q = self.x_q.detach()
        row, latent = x_q.nonzero(as_tuple=True)
        return row, latent, x_q[row, latent]

    def fire_counts(self) -> torch.Tensor:
        """int64 [n_latents]: the rows of the batch in which each latent's code is non-zero."""
        if self.codes is not None:
            pattern = self.codes.pattern
            return torch.bincount(pattern.latents[self.codes.values.detach() != 0], minlength=pattern.n_latents)
        return (self.x_q.detach() != 0).sum(dim=0)

    def count_nonzero(self) -> torch.Tensor:
        """Non-zero codes in the batch (0-dim tensor): B times the mean L0."""
        return self.codes.count_nonzero() if self.codes is not None else torch.count_nonzero(self.x_q.detach())
