"""The (x_p, x_r) batch protocol every trainer consumes.

A batch is a pair: x_p is what the encoder reads [batch, n_in], x_r what the decoder must
reconstruct [batch, n_out]. SAE: x_r is x_p. Transcoder: x_r is the MLP output for x_p.
Crosscoder: both are concatenations of m sources; `in_blocks`/`out_blocks` give the source widths.

Sources are random-access by batch index, so a stream position is one integer: resuming a run
or splitting a stream across ranks needs no replay.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import torch


@dataclass(frozen=True)
class Batch:
    """One training or evaluation batch. For an SAE `x_r` is the same tensor as `x_p`."""

    x_p: torch.Tensor
    x_r: torch.Tensor

    def __len__(self) -> int:
        return self.x_p.shape[0]


@runtime_checkable
class DataSource(Protocol):
    """Anything the trainer can train on."""

    n_in: int
    n_out: int
    in_blocks: list[int]
    out_blocks: list[int]

    def batch(self, index: int, batch_size: int) -> Batch:
        """The `index`-th training batch; the same (index, batch_size) always gives the same batch."""
        ...

    def eval_batch(self) -> Batch:
        """The fixed held-out evaluation set."""
        ...
