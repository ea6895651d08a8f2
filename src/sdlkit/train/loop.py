"""The training loop that `Trainer` (one run) and `EnsembleTrainer` (a stack of runs) share.

    run(job)               steps to train.steps: a progress bar, a log line every log_every steps (with
                           the held-out figures every eval_every), a checkpoint every checkpoint_every
                           steps and at the end, then the run's closing outputs (curves.png)
    train_step(job, batch) one optimiser step: forward and objective (autocast) → backward → the
                           constraints on the gradients and one clip (constrain_grads) → Adam and schedule →
                           the constraints on the weights → dead latents, log sums

A job supplies what differs between one run and a stack (its losses, its list of gradient constraints, see
sdlkit.train.constraints, its log lines and checkpoints), in the `Job` protocol; these functions do
everything else, in the same order for both.
"""

from __future__ import annotations

import math
import sys
import time
from typing import Any, NamedTuple, NoReturn, Protocol

import torch
from tqdm.auto import tqdm

from sdlkit.config import TrainConfig
from sdlkit.data.source import Batch
from sdlkit.train.constraints import Constraint
from sdlkit.train.resample import DeadLatents


def lr_factor(step: int, cfg: TrainConfig) -> float:
    """Multiplier of the base learning rate at optimiser step `step` (0-based)."""
    factor = min(1.0, (step + 1) / cfg.lr_warmup_steps) if cfg.lr_warmup_steps else 1.0
    start = int(cfg.lr_decay_start * cfg.steps)
    if cfg.lr_decay != "none" and step >= start:
        progress = (step - start) / max(1, cfg.steps - start)
        factor *= 1.0 - progress if cfg.lr_decay == "linear" else 0.5 * (1.0 + math.cos(math.pi * progress))
    return factor


def adam(params: list[torch.Tensor], cfg: TrainConfig) -> tuple[torch.optim.Adam, torch.optim.lr_scheduler.LambdaLR]:
    """Adam over `params` with train's warm-up and decay schedule; fused: one kernel steps every parameter."""
    optimizer = torch.optim.Adam(params, lr=cfg.lr, betas=cfg.betas, eps=cfg.adam_eps, fused=True)
    return optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_factor(s, cfg))


class Accumulator:
    """Sums of the logged values (0-dim, or [E] for a stack) over the steps since the last log line."""

    def __init__(self, sums: dict[str, torch.Tensor] | None = None, steps: int = 0):
        self.sums = dict(sums or {})
        self.steps = steps

    def add(self, values: dict[str, torch.Tensor]) -> None:
        for key, value in values.items():
            self.sums[key] = self.sums.get(key, 0) + value.detach().float()
        self.steps += 1

    def pop_means(self) -> dict[str, torch.Tensor]:
        """The means since the last call; starts the next interval."""
        means = {key: value / self.steps for key, value in self.sums.items()}
        self.sums, self.steps = {}, 0
        return means

    def member(self, index: int) -> Accumulator:
        """Member `index`'s sums of a stack's [E] sums."""
        return Accumulator({key: value[index].clone() for key, value in self.sums.items()}, self.steps)


class StepLosses(NamedTuple):
    """One step's forward: the loss (0-dim, or [E] for a stack), each term's value (detached, same
    shape), the latents that fired in the batch (bool [n_latents] or [E, n_latents]; all ranks'), the
    mean L0 and the batch's FVU (sdlkit.eval.metrics.batch_fvu; both shaped as the loss)."""

    loss: torch.Tensor
    parts: dict[str, torch.Tensor]
    fired: torch.Tensor
    l0: torch.Tensor
    fvu: torch.Tensor


class Job(Protocol):
    """What `run` and `train_step` drive: one run (Trainer) or a stack of runs (EnsembleTrainer)."""

    cfg: TrainConfig
    device: torch.device
    step: int
    train_seconds: float
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    dead: DeadLatents
    metrics: Accumulator
    constraints: list[Constraint]
    """The rules on the gradients and weights, applied in order around every step."""

    def losses(self, batch: Batch) -> StepLosses:
        """The forward pass and the objective on `batch` (called under autocast)."""

    def diverged(self, batch: Batch, loss: torch.Tensor) -> NoReturn:
        """Raise TrainingDiverged for a loss that is not finite."""

    def advance(self) -> None:
        """One `train_step` on the next batch and what follows it (e.g. resampling); step += 1."""

    def log(self, samples_per_s: float, evaluate: bool) -> list[dict[str, Any]]:
        """Write and return one log record per run (the means since the last one); with `evaluate`, each
        also holds its run's held-out figures."""

    def save_checkpoint(self) -> Any:
        """Checkpoint every run (where it has a run folder)."""

    def finish(self) -> None:
        """Close every run's log at the end of training (curves.png, TensorBoard events)."""


@torch.no_grad()
def clip_grads_except(
    grads: list[torch.Tensor],
    exempt: list[tuple[torch.Tensor, torch.Tensor]],
    max_norm: float,
    stacked: bool = False,
) -> None:
    """The gradient clip of training, for one run and for a stack: scale `grads` in place so that their norm
    WITHOUT the exempt parts is at most `max_norm`, keeping the exempt parts whole (g ← s·(g − part) + part on
    each exempt view, s·g elsewhere, s = min(1, max_norm / norm)). `exempt`: (a view into one of `grads`, the
    part of that view to exempt) pairs. stacked: the gradients of an ensemble, [E, ...], clipped member by
    member. Where nothing is clipped the gradients are left exactly as they were."""
    scale = (max_norm / (_clipped_norm(grads, exempt, stacked) + 1e-6)).clamp(max=1.0)
    if bool((scale >= 1).all()):
        return

    def per_run(value: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        value = value.to(like.dtype)
        return value.view(-1, *[1] * (like.ndim - 1)) if stacked else value

    for g in grads:
        g.mul_(per_run(scale, g))
    for view, part in exempt:  # s·(view − part) + part
        view.add_(part * per_run(1 - scale, view))


def _clipped_norm(
    grads: list[torch.Tensor], exempt: list[tuple[torch.Tensor, torch.Tensor]], stacked: bool
) -> torch.Tensor:
    """The norm that clipping compares with max_norm: of `grads` less the exempt parts; 0-dim, or [E] for a
    stack. With exempt parts, from float64 sums: the exempt part is subtracted from the total, so cancellation
    must stay far below τ-level changes (a float64 copy of each gradient, in anchored runs only). Without, in
    the gradients' dtype: torch.nn.utils.get_total_norm for one run, the sum of squares per member for a stack."""
    if exempt:
        dims = (lambda g: tuple(range(1, g.ndim))) if stacked else (lambda g: tuple(range(g.ndim)))
        square = sum(g.double().pow(2).sum(dims(g)) for g in grads)
        for view, part in exempt:
            square = square - view.double().pow(2).sum(dims(view)) + (view - part).double().pow(2).sum(dims(view))
        return square.clamp(min=0).sqrt()
    if stacked:
        return torch.stack([g.pow(2).flatten(1).sum(dim=1) for g in grads]).sum(dim=0).sqrt()
    return torch.nn.utils.get_total_norm(grads)


def constrain_grads(job: Job, stacked: bool) -> None:
    """After the backward: each of `job.constraints` changes the gradients, in order; then one clip
    (train.grad_clip, per member of a stack) of the gradients of every parameter the optimiser steps, keeping
    whole the parts the constraints exempt."""
    for constraint in job.constraints:
        constraint.constrain_grads()
    if job.cfg.grad_clip is not None:
        grads = [p.grad for group in job.optimizer.param_groups for p in group["params"] if p.grad is not None]
        exempt = [part for constraint in job.constraints for part in constraint.clip_exempt()]
        clip_grads_except(grads, exempt, job.cfg.grad_clip, stacked)


def train_step(job: Job, batch: Batch) -> None:
    """One optimiser step of `job` on `batch`: forward, backward, the constraints on the gradients and the
    clip (`constrain_grads`), Adam and its schedule, then each constraint restores its rule on the weights."""
    job.optimizer.zero_grad(set_to_none=True)  # before the forward: the old gradients do not add to its peak
    with torch.autocast(job.device.type, dtype=torch.bfloat16, enabled=job.cfg.precision == "bf16"):
        out = job.losses(batch)
    if not bool(torch.isfinite(out.loss).all()):
        job.diverged(batch, out.loss)
    out.loss.backward(torch.ones_like(out.loss))  # a stack's members: each its own loss's gradients
    constrain_grads(job, stacked=out.loss.ndim > 0)
    job.optimizer.step()
    job.scheduler.step()
    for constraint in job.constraints:
        constraint.restore()
    job.dead.update_fired(out.fired, job.cfg.batch_size)
    job.metrics.add({**out.parts, "loss": out.loss, "l0": out.l0, "fvu": out.fvu})


def run(job: Job, runs: int, desc: str, show: bool = True) -> list[list[dict[str, Any]]]:
    """Train `job` (of `runs` runs) from its step to train.steps; each run's log records, in order."""
    cfg = job.cfg
    histories: list[list[dict[str, Any]]] = [[] for _ in range(runs)]
    bar = tqdm(
        total=cfg.steps,
        initial=job.step,
        unit="step",
        disable=not cfg.progress or not show,
        mininterval=0.1 if sys.stderr.isatty() else 10.0,  # a log file gets a line per 10 s, not per 0.1 s
        dynamic_ncols=True,
        desc=desc,
    )
    interval_start, interval_step = time.perf_counter(), job.step
    while job.step < cfg.steps:
        t0 = time.perf_counter()
        job.advance()
        job.train_seconds += time.perf_counter() - t0
        bar.update(1)
        if job.step % cfg.log_every == 0 or job.step == cfg.steps:
            rate = (job.step - interval_step) * cfg.batch_size / max(time.perf_counter() - interval_start, 1e-9)
            evaluate = job.step == cfg.steps or job.step % (cfg.eval_every or cfg.log_every) == 0
            for history, record in zip(histories, job.log(rate, evaluate), strict=True):
                history.append(record)
            if runs == 1:
                bar.set_postfix(_summary(histories[0][-1], rate))
            interval_start, interval_step = time.perf_counter(), job.step  # the rate leaves logging out
        if (cfg.checkpoint_every and job.step % cfg.checkpoint_every == 0) or job.step == cfg.steps:
            job.save_checkpoint()
    bar.close()
    job.finish()
    return histories


def _summary(record: dict[str, Any], rate: float) -> dict[str, str]:
    """The progress bar's postfix for a run's log record."""
    return {
        "loss": f"{record['loss']:.4g}",
        "l0": f"{record['l0']:.1f}",
        "dead": f"{record['dead_fraction']:.1%}",
        "samples_s": f"{rate:,.0f}",
    }
