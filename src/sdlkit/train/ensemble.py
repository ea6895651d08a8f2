"""Batched sweeps: train E dictionaries of one shape at once (stacked weights, batched matmuls).

Seeds and sparsity-coefficient sweeps train many dictionaries that differ only in their initial
weights, their data stream and a loss coefficient. Here their parameters are stacked into tensors
[E, ...] and one step runs all of them: the member's forward and objective are the ordinary
`SparseDictionary` and terms, vmapped (torch.func) over the stack, so there is no second model
implementation. One backward on the summed losses gives every member its own gradients; clipping is
per member, and Adam, being elementwise, on the stack equals E separate Adams.

Each member is an ordinary `Trainer` (same initialisation, anchors, logs and checkpoints as a run on
its own): the stack is copied back into it for its metrics.jsonl lines and its checkpoints, which an
ordinary `Trainer` can resume. What members may differ in: seed, data source (same shapes), anchors'
seed, and float method fields named `*_coefficient`. Inside the stack the dense kernel computes the
forward (the sparse kernel's autograd Function has no vmap rule). Refused: resampling, hard anchors,
σ with a post-step, data-parallel ranks (train such members one by one).
"""

from __future__ import annotations

import contextlib
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.func import functional_call, stack_module_state, vmap
from tqdm.auto import tqdm

from sdlkit.config import RunConfig
from sdlkit.core.model import SparseDictionary, normalize_columns_, project_columns_
from sdlkit.core.objective import Objective, TermContext
from sdlkit.data.source import DataSource
from sdlkit.errors import ConfigError, TrainingDiverged
from sdlkit.eval.metrics import reconstruction_metrics
from sdlkit.methods import Activation
from sdlkit.train.anchoring import Anchors
from sdlkit.train.checkpoint import list_checkpoints
from sdlkit.train.trainer import Trainer, TrainResult, lr_factor

CPU_BATCH_MAX_WORK = 1 << 22
"""On CPU, stacking pays only while a member's step is small enough for per-op overheads to dominate
(batch × n_in × n_latents at most this): measured on 2 cores, 3 members of (64 latents, batch 64) train
2× faster stacked, while at the quick bench's (200, 512, 1024) ReLU is ~15% and TopK (which gives up
its sparse kernel) ~2.7× slower stacked (benchmarks/README.md, "Batched sweeps")."""
SPARSE_BATCH_MAX_LATENTS = 4096
"""On GPUs, above this many latents TopK-family runs are expected to train faster one by one on the
sparse kernel than stacked on the dense one (not measured: no GPU was lent)."""


def worth_batching(configs: Sequence[RunConfig]) -> bool:
    """Whether stacking these runs should beat training them one by one (they must also pass
    `ensemble_refusal`): two or more runs, and on CPU a small step, on GPUs no sparse kernel given up
    at a size where it matters."""
    if len(configs) < 2:
        return False
    model, train = configs[0].model, configs[0].train
    if torch.device(configs[0].device).type == "cpu":
        return train.batch_size * model.n_in * model.n_latents <= CPU_BATCH_MAX_WORK
    return not (model.sparse_kernel and model.n_latents > SPARSE_BATCH_MAX_LATENTS)


def _differences(a: Any, b: Any, prefix: str = "") -> list[str]:
    """Dotted keys whose values differ between two nested dicts."""
    if isinstance(a, dict) and isinstance(b, dict):
        return [d for k in sorted(set(a) | set(b)) for d in _differences(a.get(k), b.get(k), f"{prefix}{k}.")]
    return [] if a == b else [prefix.rstrip(".")]


def _may_differ(key: str) -> bool:
    """Config keys in which ensemble members may differ."""
    return (
        key in {"seed", "model.kernel", "train.anchors.seed"}
        or key.startswith("data.")
        or (key.startswith("model.method.") and key.endswith("_coefficient"))
    )


def ensemble_refusal(configs: Sequence[RunConfig]) -> str | None:
    """Why these runs cannot train as one ensemble (one line), or None when they can."""
    if not configs:
        return "an ensemble needs at least one member"
    first = configs[0].model_dump(mode="json")
    for i, config in enumerate(configs):
        if config.train.resample is not None:
            return "resampling (train.resample) is not supported in an ensemble"
        if config.train.anchors is not None and config.train.anchors.mode != "soft":
            return "hard anchors are not supported in an ensemble (soft anchors are)"
        activation = config.model.method.build_activation(config.model.n_latents)
        if type(activation).post_step is not Activation.post_step:
            return f"method {config.model.method.name} has a post-step, which an ensemble does not run"
        differ = [k for k in _differences(first, config.model_dump(mode="json")) if not _may_differ(k)]
        if differ:
            return (
                f"member {i} differs from member 0 in {', '.join(differ[:4])}; members may differ only in seed, "
                "data, anchors seed and method *_coefficient fields"
            )
    return None


class _MemberLoss(nn.Module):
    """One member's loss: the model's forward, then the objective with the member's varying term
    values. Run under functional_call with the member's weights, so terms reading ctx.model see them."""

    def __init__(self, model: SparseDictionary, objective: Objective):
        super().__init__()
        self.model = model
        self.objective = objective
        self.step = 0

    @contextlib.contextmanager
    def _varied(self, values: dict[str, torch.Tensor]) -> Iterator[None]:
        """Set the terms' member-specific attributes (keys 'term_index.attribute') for one call."""
        saved = []
        try:
            for key, value in values.items():
                index, attr = key.split(".", 1)
                term = self.objective.terms[int(index)]
                if attr == "anchors.A":
                    saved.append((term, "anchors", term.anchors))
                    term.anchors = Anchors(value, values[f"{index}.anchors.B"], term.anchors.indices)
                elif attr != "anchors.B":
                    saved.append((term, attr, getattr(term, attr)))
                    setattr(term, attr, value)
            yield
        finally:
            for term, attr, value in reversed(saved):
                setattr(term, attr, value)

    def forward(self, x_p: torch.Tensor, x_r: torch.Tensor, dead: torch.Tensor, varying: dict[str, torch.Tensor]):
        out = self.model(x_p)
        ctx = TermContext.from_forward(out, x_p, x_r, self.model, self.step, dead)
        with self._varied(varying):
            loss, parts = self.objective(ctx)
        return loss, parts, out.fired(), out.count_nonzero()


def _varying_term_values(objectives: list[Objective], dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """Term attributes that differ across members, stacked [E, ...]: float coefficients and soft anchors."""
    values: dict[str, torch.Tensor] = {}
    for index, terms in enumerate(zip(*(o.terms for o in objectives), strict=True)):
        for attr, first in vars(terms[0]).items():
            column = [vars(term)[attr] for term in terms]
            if isinstance(first, Anchors):
                values[f"{index}.anchors.A"] = torch.stack([a.A for a in column])
                values[f"{index}.anchors.B"] = torch.stack([a.B for a in column])
            elif isinstance(first, float) and any(v != first for v in column):
                values[f"{index}.{attr}"] = torch.tensor(column, dtype=dtype)
    return values


class EnsembleTrainer:
    """Trains the runs `configs` on `sources` (one each; the same object may serve several members) as
    one stacked ensemble. `run_dirs` (one per member, or None) get the ordinary logs and checkpoints."""

    def __init__(
        self,
        configs: Sequence[RunConfig],
        sources: Sequence[DataSource],
        run_dirs: Sequence[str | Path | None] | None = None,
    ):
        if len(sources) != len(configs):
            raise ConfigError(f"an ensemble of {len(configs)} runs needs as many data sources, got {len(sources)}")
        run_dirs = list(run_dirs) if run_dirs is not None else [None] * len(configs)
        if len(run_dirs) != len(configs):
            raise ConfigError(f"an ensemble of {len(configs)} runs needs as many run folders, got {len(run_dirs)}")
        refusal = ensemble_refusal(configs)
        if refusal is not None:
            raise ConfigError(f"these runs cannot train as one ensemble: {refusal}; train them one by one")
        self.members = [Trainer(c, s, d) for c, s, d in zip(configs, sources, run_dirs, strict=True)]
        self.shared_source = all(s is sources[0] for s in sources)
        first = self.members[0]
        self.cfg, self.device, self.E = first.cfg, first.device, len(self.members)
        dtype = first.model.W_E.dtype
        # The template only gives the members' forward its structure (its weights are swapped for theirs);
        # its own generator keeps the global RNG as one-by-one runs leave it.
        dense = first.config.model.model_copy(update={"kernel": "dense"})
        template = SparseDictionary(dense, torch.Generator().manual_seed(0)).to(self.device)
        template.train()
        self.loss_module = _MemberLoss(template, Objective([*first.objective.terms]))
        params, buffers = stack_module_state([m.model for m in self.members])
        self.names = [name for name, _ in first.model.named_parameters()]
        self.params = {name: params[name] for name in self.names}  # leaves [E, ...], requires_grad
        self.buffers = buffers
        self.varying = {
            k: v.to(self.device) for k, v in _varying_term_values([m.objective for m in self.members], dtype).items()
        }
        self.optimizer = torch.optim.Adam(
            list(self.params.values()), lr=self.cfg.lr, betas=self.cfg.betas, eps=self.cfg.adam_eps, fused=True
        )
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, lambda s: lr_factor(s, self.cfg))
        self.since_fired = torch.zeros(self.E, first.config.model.n_latents, dtype=torch.int64, device=self.device)
        self.step = 0
        self.train_seconds = 0.0
        self._acc: dict[str, torch.Tensor] = {}
        self._acc_steps = 0

    # ----- one step ---------------------------------------------------------------------------------
    def _losses(self, x_p: torch.Tensor, x_r: torch.Tensor):
        """Every member's (loss [E], parts {name: [E]}, fired [E, n_latents], non-zero count [E])."""
        state = {f"model.{k}": v for k, v in [*self.params.items(), *self.buffers.items()]}
        names = list(state)

        def member(tensors, x_p, x_r, dead, varying):
            return functional_call(self.loss_module, dict(zip(names, tensors, strict=True)), (x_p, x_r, dead, varying))

        x_dim = None if self.shared_source else 0
        return vmap(member, in_dims=(0, x_dim, x_dim, 0, 0))(
            [state[k] for k in names], x_p, x_r, self.since_fired >= self.cfg.dead_window, self.varying
        )

    def _batch(self, position: int) -> tuple[torch.Tensor, torch.Tensor]:
        """x_p, x_r: [B, n] from a shared source, else stacked [E, B, n]."""
        dtype = self.members[0].model.W_E.dtype
        if self.shared_source:
            batch = self.members[0].source.batch(position, self.cfg.batch_size)
            return batch.x_p, batch.x_r.to(dtype)
        batches = [m.source.batch(position, self.cfg.batch_size) for m in self.members]
        return torch.stack([b.x_p for b in batches]), torch.stack([b.x_r.to(dtype) for b in batches])

    def _train_step(self) -> None:
        self.optimizer.zero_grad(set_to_none=True)
        x_p, x_r = self._batch(self.step)
        self.loss_module.step = self.step
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.cfg.precision == "bf16"):
            losses, parts, fired, nonzeros = self._losses(x_p, x_r)
        finite = torch.isfinite(losses)
        if not bool(finite.all()):
            bad = int((~finite).nonzero()[0])
            raise TrainingDiverged(
                f"ensemble member {bad} ({self.members[bad].config.model.method.name}, seed "
                f"{self.members[bad].config.seed}) stopped at step {self.step}: the loss became NaN or inf "
                "(lower train.lr, set train.grad_clip, or check the data)"
            )
        losses.sum().backward()
        grads = [p.grad for p in self.params.values() if p.grad is not None]
        if self.members[0].config.model.unit_norm_decoder and self.params["W_D"].grad is not None:
            project_columns_(self.params["W_D"].grad, self.params["W_D"].detach())
        if self.cfg.grad_clip is not None:
            norms = torch.stack([g.pow(2).flatten(1).sum(dim=1) for g in grads]).sum(dim=0).sqrt()  # [E]
            scale = (self.cfg.grad_clip / (norms + 1e-6)).clamp(max=1.0)
            for g in grads:
                g.mul_(scale.view(-1, *[1] * (g.ndim - 1)))
        self.optimizer.step()
        self.scheduler.step()
        if self.members[0].config.model.unit_norm_decoder:
            normalize_columns_(self.params["W_D"].detach())
        self.since_fired = torch.where(fired, 0, self.since_fired + self.cfg.batch_size)
        values = {**parts, "loss": losses.detach(), "l0": nonzeros / self.cfg.batch_size}
        for key, value in values.items():
            self._acc[key] = self._acc.get(key, 0) + value.detach().float()
        self._acc_steps += 1

    # ----- the members' view --------------------------------------------------------------------------
    @torch.no_grad()
    def _sync_members(self, optimizer: bool) -> None:
        """Copy the stack into the member trainers (weights, dead counters, step; with `optimizer`, also
        Adam's moments and the schedule, so their checkpoints resume as if each had trained alone)."""
        group = self.optimizer.param_groups[0]
        for e, member in enumerate(self.members):
            named = dict(member.model.named_parameters())
            for name, stacked in self.params.items():
                named[name].copy_(stacked[e])
            for name, buffer in member.model.named_buffers():
                buffer.copy_(self.buffers[name][e])
            member.step, member.position = self.step, self.step
            member.train_seconds = self.train_seconds / self.E
            member.dead.since_fired = self.since_fired[e].clone()
            if not optimizer:
                continue
            for name, stacked in self.params.items():
                state = self.optimizer.state.get(stacked)
                if state:
                    member.optimizer.state[named[name]] = {
                        key: value.clone() if key == "step" else value[e].clone() for key, value in state.items()
                    }
            member.scheduler.load_state_dict(self.scheduler.state_dict())
            member.optimizer.param_groups[0]["lr"] = group["lr"]

    def _log(self, rate: float) -> list[dict[str, Any]]:
        self._sync_members(optimizer=True)
        records = []
        for e, member in enumerate(self.members):
            member._acc = {k: v[e] for k, v in self._acc.items()}
            member._acc_steps = self._acc_steps
            records.append(member._log(rate))
        self._acc, self._acc_steps = {}, 0
        return records

    def fit(self) -> list[TrainResult]:
        """Train every member to `train.steps`; one TrainResult per member, in order (`train_seconds` is
        each member's share of the ensemble's time). Ensembles do not resume: a member's checkpoint
        resumes with an ordinary `Trainer`."""
        for member in self.members:
            if member.run_dir is not None:
                if list_checkpoints(member.run_dir):
                    raise ConfigError(
                        f"{member.run_dir} already holds checkpoints: an ensemble does not resume; resume that run "
                        "on its own (Trainer / --resume) or choose a new folder"
                    )
                member.open_run_dir()
                member._truncate_log()  # the log of an attempt that never reached a checkpoint starts over
        cfg = self.cfg
        histories: list[list[dict[str, Any]]] = [[] for _ in self.members]
        bar = tqdm(
            total=cfg.steps,
            unit="step",
            disable=not cfg.progress,
            mininterval=0.1 if sys.stderr.isatty() else 10.0,
            dynamic_ncols=True,
            desc=f"{self.members[0].config.model.method.name} ×{self.E}",
        )
        interval_start, interval_step = time.perf_counter(), self.step
        while self.step < cfg.steps:
            t0 = time.perf_counter()
            self._train_step()
            self.step += 1
            self.train_seconds += time.perf_counter() - t0
            bar.update(1)
            if self.step % cfg.log_every == 0 or self.step == cfg.steps:
                now = time.perf_counter()
                rate = (self.step - interval_step) * cfg.batch_size / max(now - interval_start, 1e-9)
                for history, record in zip(histories, self._log(rate), strict=True):
                    history.append(record)
                interval_start, interval_step = now, self.step
            if (cfg.checkpoint_every and self.step % cfg.checkpoint_every == 0) or self.step == cfg.steps:
                self._sync_members(optimizer=True)
                for member in self.members:
                    member.save_checkpoint()
        bar.close()
        self._sync_members(optimizer=False)
        results = []
        for member, history in zip(self.members, histories, strict=True):
            metrics = reconstruction_metrics(member.model, member.source.eval_batch())
            metrics["dead_fraction"] = member.dead.dead.float().mean().item()
            results.append(
                TrainResult(
                    model=member.model,
                    steps=self.step,
                    samples_seen=self.step * cfg.batch_size,
                    train_seconds=self.train_seconds / self.E,
                    metrics=metrics,
                    run_dir=member.run_dir,
                    checkpoint=member.last_checkpoint,
                    history=history,
                )
            )
        return results
