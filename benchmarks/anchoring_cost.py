"""Why did soft anchoring lower the other features' recovery at the paper's data scale? (Gradient clipping.)

At the paper's data scale (1,000 features in 768 dims, tight frame, TopK k = 17, 2,048 latents, 600 steps of
1,024; benchmarks/README "Paper data scale") anchoring 100 features (λ_anchor = 0.1) lowered the encoder M_GT of
the other 900 from 92.8% to 62.8%, where the paper reports a gain. This trains the TopK row of that bench with
and without anchors under variants that each test one hypothesis, and measures what the anchored latents do:

    none                  no anchors (the bench's unanchored run)
    fa-clipped            the bench's anchored run as it was: gradient clipping (train.grad_clip = 1) counts
                          the anchors' pull in the norm it clips (train.anchors.clip_pull = true)
    fa-noclip             no gradient clipping at all: is the clip the cause?
    fa                    sdlkit's default since this study: the pull is exempt from clipping
    fa-lambda1-clipped, fa-lambda1-noclip, fa-lambda1
                          the same three at λ_anchor = 1.0: a stronger pull, more clipping
    fa-norm-clipped       the anchors' encoder targets Ã scaled to the free encoder rows' start norm (0.1,
                          TopK's init): a unit-norm Ã makes the anchored rows' pre-activations ~10× the free
                          rows' at the start, so under TopK they could take the k slots from the free latents
    fa-init-clipped       the anchored rows and columns start at their anchors (the pull starts at 0)
    none-noclip           no anchors, no clipping: is the clip ever active without anchors?

For each run: encoder and decoder M_GT / M_IP of the features that are not anchored (the bench's scoring),
FVU, L0, and on the held-out set the anchored latents' firing rate against their features' (1 − S), the
share of the active slots they take, their precision and recall for their own feature, and the mean encoder
row norm of anchored and free latents. In the unanchored runs the same figures are taken for the latents
that match the anchor features best (decoder cosine): the same features, learned freely.

Resumable (a finished run is a record in OUT/records.json; a cut run resumes from its checkpoint):

    PYTHONPATH=src python benchmarks/anchoring_cost.py --out benchmarks/results/anchoring_cost
    PYTHONPATH=src python benchmarks/anchoring_cost.py --scale quick --out /tmp/ac   # the quick bench, seconds
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

import torch

from sdlkit.config import apply_override, run_config
from sdlkit.data import build_source
from sdlkit.eval.recovery import best_match
from sdlkit.io import read_json, write_json_atomically, write_text_atomically
from sdlkit.paper.bench import BenchSpec, plan_runs
from sdlkit.paper.bench.run import excluded_features
from sdlkit.paper.bench.scoring import score
from sdlkit.report import format_table
from sdlkit.train import Trainer
from sdlkit.train.anchoring import AnchorPenalty, apply_hard_anchors
from sdlkit.train.checkpoint import list_checkpoints

SCORES = ("gt_recovery", "max_inner_product", "gt_recovery_decoder", "max_inner_product_decoder")
PAPER_SCALE = ["model.n_latents=2048", "train.batch_size=1024", "train.lr=1e-3"]
CLIPPED = ["train.anchors.clip_pull=true"]
NO_CLIP = ["train.grad_clip=null"]
VARIANTS: dict[str, dict[str, Any]] = {
    "none": {"anchored": False},
    "fa-clipped": {"anchored": True, "set": CLIPPED},
    "fa-noclip": {"anchored": True, "set": NO_CLIP},
    "fa": {"anchored": True},
    "fa-lambda1-clipped": {"anchored": True, "weight": 1.0, "set": CLIPPED},
    "fa-lambda1-noclip": {"anchored": True, "weight": 1.0, "set": NO_CLIP},
    "fa-lambda1": {"anchored": True, "weight": 1.0},
    "fa-norm-clipped": {"anchored": True, "set": CLIPPED, "encoder_target_norm": "init"},
    "fa-init-clipped": {"anchored": True, "set": CLIPPED, "start_at_anchors": True},
    "none-noclip": {"anchored": False, "set": NO_CLIP},
}


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--scale", choices=["paper", "quick"], default="paper", help="paper data scale or quick bench")
    parser.add_argument("--steps", type=int, default=None, help="steps per run (default: 600 paper, 500 quick)")
    parser.add_argument("--variants", default=",".join(VARIANTS), help="comma-separated, from: " + ", ".join(VARIANTS))
    parser.add_argument("--device", default="cpu")
    return parser.parse_args(argv)


def plan(args: argparse.Namespace, variant: dict[str, Any]):
    """The bench's TopK run (tight frame) for `variant`, with its overrides applied."""
    spec = BenchSpec(
        preset="paper" if args.scale == "paper" else "quick",
        rows=["topk"],
        frames=["tight"],
        steps=args.steps or (600 if args.scale == "paper" else None),
        anchor_weight=variant.get("weight", 0.1),
        overrides=PAPER_SCALE if args.scale == "paper" else [],
        references=False,
        device=args.device,
    )
    chosen = next(p for p in plan_runs(spec) if p.anchored == variant["anchored"])
    for assignment in variant.get("set", []):
        apply_override(chosen.values, assignment)
    return chosen


def anchored_behaviour(model, source, latents: torch.Tensor, features: list[int]) -> dict[str, float]:
    """On the held-out set: how the latents `latents` [A] (one per feature of `features`) fire, against their
    features; and the encoder row norms of those latents and of all the others."""
    batch = source.eval_batch()
    with torch.no_grad():
        active = model.encode(batch.x_p) > 0  # [N, L]
    on = source.eval_codes()[:, features] > 0  # [N, A]: the features present
    fires = active[:, latents]  # [N, A]
    both = (fires & on).sum(0).double()
    norms = model.W_E.detach().norm(dim=1)
    others = torch.ones(norms.shape[0], dtype=torch.bool)
    others[latents] = False
    return {
        "firing_rate": float(fires.double().mean()),
        "feature_rate": float(on.double().mean()),
        "slot_share": float(fires.sum() / active.sum().clamp(min=1)),
        "precision": float((both / fires.sum(0).clamp(min=1)).mean()),
        "recall": float((both / on.sum(0).clamp(min=1)).mean()),
        "encoder_norm": float(norms[latents].mean()),
        "encoder_norm_others": float(norms[others].mean()),
    }


def run_one(args: argparse.Namespace, name: str, variant: dict[str, Any]) -> dict[str, Any]:
    chosen = plan(args, variant)
    config = run_config(chosen.values, ["train.progress=true"])
    source = build_source(config.data, config.device)
    run_dir = args.out / "runs" / name
    trainer = Trainer(config, source, run_dir)
    if variant.get("encoder_target_norm") == "init" and trainer.anchors is not None:
        # soft anchors: the encoder targets at the free rows' initial norm; the decoder targets stay unit columns
        scale = float(trainer.model.W_E.detach().norm(dim=1).mean())  # the initialisation's row norm
        penalty = next(term for term in trainer.objective.modules() if isinstance(term, AnchorPenalty))
        penalty.A.mul_(scale)
    if variant.get("start_at_anchors") and trainer.anchors is not None:
        apply_hard_anchors(trainer.model, trainer.anchors)  # once, at the start: the rows stay free
    began = time.perf_counter()
    result = trainer.fit(resume=bool(list_checkpoints(run_dir)))
    excluded = excluded_features(source, chosen)
    scores = score(result.model, source, excluded, 0.95, curves=False)
    if trainer.anchors is not None:
        latents = torch.arange(len(excluded))
    else:  # the free latents that learned the anchor features: best decoder cosine per feature
        latents = best_match(result.model.W_D.detach().T, source.ground_truth()["W_r"][:, excluded])[1]
    return {
        "variant": name,
        "anchored": variant["anchored"],
        "overrides": variant.get("set", []),
        "anchor_weight": variant.get("weight", 0.1) if variant["anchored"] else 0.0,
        **{k: scores[k] for k in SCORES},
        **{k: result.metrics[k] for k in ("fvu", "l0", "dead_fraction")},
        **anchored_behaviour(result.model, source, latents, excluded),
        "seconds": time.perf_counter() - began,
    }


COLUMNS = {
    "variant": ("variant", str),
    "gt_recovery": ("enc M_GT", lambda v: f"{100 * v:.1f}%"),
    "max_inner_product": ("enc M_IP", lambda v: f"{v:.3f}"),
    "gt_recovery_decoder": ("dec M_GT", lambda v: f"{100 * v:.1f}%"),
    "fvu": ("FVU", lambda v: f"{v:.3f}"),
    "firing_rate": ("A fire", lambda v: f"{100 * v:.2f}%"),
    "feature_rate": ("feature on", lambda v: f"{100 * v:.2f}%"),
    "slot_share": ("A slots", lambda v: f"{100 * v:.1f}%"),
    "precision": ("A prec", lambda v: f"{v:.2f}"),
    "recall": ("A rec", lambda v: f"{v:.2f}"),
    "encoder_norm": ("‖W_E‖ A", lambda v: f"{v:.3f}"),
    "encoder_norm_others": ("‖W_E‖ rest", lambda v: f"{v:.3f}"),
}


def summary(records: list[dict[str, Any]]) -> str:
    """The records as a Markdown table (A: the anchored latents, or in unanchored runs the latents that learned
    the anchor features)."""
    rows = [{title: show(r[key]) for key, (title, show) in COLUMNS.items()} for r in records]
    return format_table(rows, [title for title, _ in COLUMNS.values()])


def main(argv: list[str] | None = None) -> None:
    args = parse(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / "records.json"
    records = read_json(path, ValueError, kind=list) if path.is_file() else []
    for name in args.variants.split(","):
        if any(r["variant"] == name for r in records):
            continue
        print(f"--- {name}", flush=True)
        records.append(run_one(args, name, VARIANTS[name]))
        write_json_atomically(path, records)
        print(summary(records), flush=True)
    write_text_atomically(args.out / "summary.md", summary(records) + "\n")


if __name__ == "__main__":
    main()
