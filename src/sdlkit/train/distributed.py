"""Data-parallel training with torch.distributed: `torchrun --nproc_per_node=N -m sdlkit train ...`.

Every rank holds the whole dictionary and trains on its own part of each global batch: rank r of W
takes micro-batch index·W + r of size B/W from the source. For sources whose batches are consecutive
stream positions (activation stores, the LRB with a fixed `n_samples`), those W micro-batches are
exactly global batch `index` of size B cut in W pieces, so the data a run sees does not depend on W
and a checkpoint resumes on any number of ranks. (The endless LRB stream is i.i.d.: any split is a
valid draw.) After backward the gradients are averaged over ranks (one flat all-reduce), so every rank
takes the same optimiser step and the weights stay identical without broadcasts; which latents fired
is max-reduced, so dead-latent counters and resampling agree too; rank 0 alone writes logs and
checkpoints. gloo on CPU, NCCL on GPUs; multi-node through torchrun's own --nnodes/--rdzv-* flags.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch._utils import _flatten_dense_tensors, _unflatten_dense_tensors

from sdlkit.data.source import Batch
from sdlkit.errors import ConfigError


@dataclass(frozen=True)
class DistContext:
    """This process's place in the group: `rank` of `world_size` (`local_rank` on its node)."""

    rank: int
    world_size: int
    local_rank: int

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def from_environment(device: str) -> tuple[DistContext | None, str]:
    """Join the process group torchrun describes in the environment (WORLD_SIZE > 1), with NCCL when
    `device` is CUDA and gloo otherwise; return the context (None when not distributed) and this rank's
    device (cuda:LOCAL_RANK on GPUs)."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return None, device
    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    cuda = torch.device(device).type == "cuda"
    if cuda:
        if local_rank >= torch.cuda.device_count():
            raise ConfigError(
                f"LOCAL_RANK {local_rank} but this node has {torch.cuda.device_count()} GPUs: "
                "use --nproc_per_node <= the number of GPUs"
            )
        device = f"cuda:{local_rank}"
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if cuda else "gloo")
    return DistContext(rank, world_size, local_rank), device


def barrier() -> None:
    """Wait for every rank (a no-op when not distributed)."""
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def shutdown() -> None:
    """Leave the process group (a no-op when not distributed)."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


class RankSlice:
    """Rank `rank`'s part of every global batch: source.batch(index·W + rank, B/W). Everything else
    (eval_batch, known_directions, block_scales, ground_truth …) is the wrapped source's."""

    def __init__(self, source: Any, rank: int, world_size: int):
        self.source, self.rank, self.world_size = source, rank, world_size

    def batch(self, index: int, batch_size: int) -> Batch:
        return self.source.batch(index * self.world_size + self.rank, batch_size)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.source, name)


def rank_source(source: Any, rank: int, world_size: int) -> Any:
    """What rank `rank` of `world_size` trains on: the source's own shard when it has one (a live model runs
    each rank on its own texts, `shard(rank, world_size)`), else its slice of every global batch (RankSlice)."""
    shard = getattr(source, "shard", None)
    return shard(rank, world_size) if shard is not None else RankSlice(source, rank, world_size)


def local_batch_size(batch_size: int, world_size: int) -> int:
    """B/W, or a ConfigError when the global batch does not split evenly over the ranks."""
    if batch_size % world_size:
        raise ConfigError(
            f"train.batch_size = {batch_size} does not split over {world_size} ranks: make it a multiple of "
            f"{world_size} (it is the global batch; each rank trains on batch_size / ranks samples)"
        )
    return batch_size // world_size


def average_gradients(parameters: list[torch.nn.Parameter], world_size: int) -> None:
    """Replace every gradient by its mean over the ranks (one flat all-reduce)."""
    grads = [p.grad for p in parameters if p.grad is not None]
    if not grads:
        return
    flat = _flatten_dense_tensors(grads)
    dist.all_reduce(flat)
    flat /= world_size
    for grad, reduced in zip(grads, _unflatten_dense_tensors(flat, grads), strict=True):
        grad.copy_(reduced)


def any_rank(mask: torch.Tensor) -> torch.Tensor:
    """Elementwise OR of a boolean tensor over the ranks."""
    reduced = mask.to(torch.uint8)
    dist.all_reduce(reduced, op=dist.ReduceOp.MAX)
    return reduced.bool()


def mean_over_ranks(values: dict[str, torch.Tensor], world_size: int) -> dict[str, torch.Tensor]:
    """Each scalar averaged over the ranks (for logging)."""
    keys = sorted(values)
    stacked = torch.stack([torch.as_tensor(values[k], dtype=torch.float32) for k in keys])
    dist.all_reduce(stacked)
    return dict(zip(keys, (stacked / world_size).unbind(), strict=True))


def gather_rows(x: torch.Tensor) -> torch.Tensor:
    """Concatenate a tensor with the same shape on every rank along dim 0, in rank order."""
    parts = [torch.empty_like(x) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, x.contiguous())
    return torch.cat(parts)
