"""TopK recipes side by side: sdlkit, EleutherAI sparsify and SAELens on identical LRB batches.

Every library trains a TopK SAE (512 latents, k = 6 at the quick scale) on exactly the same batches
(`LRBSource.batch(i, batch)` for i = 0, 1, ...), so samples seen are equal. Every `--every` steps the
script scores encoder rows W_E [n_latents, n_in] and decoder columns W_D [n_out, n_latents] against
the ground truth W_p (sdlkit.eval.recovery: M_GT at τ = 0.95 and M_IP), and records how far the encoder
rows have turned from their initial directions and the share of latents alive. At the end: FVU on
the held-out eval set (4,096 rows), and dead latents under two definitions, the same code for every
library: `never_fired_eval` (silent on every eval row) and `dead_window` (no firing in the last
`--dead-window` training steps, sdlkit's bench window of 100 batches).

What each row runs (each library's own model class and training step):
- sdlkit: `Trainer` with the bench's TopK config (sdlkit.paper.bench.plan_runs: lr, warm-up
  5%, dead window 100 batches; everything else the library defaults), stepped batch by batch.
  `--sdlkit-set key=value` overrides any run-config field. sdlkit-before: the same with
  `model.init_encoder_norm=1.0`, sdlkit's TopK initialisation before this benchmark.
- sparsify (pip `eai-sparsify` 1.3.3): `SparseCoder(SparseCoderConfig(num_latents, k))` and the step of
  `sparsify.Trainer.fit` for loss_fn="fvu", optimizer="adam" re-enacted line by line (its Trainer only
  runs on a Hugging Face model's hooks): b_dec ← mean of the first batch, decoder renormalised before
  each forward, loss = FVU against the batch variance, decoder-parallel gradient removed, Adam,
  transformers' linear warm-up + linear decay to 0 at the last step. sparsify's default warm-up is
  1,000 steps (longer than this run), so it gets the same 5% as sdlkit. sparsify-constant: the same
  with a constant learning rate after the warm-up (not sparsify's schedule).
- saelens (sae-lens 6.54): `TopKTrainingSAE` (library defaults: decoder rows at norm 0.1 and free,
  W_enc = W_decᵀ, b_dec = 0 subtracted from the input, selection on pre-activations × ‖W_dec‖) and the
  library's own `SAETrainer.step` (Adam, clip 1.0, its default constant schedule) on our batches.

Every library gets the same Adam lr (`--lr`, 1e-3 as in the bench).

Run with a Python that has sparsify and sae-lens installed (a scratch venv, never sdlkit's own):
    PYTHONPATH=src /work/scratch/peers/bin/python benchmarks/peer_recipes.py --seeds 0,1,2 --out peer-out
Ablation (sdlkit only, one ingredient at a time; `patch:` rows re-implement ingredients sdlkit has
no option for): add `--ablation` (see ABLATIONS), `--only "NAME|NAME"` for some of them.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path
from typing import Any

import torch
from scipy.stats import poisson

from sdlkit.config import run_config
from sdlkit.data.lrb import LRBSource, lrb_preset
from sdlkit.eval.recovery import best_match, gt_recovery, max_inner_product
from sdlkit.train import Trainer
from sdlkit.train.loop import lr_factor

TAU = 0.95


# ----- the three libraries, one interface ------------------------------------------------------------
OLD = ["model.init_encoder_norm=1.0"]  # sdlkit's TopK before this change: W_E = W_Dᵀ, unit rows


class SdlkitRun:
    """sdlkit's Trainer, stepped one batch at a time (the loop of Trainer.fit without its logging).

    Overrides are run-config `key=value`s, or `patch:NAME` for the ingredients sdlkit has no option for
    (tried here, not adopted; see PATCHES)."""

    name = "sdlkit"

    def __init__(self, source: LRBSource, args: argparse.Namespace, seed: int, overrides: list[str]):
        values = {
            "data": {"preset": "quick", "frame": args.frame_name, "seed": args.data_seed},
            "model": {"n_latents": args.latents, "method": {"name": "topk", "k": args.k}},
            "train": {  # as sdlkit.paper.bench.plan_runs
                "steps": args.steps,
                "batch_size": args.batch,
                "lr": args.lr,
                "lr_warmup_steps": max(1, args.steps // 20),
                "dead_window": args.dead_window * args.batch,
                "progress": False,
            },
            "seed": seed,
        }
        patches = [o.removeprefix("patch:") for o in overrides if o.startswith("patch:")]
        self.config = run_config(values, [o for o in overrides if not o.startswith("patch:")])
        self.trainer = Trainer(self.config, source)
        self.mean_init = False
        for patch in patches:
            name, _, value = patch.partition("=")
            PATCHES[name](self, value)

    def step(self) -> torch.Tensor:
        t = self.trainer
        if self.mean_init and t.step == 0:
            with torch.no_grad():
                t.model.b_D.copy_(t.source.batch(t.position, t.local_batch).x_r.mean(0))
        t.advance()
        return t.dead.since_fired == 0  # the latents that fired in this batch

    def directions(self) -> tuple[torch.Tensor, torch.Tensor]:
        return self.trainer.model.W_E.detach(), self.trainer.model.W_D.detach()

    @torch.no_grad()
    def reconstruct(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        model = self.trainer.model
        model.eval()
        out = model(x)
        model.train()
        return out.x_hat, out.x_q != 0


class SdlkitBeforeRun(SdlkitRun):
    """sdlkit's TopK as it was before the recipe change (W_E = W_Dᵀ with unit rows), for reference."""

    name = "sdlkit-before"

    def __init__(self, source: LRBSource, args: argparse.Namespace, seed: int, overrides: list[str]):
        super().__init__(source, args, seed, [*OLD, *overrides])


def _patch_mean_init(run: SdlkitRun, value: str) -> None:
    """b_D ← the mean of the first training batch before the first step (sparsify's initialisation)."""
    run.mean_init = True


def _patch_pre_encoder_bias(run: SdlkitRun, value: str) -> None:
    """The encoder reads x − b_D (Anthropic, SAELens, sparsify); b_D then gets the encoder's gradient too."""
    model = run.trainer.model
    forward = type(model).forward
    model.forward = lambda x_p: forward(model, x_p - model.b_D)


def _patch_decoder_lr(run: SdlkitRun, value: str) -> None:
    """W_D's learning rate × `value` (its own Adam parameter group, same schedule)."""
    t = run.trainer
    others = [p for name, p in t.model.named_parameters() if name != "W_D"]
    groups = [{"params": others}, {"params": [t.model.W_D], "lr": t.cfg.lr * float(value)}]
    t.optimizer = torch.optim.Adam(groups, lr=t.cfg.lr, betas=t.cfg.betas, eps=t.cfg.adam_eps, fused=True)
    t.scheduler = torch.optim.lr_scheduler.LambdaLR(t.optimizer, lambda s: lr_factor(s, t.cfg))


PATCHES = {"b_D_mean": _patch_mean_init, "pre_encoder_bias": _patch_pre_encoder_bias, "decoder_lr": _patch_decoder_lr}


class SparsifyRun:
    """EleutherAI sparsify's SparseCoder and the training step of its Trainer.fit (fvu loss, Adam)."""

    name = "sparsify"

    def __init__(self, source: LRBSource, args: argparse.Namespace, seed: int, overrides: list[str]):
        from sparsify import SparseCoder, SparseCoderConfig
        from transformers import get_linear_schedule_with_warmup

        self.source, self.batch = source, args.batch
        torch.manual_seed(seed)  # sparsify seeds its initialisation this way (Trainer.__init__)
        self.sae = SparseCoder(source.n_in, SparseCoderConfig(num_latents=args.latents, k=args.k), "cpu", torch.float32)
        self.optimizer = torch.optim.Adam(self.sae.parameters(), lr=args.lr)
        self.scheduler = get_linear_schedule_with_warmup(self.optimizer, max(1, args.steps // 20), args.steps)
        self.index = 0

    def step(self) -> torch.Tensor:
        sae = self.sae
        x = self.source.batch(self.index, self.batch).x_p
        if self.index == 0:  # "On the first iteration, initialize the encoder and decoder biases"
            sae.b_dec.data = x.mean(0).to(sae.dtype)
        sae.set_decoder_norm_to_unit_norm()
        total_variance = (x - x.mean(0)).pow(2).sum()
        out = sae(x=x, y=x, dead_mask=None, total_variance=total_variance)
        fired = torch.zeros(sae.num_latents, dtype=torch.bool)
        fired[out.latent_indices.flatten()] = True
        out.fvu.backward()
        sae.remove_gradient_parallel_to_decoder_directions()
        self.optimizer.step()
        self.optimizer.zero_grad()
        self.scheduler.step()
        self.index += 1
        return fired

    def directions(self) -> tuple[torch.Tensor, torch.Tensor]:
        return self.sae.encoder.weight.detach(), self.sae.W_dec.detach().T

    @torch.no_grad()
    def reconstruct(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        acts, indices, _ = self.sae.encode(x)
        fired = torch.zeros(x.shape[0], self.sae.num_latents, dtype=torch.bool)
        fired.scatter_(1, indices, acts != 0)
        return self.sae.decode(acts, indices), fired


class SparsifyConstantRun(SparsifyRun):
    """The same, but the learning rate stays constant after the warm-up (not sparsify's schedule: this row
    shows how much of sparsify's result is its decay to 0 over the whole run)."""

    name = "sparsify-constant"

    def __init__(self, source: LRBSource, args: argparse.Namespace, seed: int, overrides: list[str]):
        from transformers import get_constant_schedule_with_warmup

        super().__init__(source, args, seed, overrides)
        self.scheduler = get_constant_schedule_with_warmup(self.optimizer, max(1, args.steps // 20))


class SAELensRun:
    """SAELens' TopKTrainingSAE (library defaults) trained by its own SAETrainer.step on our batches."""

    name = "saelens"

    def __init__(self, source: LRBSource, args: argparse.Namespace, seed: int, overrides: list[str]):
        from sae_lens.saes.topk_sae import TopKTrainingSAE, TopKTrainingSAEConfig
        from sae_lens.training.sae_trainer import SAETrainer

        try:
            from sae_lens.config import SAETrainerConfig
        except ImportError:  # older layouts
            from sae_lens.training.sae_trainer import SAETrainerConfig

        self.source, self.batch = source, args.batch
        torch.manual_seed(seed)  # SAELens initialises from the global generator
        self.sae = TopKTrainingSAE(TopKTrainingSAEConfig(d_in=source.n_in, d_sae=args.latents, k=args.k))
        cfg = SAETrainerConfig(
            total_training_samples=args.steps * args.batch,
            train_batch_size_samples=args.batch,
            lr=args.lr,
            lr_end=args.lr / 10,  # what SAELens' runner config fills in; unused by the constant schedule
            dead_feature_window=args.dead_window,
        )
        self.trainer = SAETrainer(cfg, self.sae, data_provider=iter(()))
        self.index = 0

    def step(self) -> torch.Tensor:
        x = self.source.batch(self.index, self.batch).x_p
        out = self.trainer.step(x)  # the public seam fit() calls; it does not advance the step count
        self.trainer.n_training_steps += 1
        self.index += 1
        return (out.feature_acts != 0).any(dim=0)

    def directions(self) -> tuple[torch.Tensor, torch.Tensor]:
        return self.sae.W_enc.detach().T, self.sae.W_dec.detach().T

    @torch.no_grad()
    def reconstruct(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        acts = self.sae.encode(x)
        return self.sae.decode(acts), acts != 0


LIBRARIES = {cls.name: cls for cls in (SdlkitRun, SdlkitBeforeRun, SparsifyRun, SparsifyConstantRun, SAELensRun)}

ABLATIONS: dict[str, list[str]] = {
    # one ingredient at a time on top of the old default
    "old default (W_E = W_Dᵀ, unit rows)": OLD,
    "W_E rows at 0.1 (new default)": ["model.init_encoder_norm=0.1"],
    "W_E rows at 0.05": ["model.init_encoder_norm=0.05"],
    "W_E rows at 0.2": ["model.init_encoder_norm=0.2"],
    "W_E rows at 0.3": ["model.init_encoder_norm=0.3"],
    "old + no warm-up": [*OLD, "train.lr_warmup_steps=0"],
    "old + no decay": [*OLD, "train.lr_decay=none"],
    "old + decay over the whole run": [*OLD, "train.lr_decay_start=0.0"],
    "old + no grad clip": [*OLD, "train.grad_clip=null"],
    "old + Adam betas (0.9, 0.99)": [*OLD, "train.betas=[0.9, 0.99]"],
    "old + lr 3e-3": [*OLD, "train.lr=3e-3"],
    "old + lr 1e-2": [*OLD, "train.lr=1e-2"],
    "old + b_D = batch mean": [*OLD, "patch:b_D_mean"],
    "old + pre-encoder bias": [*OLD, "patch:pre_encoder_bias"],
    "old + both (sparsify)": [*OLD, "patch:b_D_mean", "patch:pre_encoder_bias"],
    "old + no biases": [*OLD, "model.bias=false"],
    # on top of the new default
    "new + no warm-up": ["train.lr_warmup_steps=0"],
    "new + no decay": ["train.lr_decay=none"],
    "new + b_D = batch mean": ["patch:b_D_mean"],
    "new + both (sparsify)": ["patch:b_D_mean", "patch:pre_encoder_bias"],
    "new + lr 5e-4": ["train.lr=5e-4"],
    "new + lr 2e-3": ["train.lr=2e-3"],
    "new + decoder lr x1.25": ["patch:decoder_lr=1.25"],
    "new + decoder lr x2": ["patch:decoder_lr=2"],
    "free decoder at 0.1, W_E = W_Dᵀ (SAELens-like)": ["model.unit_norm_decoder=false"],
    "free decoder at 0.05, W_E = W_Dᵀ": ["model.unit_norm_decoder=false", "model.init_decoder_norm=0.05"],
}
"""sdlkit variants for `--ablation`: name → `--sdlkit-set` overrides (one ingredient at a time)."""


# ----- scoring --------------------------------------------------------------------------------------
def recovery(run: Any, W_p: torch.Tensor) -> dict[str, float]:
    W_E, W_D = run.directions()
    enc, _ = best_match(W_E, W_p)
    dec, _ = best_match(W_D.T, W_p)
    return {
        "enc_mgt": gt_recovery(enc, TAU),
        "enc_mip": max_inner_product(enc),
        "dec_mgt": gt_recovery(dec, TAU),
        "dec_mip": max_inner_product(dec),
    }


def final_metrics(run: Any, source: LRBSource) -> dict[str, float]:
    """FVU = Σ‖x − x̂‖² / Σ‖x − x̄‖² on the eval set (as sdlkit.eval.metrics), L0, never-fired fraction."""
    x = source.eval_batch().x_p
    x_hat, fired = run.reconstruct(x)
    x64, err = x.double(), (x.double() - x_hat.double()).pow(2).sum()
    total = (x64 - x64.mean(0)).pow(2).sum()
    return {
        "fvu": (err / total).item(),
        "l0": fired.sum(dim=1).double().mean().item(),
        "never_fired_eval": (~fired.any(dim=0)).double().mean().item(),
    }


def train_one(library: str, frame: str, seed: int, args: argparse.Namespace, overrides: list[str], label: str):
    source = LRBSource(lrb_preset("quick", frame=frame, seed=args.data_seed))
    W_p = source.ground_truth()["W_p"]
    args.frame_name = frame
    torch.manual_seed(seed)
    run = LIBRARIES[library](source, args, seed, overrides)
    since_fired = torch.zeros(args.latents, dtype=torch.int64)
    W_E0 = run.directions()[0].clone()

    def point(step: int) -> dict[str, Any]:
        """Recovery, plus how far the encoder rows have turned from their initial directions (mean
        angle, degrees) and the share of latents that fired in the last `dead_window` steps."""
        turned = torch.nn.functional.cosine_similarity(run.directions()[0], W_E0, dim=1).clamp(-1, 1).acos()
        alive = (since_fired < args.dead_window).double().mean().item()
        extra = {"enc_turned_deg": turned.rad2deg().mean().item(), "alive": alive}
        return {"step": step, "samples": step * args.batch, **recovery(run, W_p), **extra}

    curve, seconds = [point(0)], 0.0
    for step in range(1, args.steps + 1):
        t0 = time.perf_counter()
        fired = run.step()
        seconds += time.perf_counter() - t0
        since_fired = torch.where(fired, 0, since_fired + 1)
        if step % args.every == 0 or step == args.steps:
            curve.append(point(step))
    record = {
        "library": library,
        "variant": label,
        "overrides": overrides,
        "frame": frame,
        "seed": seed,
        "steps": args.steps,
        "samples_seen": args.steps * args.batch,
        "train_seconds": seconds,
        **curve[-1],
        **final_metrics(run, source),
        "dead_window": (since_fired >= args.dead_window).double().mean().item(),
        "curve": curve,
    }
    for key in ("step", "samples", "enc_turned_deg", "alive"):
        record.pop(key)
    print(
        f"{label:>24} {frame:>8} seed {seed}: enc M_GT {record['enc_mgt']:.3f} M_IP {record['enc_mip']:.4f} | "
        f"dec M_GT {record['dec_mgt']:.3f} M_IP {record['dec_mip']:.4f} | fvu {record['fvu']:.4f} | "
        f"dead {record['never_fired_eval']:.3f}/{record['dead_window']:.3f} | {seconds:.1f} s",
        file=sys.stderr,
        flush=True,
    )
    return record


# ----- output ----------------------------------------------------------------------------------------
def summary(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Mean over seeds per (variant, frame)."""
    keys = ["enc_mgt", "enc_mip", "dec_mgt", "dec_mip", "fvu", "l0", "never_fired_eval", "dead_window", "train_seconds"]
    groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for r in records:
        groups.setdefault((r["variant"], r["frame"]), []).append(r)
    rows = []
    for (variant, frame), group in groups.items():
        row = {"variant": variant, "frame": frame, "seeds": [r["seed"] for r in group]}
        for key in keys:
            values = [r[key] for r in group]
            mean = sum(values) / len(values)
            row[key] = mean
            row[key + "_std"] = math.sqrt(sum((v - mean) ** 2 for v in values) / max(1, len(values) - 1))
        rows.append(row)
    return rows


def markdown(rows: list[dict[str, Any]]) -> str:
    lines = [
        "| variant | frame | enc M_GT | enc M_IP | dec M_GT | dec M_IP | FVU | dead (eval) | dead (window) | s |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['variant']} | {r['frame']} | {r['enc_mgt']:.1%} | {r['enc_mip']:.4f} | {r['dec_mgt']:.1%} | "
            f"{r['dec_mip']:.4f} | {r['fvu']:.4f} | {r['never_fired_eval']:.1%} | {r['dead_window']:.1%} | "
            f"{r['train_seconds']:.0f} |"
        )
    return "\n".join(lines)


def plot(records: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    frames = sorted({r["frame"] for r in records})
    panels = [
        ("enc_mgt", "encoder rows", f"M_GT (τ = {TAU})"),
        ("dec_mgt", "decoder columns", f"M_GT (τ = {TAU})"),
        ("enc_turned_deg", "encoder rows: mean angle from their initial direction", "degrees"),
    ]
    fig, axes = plt.subplots(len(panels), len(frames), figsize=(6 * len(frames), 4 * len(panels)), squeeze=False)
    variants = list(dict.fromkeys(r["variant"] for r in records))
    colours = {v: f"C{i % 10}" for i, v in enumerate(variants)}
    for col, frame in enumerate(frames):
        for row, (key, title, ylabel) in enumerate(panels):
            ax = axes[row][col]
            for r in records:
                if r["frame"] != frame:
                    continue
                first = r["seed"] == min(q["seed"] for q in records if q["variant"] == r["variant"])
                ax.plot(
                    [p["samples"] / 1e6 for p in r["curve"]],
                    [p[key] for p in r["curve"]],
                    color=colours[r["variant"]],
                    label=r["variant"] if first else None,
                    alpha=0.85,
                )
            ax.set_title(f"{frame} frame: {title}")
            ax.set_xlabel("samples seen (millions)")
            ax.set_ylabel(ylabel)
            ax.set_ylim(0, 90 if key == "enc_turned_deg" else 1.01)
            ax.grid(alpha=0.3)
            ax.legend(loc="upper left" if key == "enc_turned_deg" else "lower right", fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--frames", default="tight,gaussian")
    parser.add_argument("--libraries", default=",".join(LIBRARIES))
    parser.add_argument("--seeds", default="0")
    parser.add_argument("--data-seed", type=int, default=0)
    parser.add_argument("--steps", type=int, default=800)
    parser.add_argument("--batch", type=int, default=1024)
    parser.add_argument("--latents", type=int, default=512)
    parser.add_argument(
        "--k", type=int, default=None, help="default: 98th percentile of Poisson(true L0), as the bench"
    )
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--every", type=int, default=100, help="score recovery every this many steps")
    parser.add_argument("--dead-window", type=int, default=100, help="steps without firing that make a latent dead")
    parser.add_argument("--sdlkit-set", action="append", default=[], help="run-config override for sdlkit runs")
    parser.add_argument("--ablation", action="store_true", help="train the sdlkit ABLATIONS instead of the libraries")
    parser.add_argument("--only", default=None, help="with --ablation: variant names separated by |")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1: steadiest on a shared machine)")
    parser.add_argument("--out", default="benchmarks/peer-out")
    parser.add_argument("--replot", action="store_true", help="only redraw OUT/recovery.png from OUT/results.json")
    args = parser.parse_args(argv)
    if args.replot:
        plot(json.loads((Path(args.out) / "results.json").read_text())["records"], Path(args.out) / "recovery.png")
        return
    torch.set_num_threads(args.threads)
    if args.k is None:
        config = lrb_preset("quick")
        args.k = max(1, int(poisson.ppf(0.98, config.n_features * (1 - config.S))))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    seeds = [int(s) for s in args.seeds.split(",")]
    if args.ablation:
        names = args.only.split("|") if args.only else list(ABLATIONS)
        jobs = [("sdlkit", name, [*args.sdlkit_set, *ABLATIONS[name]]) for name in names]
    else:
        jobs = [(lib, lib, args.sdlkit_set if lib.startswith("sdlkit") else []) for lib in args.libraries.split(",")]
    records = []
    for frame in args.frames.split(","):
        for library, label, overrides in jobs:
            for seed in seeds:
                records.append(train_one(library, frame, seed, args, overrides, label))
                (out / "results.json").write_text(json.dumps({"args": vars(args), "records": records}, indent=1))
    rows = summary(records)
    (out / "summary.json").write_text(json.dumps(rows, indent=1))
    table = markdown(rows)
    (out / "table.md").write_text(table + "\n")
    plot(records, out / "recovery.png")
    print(table)


if __name__ == "__main__":
    main()
