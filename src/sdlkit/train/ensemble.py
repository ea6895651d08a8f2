"""Batched sweeps: train E dictionaries of one shape at once (stacked weights, batched matmuls).

Seeds and sparsity-coefficient sweeps train many dictionaries that differ only in their initial
weights, their data stream and a loss coefficient. Here their parameters are stacked into tensors
[E, ...] and one step runs all of them: the member's forward and objective are the ordinary
`SparseDictionary` and terms, vmapped (torch.func) over the stack with each member's weights and term
buffers (coefficients, anchors) swapped in, so there is no second model implementation. One backward
on the members' losses gives every member its own gradients; clipping is per member, and Adam, being
elementwise, on the stack equals E separate Adams. The loop is sdlkit.train.loop's, as a Trainer's, and so
are the gradient constraints: member 0's, taken onto the stacked tensors.

Each member is an ordinary `Trainer` (same initialisation, anchors, logs and checkpoints as a run on
its own): the stack is copied back into it for its metrics.jsonl lines, its checkpoints (which an
ordinary `Trainer` can resume) and its result. What members may differ in: seed, data source (same
shapes), anchors' seed, and float method fields named `*_coefficient` (their terms hold them as
buffers). Inside the stack the dense kernel computes the forward (the sparse kernel's autograd Function
has no vmap rule). Refused: resampling, hard anchors, σ with a post-step, data-parallel ranks (train
such members one by one).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, NoReturn

import torch
from torch import nn
from torch.func import functional_call, stack_module_state, vmap

from sdlkit.config import RunConfig
from sdlkit.core.model import SparseDictionary
from sdlkit.core.objective import Objective, TermContext
from sdlkit.data.source import Batch, DataSource
from sdlkit.errors import ConfigError, TrainingDiverged
from sdlkit.eval.metrics import batch_fvu
from sdlkit.train.checkpoint import config_differences, list_checkpoints
from sdlkit.train.constraints import StackOf
from sdlkit.train.loop import Accumulator, StepLosses, adam, run, train_step
from sdlkit.train.resample import DeadLatents
from sdlkit.train.trainer import Trainer, TrainResult

CPU_BATCH_MAX_WORK = 1 << 22
"""On CPU, stacking pays only while a member's step is small enough for per-op overheads to dominate
(batch × n_in × n_latents at most this; the measurements behind the bound: benchmarks/README.md, "Batched
sweeps")."""
SPARSE_BATCH_MAX_LATENTS = 4096
"""On GPUs, above this many latents TopK-family runs are expected to train faster one by one on the
sparse kernel than stacked on the dense one (an expectation, not a measurement: benchmarks/README.md,
"Batched sweeps")."""


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
        if config.model.method.build_activation(config.model.n_latents).has_post_step:
            return f"method {config.model.method.name} has a post-step, which an ensemble does not run"
        differ = [k for k in config_differences(first, config.model_dump(mode="json")) if not _may_differ(k)]
        if differ:
            return (
                f"member {i} differs from member 0 in {', '.join(differ[:4])}; members may differ only in seed, "
                "data, anchors seed and method *_coefficient fields"
            )
    return None


class _MemberLoss(nn.Module):
    """One member's step: the model's forward, then the objective. Run under functional_call with the
    member's weights and term buffers, so terms reading ctx.model see the member's weights."""

    def __init__(self, model: SparseDictionary, objective: Objective):
        super().__init__()
        self.model = model
        self.objective = objective
        self.step = 0

    def forward(self, x_p: torch.Tensor, x_r: torch.Tensor, dead: torch.Tensor):
        out = self.model(x_p)
        loss, parts = self.objective(TermContext(out, x_p, x_r, self.model, self.step, dead))
        return loss, parts, out.fired(), out.count_nonzero(), batch_fvu(x_r, out.x_hat)


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
        # The template only gives the members' forward its structure (its weights are swapped for theirs);
        # its own generator keeps the global RNG as one-by-one runs leave it.
        dense = first.config.model.model_copy(update={"kernel": "dense"})
        template = SparseDictionary(dense, torch.Generator().manual_seed(0)).to(self.device)
        template.train()
        self.loss_module = _MemberLoss(template, first.objective)
        params, buffers = stack_module_state([m.model for m in self.members])
        self.params = {name: params[name] for name, _ in first.model.named_parameters()}  # leaves [E, ...]
        _, terms = stack_module_state([m.objective for m in self.members])
        self.stacked = {  # everything functional_call swaps in, by its name in loss_module
            **{f"model.{k}": v for k, v in [*self.params.items(), *buffers.items()]},
            **{f"objective.{k}": v.to(self.device) for k, v in terms.items()},
        }
        stack_of = self._stack_of(first)  # member 0's rules (the members agree on them), on the stacks
        self.constraints = [constraint.stacked(stack_of) for constraint in first.constraints]
        self.optimizer, self.scheduler = adam(list(self.params.values()), self.cfg)
        self.dead = DeadLatents((self.E, first.config.model.n_latents), self.cfg.dead_window, self.device)
        self.metrics = Accumulator()
        self.step = 0
        self.train_seconds = 0.0

    def _stack_of(self, member: Trainer) -> StackOf:
        """Maps each of `member`'s parameters and term buffers to the stack [E, ...] that replaces it in
        the step (by identity: the names are those functional_call swaps in)."""
        named = _MemberLoss(member.model, member.objective)
        tensors = [*named.named_parameters(), *named.named_buffers()]
        stacks = {id(tensor): self.stacked[name] for name, tensor in tensors if name in self.stacked}
        return lambda tensor: stacks[id(tensor)]

    # ----- one step's parts (sdlkit.train.loop.train_step runs them) --------------------------------------
    def advance(self) -> None:
        train_step(self, self._batch(self.step))
        self.step += 1

    def _batch(self, position: int) -> Batch:
        """x_p, x_r: [B, n] from a shared source, else stacked [E, B, n]."""
        dtype = self.members[0].model.W_E.dtype
        if self.shared_source:
            batch = self.members[0].source.batch(position, self.cfg.batch_size)
            return Batch(batch.x_p, batch.x_r.to(dtype))
        batches = [m.source.batch(position, self.cfg.batch_size) for m in self.members]
        return Batch(torch.stack([b.x_p for b in batches]), torch.stack([b.x_r.to(dtype) for b in batches]))

    def losses(self, batch: Batch) -> StepLosses:
        """Every member's loss [E], parts {name: [E]}, fired [E, n_latents], mean L0 [E] and FVU [E]."""
        names = list(self.stacked)

        def member(tensors, x_p, x_r, dead):
            return functional_call(self.loss_module, dict(zip(names, tensors, strict=True)), (x_p, x_r, dead))

        self.loss_module.step = self.step
        x_dim = None if self.shared_source else 0
        losses, parts, fired, nonzeros, fvu = vmap(member, in_dims=(0, x_dim, x_dim, 0))(
            list(self.stacked.values()), batch.x_p, batch.x_r, self.dead.dead
        )
        return StepLosses(losses, parts, fired, nonzeros / self.cfg.batch_size, fvu)

    def diverged(self, batch: Batch, loss: torch.Tensor) -> NoReturn:
        bad = int((~torch.isfinite(loss)).nonzero()[0])
        config = self.members[bad].config
        raise TrainingDiverged(
            f"ensemble member {bad} ({config.model.method.name}, seed {config.seed}) stopped at step {self.step}: "
            "the loss became NaN or inf (lower train.lr, set train.grad_clip, or check the data)"
        )

    # ----- the members' view --------------------------------------------------------------------------
    @torch.no_grad()
    def _sync_members(self, optimizer: bool) -> None:
        """Copy the stack into the member trainers (weights, dead counters, log sums, step; with
        `optimizer`, also Adam's moments and the schedule, so their checkpoints resume as if each had
        trained alone)."""
        for e, member in enumerate(self.members):
            named = dict(member.model.named_parameters())
            for name, stacked in self.params.items():
                named[name].copy_(stacked[e])
            for name, buffer in member.model.named_buffers():
                buffer.copy_(self.stacked[f"model.{name}"][e])
            member.step, member.position = self.step, self.step
            member.train_seconds = self.train_seconds / self.E
            member.dead.load_state_dict({"since_fired": self.dead.since_fired[e].clone()})
            member.metrics = self.metrics.member(e)
            if optimizer:
                self._sync_optimizer(e, member)

    def _sync_optimizer(self, e: int, member: Trainer) -> None:
        """Member `e`'s slice of Adam's moments, and the schedule."""
        named = dict(member.model.named_parameters())
        for name, stacked in self.params.items():
            state = self.optimizer.state.get(stacked)
            if state:
                member.optimizer.state[named[name]] = {
                    key: value.clone() if key == "step" else value[e].clone() for key, value in state.items()
                }
        member.scheduler.load_state_dict(self.scheduler.state_dict())
        member.optimizer.param_groups[0]["lr"] = self.optimizer.param_groups[0]["lr"]

    def log(self, samples_per_s: float, evaluate: bool) -> list[dict[str, Any]]:
        self._sync_members(optimizer=True)
        self.metrics = Accumulator()  # the members' log lines take the sums
        return [record for member in self.members for record in member.log(samples_per_s, evaluate)]

    def finish(self) -> None:
        for member in self.members:
            member.finish()

    def save_checkpoint(self) -> list[Path | None]:
        self._sync_members(optimizer=True)
        return [member.save_checkpoint() for member in self.members]

    def fit(self) -> list[TrainResult]:
        """Train every member to `train.steps`; one TrainResult per member, in order (`train_seconds` is
        each member's share of the ensemble's time). Ensembles do not resume: a member's checkpoint
        resumes with an ordinary `Trainer`."""
        for member in self.members:
            if member.run_dir is not None and list_checkpoints(member.run_dir):
                raise ConfigError(
                    f"{member.run_dir} already holds checkpoints: an ensemble does not resume; resume that run "
                    "on its own (Trainer / --resume) or choose a new folder"
                )
        for member in self.members:
            member.prepare()
        histories = run(self, self.E, f"{self.members[0].config.model.method.name} ×{self.E}")
        self._sync_members(optimizer=False)
        return [member.result(history) for member, history in zip(self.members, histories, strict=True)]
