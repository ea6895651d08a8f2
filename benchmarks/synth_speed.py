"""Data generation speed at SynthSAEBench-16k settings (issue 14 item 5): sdlkit's sampler beside SAELens's
(`SyntheticModel.sample`, dense and with `use_sparse_tensors`), on the same machine and thread count, and the
data's share of a training step (BatchTopK, width 4,096, batch 1,024, as published).

Both models are built without the orthogonalisation (it changes the dictionary's values, not the cost of
sampling) so the comparison starts in seconds. Timings are medians over `--repeats` batches after one warm-up.

    PYTHONPATH=src OMP_NUM_THREADS=1 /path/to/venv-with-sae-lens/bin/python benchmarks/synth_speed.py
writes benchmarks/results/synth_speed.json. Without sae_lens the SAELens columns are left out.
"""

from __future__ import annotations

import argparse
import json
import logging
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from sdlkit.config import run_config
from sdlkit.data.source import Batch, DataSource
from sdlkit.data.synth import SynthSource, synth_preset
from sdlkit.train import Trainer

OUT = Path(__file__).parent / "results" / "synth_speed.json"


def median_seconds(work: Callable[[int], Any], repeats: int) -> float:
    """Median wall time of work(i) over `repeats` calls, after one warm-up call."""
    work(-1)
    times = []
    for i in range(repeats):
        started = time.perf_counter()
        work(i)
        times.append(time.perf_counter() - started)
    return statistics.median(times)


class FixedBatch(DataSource):
    """One batch, served for every index: a training step with (almost) no data cost."""

    def __init__(self, batch: Batch):
        self.fixed = batch
        self.n_in = self.n_out = batch.x_p.shape[1]
        self.in_blocks, self.out_blocks = [self.n_in], [self.n_out]

    def batch(self, index: int, batch_size: int) -> Batch:
        return self.fixed

    def eval_batch(self) -> Batch:
        return self.fixed


def step_seconds(source: SynthSource, batch_size: int, width: int, k: int, steps: int) -> float:
    """Seconds per BatchTopK training step on a fixed batch (data excluded)."""
    values = {
        "data": {"kind": "synth", "preset": "synthsaebench-16k", "orthogonalization": None},
        "model": {"n_latents": width, "method": {"name": "batchtopk", "k": k, "auxk": {}}},
        "train": {"steps": steps, "batch_size": batch_size, "progress": False, "log_every": steps},
    }
    result = Trainer(run_config(values), FixedBatch(source.batch(0, batch_size))).fit()
    return result.train_seconds / steps


def saelens_seconds(batch_size: int, repeats: int) -> dict[str, float]:
    """SAELens's SyntheticModel.sample at SynthSAEBench-16k settings: dense, then with sparse tensors."""
    from sae_lens.synthetic import SyntheticModel
    from synth_crosscheck import saelens_config  # benchmarks/: needs sae_lens

    model = SyntheticModel(saelens_config(synth_preset("synthsaebench-16k", orthogonalization=None), seed=42))
    dense = median_seconds(lambda i: model.sample(batch_size), repeats)
    model.use_sparse_tensors = True
    sparse = median_seconds(lambda i: model.sample(batch_size), repeats)
    return {"dense": dense, "sparse_tensors": sparse}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch-size", type=int, default=1024)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--steps", type=int, default=5, help="training steps timed (default 5)")
    parser.add_argument("--no-saelens", action="store_true", help="time sdlkit only")
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args()
    logging.disable(logging.WARNING)
    B = args.batch_size
    source = SynthSource(synth_preset("synthsaebench-16k", orthogonalization=None))
    ours = median_seconds(lambda i: source.batch(max(i, 0), B), args.repeats)
    step = step_seconds(source, B, 4096, 25, args.steps)
    result: dict[str, Any] = {
        "machine": platform.processor() or platform.machine(),
        "threads": torch.get_num_threads(),
        "batch_size": B,
        "true_l0": source.true_l0,
        "sdlkit_seconds_per_batch": ours,
        "sdlkit_samples_per_second": B / ours,
        "train_step_seconds_without_data": step,
        "sdlkit_share_of_step": ours / (ours + step),
    }
    if not args.no_saelens:
        theirs = saelens_seconds(B, args.repeats)
        best = min(theirs.values())
        result |= {
            "saelens_seconds_per_batch": theirs,
            "saelens_samples_per_second": {k: B / v for k, v in theirs.items()},
            "saelens_share_of_step": best / (best + step),
            "speedup_over_saelens_best": best / ours,
        }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1))
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
