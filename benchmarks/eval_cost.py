"""What the training log's held-out evaluation costs: `Trainer.held_out()` (the 4,096 held-out rows, one
gradient-free pass) against one training step, interleaved in one process, medians of `--reps`.

    PYTHONPATH=src python benchmarks/eval_cost.py --reps 20
"""

from __future__ import annotations

import argparse
import time

import torch

from sdlkit.config import run_config
from sdlkit.data import build_source
from sdlkit.train import Trainer

SIZES = [("quick", 512, 1024, 6), ("quick", 512, 4096, 6), ("paper", 16384, 4096, 32)]
"""(LRB preset, n_latents, batch, TopK's k): the quick bench's size at two batches, and a 768-wide 16k dictionary."""


def median(values: list[float]) -> float:
    return sorted(values)[len(values) // 2]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=20)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    for preset, n_latents, batch, k in SIZES:
        config = run_config(
            {
                "data": {"preset": preset},
                "model": {"n_latents": n_latents, "method": {"name": "topk", "k": k}},
                "train": {"steps": 10**6, "batch_size": batch, "progress": False},
            }
        )
        trainer = Trainer(config, build_source(config.data))
        for _ in range(3):
            trainer.advance()
            trainer.held_out()
        steps, evals = [], []
        for _ in range(args.reps):
            start = time.perf_counter()
            trainer.advance()
            middle = time.perf_counter()
            trainer.held_out()
            steps.append(middle - start)
            evals.append(time.perf_counter() - middle)
        step, evaluation = median(steps), median(evals)
        print(
            f"| {config.model.n_in} | {n_latents} | {batch} | {step * 1e3:.1f} | {evaluation * 1e3:.1f} | "
            f"{evaluation / step:.2f} | {evaluation / (50 * step):.1%} |"
        )


if __name__ == "__main__":
    main()
