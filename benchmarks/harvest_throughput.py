"""Harvest throughput on the tiny test models: samples/s and rows/s, model load and probe included.

    .venv/bin/python benchmarks/harvest_throughput.py [--threads N] [--samples 2048] [--device cpu]

Prints one JSON object: {"threads", "device", "results": [{"model", "samples", "rows", "seconds",
"samples_per_s", "rows_per_s"}, ...]}. The models are the tests' (tests/hf_tiny.py: random weights,
built from configs), so this measures sdlkit's pipeline (tokenising or decoding, hooks, store
writes), not a real model's forward pass.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from hf_tiny import WORDS, tiny_clip, tiny_lm
from sdlkit.harvest import harvest


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    parser.add_argument("--samples", type=int, default=2048, help="texts and images per run (default 2048)")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    root = Path(tempfile.mkdtemp(prefix="sdlkit-harvest-bench-"))
    gen = torch.Generator().manual_seed(0)
    lengths = torch.randint(40, 140, (args.samples,), generator=gen)
    texts = [" ".join(WORDS[int(i)] for i in torch.randint(0, len(WORDS), (int(n),), generator=gen)) for n in lengths]
    (root / "texts.txt").write_text("\n".join(texts) + "\n")
    for label in ("a", "b"):
        (root / "images" / label).mkdir(parents=True)
        for i in range(args.samples // 2):
            pixels = torch.randint(0, 256, (64, 64, 3), generator=gen, dtype=torch.uint8).numpy()
            Image.fromarray(pixels).save(root / "images" / label / f"{i}.png")
    runs = [
        (
            "tiny gpt2 (3 layers x 32), context 64, 3 modules",
            tiny_lm(root / "gpt2"),
            "transformer.h.1,transformer.h.2.mlp:input,transformer.h.2.mlp",
            root / "texts.txt",
            {"context_size": 64},
        ),
        (
            "tiny clip vision (2 layers x 32, 32 px) from 64x64 PNGs, pooled + projected",
            tiny_clip(root / "clip"),
            "clip:pooled,clip:projected",
            root / "images",
            {},
        ),
    ]
    results = []
    for name, model, modules, data, extra in runs:
        start = time.perf_counter()
        manifest = harvest(
            str(model), modules, str(data), str(root / "store"), batch_size=32, device=args.device,
            progress=False, overwrite=True, **extra,
        )  # fmt: skip
        seconds = time.perf_counter() - start
        samples = manifest.progress.next_sample
        results.append(
            {
                "model": name,
                "samples": samples,
                "rows": manifest.rows,
                "seconds": round(seconds, 2),
                "samples_per_s": round(samples / seconds),
                "rows_per_s": round(manifest.rows / seconds),
            }
        )
    print(json.dumps({"threads": torch.get_num_threads(), "device": args.device, "results": results}, indent=2))


if __name__ == "__main__":
    main()
