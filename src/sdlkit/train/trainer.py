"""One training run: Adam, learning-rate warm-up and decay, gradient clipping, bf16 autocast,
dead-latent tracking and resampling, a JSONL metrics log, periodic checkpoints and exact resume, on one
process or as one rank of a data-parallel group. Method-agnostic: the objective's terms come from the
method's config. The loop itself is sdlkit.train.loop's, shared with the batched ensembles.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NoReturn

import torch

from sdlkit.config import RESAMPLE_SEED_OFFSET, RunConfig
from sdlkit.core.model import SparseDictionary, check_fits
from sdlkit.core.objective import Objective, Term, TermContext
from sdlkit.data.directions import require_directions
from sdlkit.data.source import Batch, DataSource
from sdlkit.errors import CheckpointError, ConfigError, ShapeError, TrainingDiverged
from sdlkit.eval.metrics import batch_fvu, reconstruction_metrics
from sdlkit.io import clean_interrupted_writes, load_weights, mark_folder
from sdlkit.store.normalize import fold_scales
from sdlkit.train.anchoring import AnchorPenalty, Anchors, apply_hard_anchors, ground_truth_anchors, load_anchors
from sdlkit.train.checkpoint import (
    RESUMABLE_CHANGES,
    STATE_JSON,
    config_differences,
    list_checkpoints,
    load_training_checkpoint,
    save_training_checkpoint,
)
from sdlkit.train.constraints import (
    ActivationPostStep,
    AverageOverRanks,
    Constraint,
    ExemptAnchorPull,
    HardAnchors,
    UnitNormDecoder,
)
from sdlkit.train.curves import write_curves
from sdlkit.train.distributed import (
    DistContext,
    any_rank,
    gather_rows,
    local_batch_size,
    mean_over_ranks,
    rank_source,
)
from sdlkit.train.loop import Accumulator, StepLosses, adam, run, train_step
from sdlkit.train.resample import DeadLatents, resample_dead_latents
from sdlkit.train.runlog import METRICS_FILE, RunLog, require_tensorboard  # noqa: F401  (METRICS_FILE re-exported)

EVAL_FIELDS = ("fvu", "l0", "never_fired_fraction")
"""The held-out figures a log line carries, as `eval_<name>` (see `Trainer.held_out`)."""
EVAL_CHUNK_CODES = 1 << 26
"""Held-out rows are scored in chunks of at most this many codes (rows × n_latents, 8,192 rows at most):
the dense codes of a chunk, 256 MB in float32, bound what an evaluation adds to training's peak memory."""


@dataclass
class TrainResult:
    """What a finished run hands back. `metrics` are on the held-out set."""

    model: SparseDictionary
    steps: int
    samples_seen: int
    train_seconds: float
    metrics: dict[str, float]
    run_dir: Path | None = None
    checkpoint: Path | None = None
    history: list[dict[str, Any]] = field(default_factory=list)


class Trainer:
    """Trains `config.model` on `source`. With `run_dir`, logs and checkpoints there. With `dist` (see
    sdlkit.train.distributed), this process is one rank of a data-parallel group: `train.batch_size` is
    the global batch, this rank trains on its share, and only rank 0 writes."""

    def __init__(
        self,
        config: RunConfig,
        source: DataSource,
        run_dir: str | Path | None = None,
        extra_terms: list[Term] = (),
        anchors: Anchors | None = None,
        dist: DistContext | None = None,
    ):
        self.config = config
        self.cfg = config.train
        self.dist = dist
        self.is_main = dist is None or dist.is_main
        self.local_batch = (
            self.cfg.batch_size if dist is None else local_batch_size(self.cfg.batch_size, dist.world_size)
        )
        self.source = source if dist is None else rank_source(source, dist.rank, dist.world_size)
        self.run_dir = Path(run_dir) if run_dir is not None else None
        self.run_log = self._run_log()
        self.device = torch.device(config.device)
        if (source.n_in, source.n_out) != (config.model.n_in, config.model.n_out):
            raise ShapeError(
                f"the data gives n_in={source.n_in}, n_out={source.n_out} but model has "
                f"n_in={config.model.n_in}, n_out={config.model.n_out}"
            )
        check_fits(config.model, self.device, 4, "training (weights, gradients and Adam's two moments)")
        generator = torch.Generator().manual_seed(config.seed)
        self.model = SparseDictionary(config.model, generator).to(self.device)
        method = config.model.method
        terms = [*method.build_terms(config.model.n_latents, source.n_out), *extra_terms]
        self.anchors = self._anchors(anchors)
        penalty = None  # soft anchors: their penalty is a term like any other
        if self.anchors is not None and self.cfg.anchors.mode == "soft":
            penalty = AnchorPenalty(self.anchors, self.cfg.anchors.weight)
            terms.append(penalty)
        elif self.anchors is not None:
            apply_hard_anchors(self.model, self.anchors)
        self.objective = Objective(terms)
        self.constraints = self._constraints(penalty)
        self.optimizer, self.scheduler = adam(list(self.model.parameters()), self.cfg)
        self.dead = DeadLatents(config.model.n_latents, self.cfg.dead_window, self.device)
        self.metrics = Accumulator()  # the log line's sums
        self.step = 0
        self.position = 0  # batches drawn from the source (training and resampling)
        self.train_seconds = 0.0
        self.n_resampled = 0
        self.last_checkpoint: Path | None = None

    def _run_log(self) -> RunLog | None:
        """Where this process writes the log (rank 0 of a run with a folder), after checking that the
        TensorBoard events asked for can be written."""
        if self.cfg.tensorboard:
            if self.run_dir is None:
                raise ConfigError("train.tensorboard needs a run folder (--out, or the Trainer's run_dir)")
            require_tensorboard()
        return RunLog(self.run_dir, self.cfg.tensorboard) if self.run_dir is not None and self.is_main else None

    def _anchors(self, given: Anchors | None) -> Anchors | None:
        """The anchors to use: `given`, else train.anchors' file, else drawn from the source's known
        directions (ground truth or class means) per train.anchors."""
        spec = self.cfg.anchors
        if spec is None:
            if given is not None:
                raise ConfigError("anchors were given but train.anchors is not set (it holds weight and mode)")
            return None
        if given is None and spec.source == "file":  # `sdlkit anchors discover`'s file, checked by its SHA-256
            given = load_anchors(spec.file, spec.count, spec.file_sha256)
        if given is None:
            truth = require_directions(self.source, spec.source)
            n_features = truth.W_p.shape[1]
            if spec.count > n_features:
                what = "features" if truth.kind == "ground_truth" else "labelled classes"
                raise ConfigError(
                    f"train.anchors.count = {spec.count} is larger than the number of {what}: {n_features}"
                )
            given = ground_truth_anchors(truth.W_p, truth.W_r, spec.count, spec.seed)
        if given.k != spec.count:
            raise ConfigError(f"train.anchors.count = {spec.count} but {given.k} anchors were given")
        if given.k > self.model.n_latents:
            raise ConfigError(
                f"train.anchors.count = {given.k} is larger than model.n_latents = {self.model.n_latents}"
            )
        if given.A.shape[1] != self.model.n_in or given.B.shape[0] != self.model.n_out:
            raise ShapeError(
                f"anchors are [{given.k}, {given.A.shape[1]}] and [{given.B.shape[0]}, {given.k}] but the model needs "
                f"[k, {self.model.n_in}] and [{self.model.n_out}, k]"
            )
        return given.to(self.device, self.model.W_E.dtype)

    def _constraints(self, penalty: AnchorPenalty | None) -> list[Constraint]:
        """The rules `train_step` applies around every step, in this order (see sdlkit.train.constraints)."""
        model, constraints = self.model, []
        if self.dist is not None:
            constraints.append(AverageOverRanks(list(model.parameters()), self.dist.world_size))
        if model.config.unit_norm_decoder:
            constraints.append(UnitNormDecoder(model.W_D))
        if model.activation.has_post_step:
            constraints.append(ActivationPostStep(model.activation))
        if self.anchors is not None and self.cfg.anchors.mode == "hard":
            constraints.append(HardAnchors(model, self.anchors))
        if penalty is not None and not self.cfg.anchors.clip_pull:
            constraints.append(ExemptAnchorPull.of(penalty, model))
        return constraints

    # ----- state ------------------------------------------------------------------------------------
    def state(self) -> dict[str, Any]:
        return {
            "step": self.step,
            "position": self.position,
            "train_seconds": self.train_seconds,
            "n_resampled": self.n_resampled,
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "dead": self.dead.state_dict(),
            "rng_cpu": torch.get_rng_state(),
            "rng_cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
            "acc": dict(self.metrics.sums),
            "acc_steps": self.metrics.steps,
        }

    def _load_state(self, state: dict[str, Any]) -> None:
        self.step, self.position = state["step"], state["position"]
        self.train_seconds, self.n_resampled = state["train_seconds"], state["n_resampled"]
        self.optimizer.load_state_dict(state["optimizer"])
        for group in self.optimizer.state.values():  # loaded on CPU: move moments beside the weights
            for key, value in group.items():
                if isinstance(value, torch.Tensor) and key != "step":
                    group[key] = value.to(self.device)
        self.scheduler.load_state_dict(state["scheduler"])
        self.dead.load_state_dict(state["dead"])
        torch.set_rng_state(state["rng_cpu"])
        if torch.cuda.is_available() and state["rng_cuda"]:
            torch.cuda.set_rng_state_all(state["rng_cuda"])
        self.metrics = Accumulator({k: v.to(self.device) for k, v in state["acc"].items()}, state["acc_steps"])
        if "train_weights" in state:  # the checkpoint's weights.safetensors holds the folded ones
            load_weights(self.model, state["train_weights"], Path("trainer state"))

    def open_run_dir(self) -> None:
        """Create the run folder as sdlkit's (see sdlkit.io.mark_folder) and remove what a run killed in
        the middle of writing a checkpoint left (rank 0 only: it is the one that writes)."""
        if self.run_dir is not None and self.is_main:
            mark_folder(self.run_dir, "run")
            clean_interrupted_writes(self.run_dir / "checkpoints")

    def resume(self) -> Path:
        """Restore the latest checkpoint of `run_dir`; refuse one written under a different config."""
        if self.run_dir is None:
            raise ConfigError("resume needs a run folder (--out)")
        checkpoints = list_checkpoints(self.run_dir)
        if not checkpoints:
            raise CheckpointError(f"nothing to resume: {self.run_dir} holds no finished checkpoint")
        folder = checkpoints[-1]
        saved, state = load_training_checkpoint(folder, self.model, self.device)
        changed = [
            k for k in config_differences(saved.get("run", {}), self._config_json()) if k not in RESUMABLE_CHANGES
        ]
        if changed:
            raise CheckpointError(
                f"{folder} was written with a different config ({', '.join(changed[:5])} differ); "
                "resume with the same config or start a new run folder"
            )
        try:
            self._load_state(state)
        except (KeyError, TypeError, ValueError, IndexError, RuntimeError) as err:
            raise CheckpointError(
                f"{folder / STATE_JSON} does not hold a usable trainer state ({type(err).__name__}: {err}); "
                "resume from an intact checkpoint or start the run again"
            ) from None
        self.last_checkpoint = folder
        if self.is_main:  # the one rank that writes the log
            self._truncate_log()
        return folder

    def _config_json(self) -> dict[str, Any]:
        return self.config.model_dump(mode="json")

    def folded_weights(self) -> dict[str, torch.Tensor] | None:
        """The weights for raw activations when the source rescales them (`block_scales`, e.g. a store
        with `normalize: true`), else None: W_E and W_D/b_D absorb the per-block scales (see fold_scales)."""
        scales = self.source.block_scales()
        if scales is None:
            return None
        tensors = {k: v.detach() for k, v in self.model.named_tensors().items()}
        return fold_scales(tensors, self.source.in_blocks, self.source.out_blocks, scales.inputs, scales.outputs)

    def save_checkpoint(self) -> Path | None:
        """A checkpoint whose weights.safetensors is for raw activations (folded when the data were
        normalised; the trainer state then keeps the training-space weights for exact resume)."""
        if self.run_dir is None or not self.is_main:
            return None
        state, extra, folded = self.state(), {}, self.folded_weights()
        if folded is not None:
            scales = self.source.block_scales()
            assert scales is not None  # folded weights exist only for a source with block scales
            state["train_weights"] = self.model.named_tensors()
            extra["normalization"] = {"in_scales": scales.inputs, "out_scales": scales.outputs}
        extra["dead_fraction"] = self.dead_fraction()  # what `sdlkit eval` reports as the run's dead_fraction
        self.last_checkpoint = save_training_checkpoint(
            self.run_dir,
            self.step,
            self.model,
            self._config_json(),
            state,
            self.cfg.keep_checkpoints,
            weights=folded,
            extra=extra,
        )
        return self.last_checkpoint

    # ----- logging ------------------------------------------------------------------------------------
    def _truncate_log(self) -> None:
        """Drop log lines written after the checkpoint we resume from (they will be written again), and a
        torn tail (a full disk or a kill mid-line leaves one): everything from the first unreadable line."""
        self.run_log.truncate(self.step)

    def dead_fraction(self) -> float:
        """Latents that fired on none of the last train.dead_window training samples (under σ's training
        form), as a fraction of all; 0 until the run has seen dead_window samples."""
        return self.dead.dead.float().mean().item()

    def held_out(self) -> dict[str, float]:
        """reconstruction_metrics on the source's held-out rows (σ's inference form, no gradient, no random
        numbers; the model's mode is restored), so evaluating never changes the training run."""
        chunk = min(8192, max(1, EVAL_CHUNK_CODES // self.model.n_latents))
        return reconstruction_metrics(self.model, self.source.eval_batch(), chunk)

    def log(self, samples_per_s: float, evaluate: bool = False) -> list[dict[str, Any]]:
        """Append the log line of the steps since the last one to metrics.jsonl (rank 0) and return it;
        with `evaluate`, it holds the held-out figures too. Every field is described in the README,
        "Watching a run"."""
        record: dict[str, Any] = {
            "step": self.step,  # optimiser steps taken
            "samples": self.step * self.cfg.batch_size,  # training samples seen (all ranks): the curves' x axis
        }
        # loss, each objective term's value (mse, l1, auxk, ...), fvu and l0 (mean active latents per
        # sample): means over the training batches since the last line, under σ's training form
        means = self.metrics.pop_means()
        if self.dist is not None:
            means = mean_over_ranks(means, self.dist.world_size)
        record.update({k: v.item() for k, v in means.items()})
        record.update(
            dead_fraction=self.dead_fraction(),  # silent on the last train.dead_window training samples
            lr=self.scheduler.get_last_lr()[0],  # the learning rate of the last step
            samples_per_s=samples_per_s,  # training throughput since the last line (logging and evaluation excluded)
            resampled=self.n_resampled,  # latents resampled so far (train.resample)
        )
        if evaluate:  # every train.eval_every steps and at the last: eval_fvu, eval_l0, eval_never_fired_fraction
            held_out = self.held_out()
            record.update({f"eval_{key}": held_out[key] for key in EVAL_FIELDS})
        if self.run_log is not None:
            self.run_log.write(record)
        return [record]

    def finish(self) -> None:
        """Close the log at the end of training: curves.png from the whole of metrics.jsonl, and the
        TensorBoard events."""
        if self.run_log is not None:
            self.run_log.close()
            write_curves(self.run_dir, f"{self.config.model.method.name} · {self.run_dir.resolve().name}")

    # ----- the loop -----------------------------------------------------------------------------------
    def _next_batch(self) -> Batch:
        batch = self.source.batch(self.position, self.local_batch)
        self.position += 1
        return batch

    def advance(self) -> None:
        """One training step on the next batch, then resampling where it is due."""
        train_step(self, self._next_batch())
        self.step += 1
        self._maybe_resample()

    # ----- one step's parts (sdlkit.train.loop.train_step runs them) --------------------------------------
    def losses(self, batch: Batch) -> StepLosses:
        model = self.model
        out = model(batch.x_p)
        ctx = TermContext(out, batch.x_p, batch.x_r.to(model.W_E.dtype), model, self.step, self.dead.dead)
        loss, parts = self.objective(ctx)
        fired = out.fired() if self.dist is None else any_rank(out.fired())
        return StepLosses(loss, parts, fired, out.count_nonzero() / len(batch), batch_fvu(ctx.x_r, out.x_hat))

    def diverged(self, batch: Batch, loss: torch.Tensor) -> NoReturn:
        bad_input = not (torch.isfinite(batch.x_p).all() and torch.isfinite(batch.x_r).all())
        cause = "the batch holds NaN or inf" if bad_input else "the loss became NaN or inf"
        hint = "check the data" if bad_input else "lower train.lr, or set train.grad_clip"
        last = self.last_checkpoint or "none was written yet"
        raise TrainingDiverged(f"training stopped at step {self.step}: {cause} ({hint}); last good checkpoint: {last}")

    def _maybe_resample(self) -> None:
        rs = self.cfg.resample
        if rs is None or self.step % rs.every_steps != 0 or (rs.stop_step is not None and self.step >= rs.stop_step):
            return
        dead = self.dead.dead
        if not bool(dead.any()):
            return
        n_batches = math.ceil(rs.n_inputs / self.cfg.batch_size)
        batches = [self._next_batch() for _ in range(n_batches)]
        inputs = Batch(torch.cat([b.x_p for b in batches]), torch.cat([b.x_r for b in batches]))
        if self.dist is not None:  # every rank resamples from the same (global) inputs, so weights stay equal
            inputs = Batch(gather_rows(inputs.x_p), gather_rows(inputs.x_r))
        generator = torch.Generator(self.device).manual_seed(self.config.seed + RESAMPLE_SEED_OFFSET + self.step)
        self.n_resampled += resample_dead_latents(self.model, self.optimizer, dead, inputs, generator, rs.encoder_scale)
        self.dead.since_fired[dead] = 0  # a fresh window for the new latents

    def fit(self, resume: bool = False) -> TrainResult:
        """Train to `train.steps` (continuing from the latest checkpoint when `resume`)."""
        self.prepare(resume)
        self.model.train()
        [history] = run(self, 1, self.config.model.method.name, show=self.is_main)
        return self.result(history)

    def prepare(self, resume: bool = False) -> None:
        """Open the run folder: resume its latest checkpoint when `resume`, else refuse one that holds
        checkpoints, and start the log of an attempt that never reached one over."""
        if self.run_dir is None:
            return
        self.open_run_dir()
        if resume:
            self.resume()
        elif list_checkpoints(self.run_dir):
            raise ConfigError(f"{self.run_dir} already holds checkpoints: resume it (--resume) or choose a new folder")
        elif self.is_main:
            self._truncate_log()

    def result(self, history: list[dict[str, Any]]) -> TrainResult:
        """The run as it stands, with its metrics on the held-out set and `history`, its log records."""
        metrics = self.held_out()
        metrics["dead_fraction"] = self.dead_fraction()
        return TrainResult(
            model=self.model,
            steps=self.step,
            samples_seen=self.step * self.cfg.batch_size,
            train_seconds=self.train_seconds,
            metrics=metrics,
            run_dir=self.run_dir,
            checkpoint=self.last_checkpoint,
            history=history,
        )
