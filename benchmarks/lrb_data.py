"""Cost of one Linear Representation Bench batch at the paper's scale (n = 1,000, n_p = 768, batch 4,096).

    PYTHONPATH=src python benchmarks/lrb_data.py [--device cuda] [--batches 20]

Prints one JSON object: for the paper preset as the paper trains it (a fixed set of N = 100,000
samples) and as an infinite stream (n_samples = null), the median seconds of `LRBSource.batch(i, 4096)`
over `--batches` batches after one warm-up batch. Compare with a training step's time from
benchmarks/throughput.py (768, 16384, 4096) to get the data's share of a step.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

from sdlkit.data.lrb import LRBSource, lrb_preset


def seconds_per_batch(source: LRBSource, batch: int, batches: int, device: str) -> float:
    source.batch(0, batch)
    times = []
    for index in range(1, batches + 1):
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        start = time.perf_counter()
        source.batch(index, batch)
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch", type=int, default=4096)
    parser.add_argument("--batches", type=int, default=20)
    args = parser.parse_args()
    result = {"batch": args.batch, "device": args.device}
    for name, overrides in (("fixed_set", {}), ("stream", {"n_samples": None})):
        source = LRBSource(lrb_preset("paper", **overrides), device=args.device)
        result[f"{name}_seconds"] = seconds_per_batch(source, args.batch, args.batches, args.device)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
