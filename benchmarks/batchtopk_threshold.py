"""BatchTopK: does the inference threshold θ reproduce the batch selection it was learned from?

Training keeps the k·B largest pre-activations of each batch; inference keeps every pre-activation above θ,
the running mean of the smallest kept value. For every BatchTopK run of a bench folder this measures, on
the run's 4,096 held-out rows and on `--rows` fresh rows from the same distribution
(sdlkit.eval.selection.selection_agreement, rows taken train.batch_size at a time for the batch form):
the L0 of each form, how many latents fire under each, the latents that fire under the batch selection but
never under θ (`fired_train_only`), θ beside θ* (the threshold that would give L0 = k on those rows) and
beside the mean over batches of B fresh rows of the smallest value the batch selection keeps (what θ
averages, under the final weights), and the run's two dead-latent figures from results.json
(dead_fraction: silent through the training window; never_fired_fraction: silent on the held-out rows at
inference).

    PYTHONPATH=src python -m sdlkit bench --preset quick --methods batchtopk --no-references --out /tmp/btk
    PYTHONPATH=src python benchmarks/batchtopk_threshold.py /tmp/btk
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import torch

import sdlkit
from sdlkit.config import run_config
from sdlkit.data import Batch, build_source
from sdlkit.eval.selection import selection_agreement
from sdlkit.io import read_json
from sdlkit.report import format_table


@torch.no_grad()
def theta_for_k(model: sdlkit.SparseDictionary, x: torch.Tensor, k: int) -> float:
    """The threshold whose inference form gives exactly L0 = k on rows x: the (k·N)-th largest pre-activation."""
    z = (x @ model.W_E.T + model.b_E).flatten()
    return z.topk(k * len(x)).values.min().item()


@torch.no_grad()
def mean_batch_minimum(model: sdlkit.SparseDictionary, x: torch.Tensor, k: int, batch_size: int) -> float:
    """The mean over full batches of `batch_size` rows of x of the smallest of the k·B largest pre-activations."""
    z = (x[: len(x) - len(x) % batch_size] @ model.W_E.T + model.b_E).view(-1, batch_size * model.n_latents)
    return z.topk(k * batch_size, dim=1).values.min(dim=1).values.mean().item()


def measure(folder: Path, record: dict[str, Any], rows: int) -> dict[str, Any]:
    config = run_config(record["config"])
    source = build_source(config.data)
    model = sdlkit.load(folder / record["run_dir"])
    k, batch_size = config.model.method.k, config.train.batch_size
    codes = source.sample_codes(rows, "batchtopk-threshold")
    x = codes @ source.W_p.T.to(codes.dtype)
    fresh = Batch(x, x)
    held = selection_agreement(model, source.eval_batch(), batch_size)
    wide = selection_agreement(model, fresh, batch_size)
    return {
        "frame": record["frame"],
        "FA": "yes" if record["anchored"] else "no",
        "k": k,
        "θ": round(model.activation.threshold.item(), 4),
        "θ* (L0 = k)": round(theta_for_k(model, x, k), 4),
        "mean batch min": round(mean_batch_minimum(model, x, k, batch_size), 4),
        "L0 θ (4,096)": round(held["l0_inference"], 3),
        f"L0 θ ({rows:,})": round(wide["l0_inference"], 3),
        "fire: batch / θ (4,096)": f"{held['fired_train']} / {held['fired_inference']}",
        f"fire: batch / θ ({rows:,})": f"{wide['fired_train']} / {wide['fired_inference']}",
        f"train-only ({rows:,})": len(wide["fired_train_only"]),
        "dead_fraction": f"{record['dead_fraction']:.1%}",
        "never_fired": f"{record['never_fired_fraction']:.1%}",
        "latents": config.model.n_latents,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("bench", type=Path, help="a `sdlkit bench` output folder with BatchTopK runs")
    parser.add_argument("--rows", type=int, default=65536, help="fresh rows for the wider check")
    args = parser.parse_args()
    records = [r for r in read_json(args.bench / "results.json", kind=list) if r.get("method") == "batchtopk"]
    table = [measure(args.bench, record, args.rows) for record in records]
    print(format_table(table, list(table[0])))


if __name__ == "__main__":
    main()
