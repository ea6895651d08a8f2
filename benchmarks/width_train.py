"""Training a wide TopK dictionary on MiniLM token activations: time per step and peak memory at each width.

    PYTHONPATH=src python benchmarks/width_train.py --store /tmp/minilm/store --widths 16384,65536

Each width trains as its own `sdlkit train` process under /usr/bin/time -v (peak RSS); the step rate is the
median of metrics.jsonl's `samples_per_s` after the first log interval (which holds start-up). The store is
the token store benchmarks/live_vs_store.py (or `make real`) harvests. Results go to OUT/results.json.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))

from live_vs_store import sdlkit_cmd, timed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--store", required=True, help="a token store of MiniLM's encoder.layer.2 (384 wide)")
    parser.add_argument("--work", default="/tmp/width-train", help="run folders (not committed)")
    parser.add_argument("--out", default="benchmarks/results/width_train")
    parser.add_argument("--widths", default="16384,65536")
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--batch", type=int, default=4096)
    parser.add_argument("--k", type=int, default=32)
    args = parser.parse_args()
    work, out = Path(args.work), Path(args.out)
    work.mkdir(parents=True, exist_ok=True)
    out.mkdir(parents=True, exist_ok=True)
    results = []
    for width in [int(w) for w in args.widths.split(",")]:
        config = work / f"topk-{width}.yaml"
        values = {
            "data": {"kind": "store", "store": str(Path(args.store).resolve()), "normalize": True},
            "model": {"n_latents": width, "method": {"name": "topk", "k": args.k, "auxk": {}}},
            "train": {"steps": args.steps, "batch_size": args.batch, "lr": 2e-4 * (16384 / width) ** 0.5,
                      "log_every": 10, "progress": False},
        }  # fmt: skip
        config.write_text(yaml.safe_dump(values))
        run_dir = work / f"topk-{width}"
        run = timed(sdlkit_cmd("train", "--config", str(config), "--out", str(run_dir), "--overwrite", "--json"),
                    out / f"train-{width}.log")  # fmt: skip
        final = json.loads(run.pop("stdout"))
        log = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
        rate = statistics.median(r["samples_per_s"] for r in log[1:])
        weights = 2 * width * 384 + width + 384
        results.append(
            {
                "n_latents": width,
                "samples_per_s": round(rate),
                "seconds_per_step": round(args.batch / rate, 3),
                "peak_rss_mb": run["peak_rss_mb"],
                "wall_seconds": run["seconds"],
                "weights_mb": round(weights * 4 / 2**20),
                "peak_rss_bytes_per_latent": round(run["peak_rss_mb"] * 2**20 / width),
                "microseconds_per_step_per_latent": round(args.batch / rate / width * 1e6, 2),
                **{k: final[k] for k in ("fvu", "l0", "dead_fraction", "steps")},
            }
        )
        print(results[-1], flush=True)
    settings = {**vars(args), "method": "topk + auxk", "normalize": True}
    (out / "results.json").write_text(json.dumps({"settings": settings, "runs": results}, indent=2) + "\n")


if __name__ == "__main__":
    main()
