"""Training on a .npy larger than its shuffle window: what building the config and the source costs, and the
anonymous memory (RssAnon: not the file's mapped pages) before and after 50 steps.

    OMP_NUM_THREADS=1 PYTHONPATH=src python benchmarks/array_memory.py DIR [--shuffle-buffer 65536]

Writes DIR/big.npy (1,000,000 x 128 float32, 488 MiB) once, then trains TopK (1,024 latents, k = 16, batch
4,096, normalize: true) on it and prints one line.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

from sdlkit.config import run_config
from sdlkit.data import build_source
from sdlkit.train import Trainer

ROWS, WIDTH = 1_000_000, 128


def anon_mib() -> float:
    """This process's anonymous resident memory, MiB (Linux)."""
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) / 1024 for line in status if line.startswith("RssAnon"))


def write_array(path: Path) -> None:
    array = np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=(ROWS, WIDTH))
    for start in range(0, ROWS, 100_000):
        array[start : start + 100_000] = np.random.default_rng(start).standard_normal((100_000, WIDTH), np.float32)
    array.flush()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder", type=Path)
    parser.add_argument("--shuffle-buffer", type=int, default=65536)
    args = parser.parse_args()
    path = args.folder / "big.npy"
    if not path.exists():
        args.folder.mkdir(parents=True, exist_ok=True)
        write_array(path)
    data = {"kind": "array", "path": str(path), "shuffle_buffer": args.shuffle_buffer, "normalize": True}
    values = {
        "data": data,
        "model": {"n_latents": 1024, "method": {"name": "topk", "k": 16}},
        "train": {"steps": 50, "batch_size": 4096, "progress": False},
    }
    before = anon_mib()
    start = time.perf_counter()
    config = run_config(values)
    built = time.perf_counter()
    source = build_source(config.data)
    sourced, with_source = time.perf_counter(), anon_mib()
    Trainer(config, source).fit()
    print(
        f"file {path.stat().st_size / 2**20:.0f} MiB, shuffle_buffer {args.shuffle_buffer}: config (fingerprint) "
        f"{built - start:.3f} s, source (scale estimate, held-out rows) {sourced - built:.3f} s, 50 steps "
        f"{time.perf_counter() - sourced:.1f} s; RssAnon {before:.0f} -> {with_source:.0f} (source) -> "
        f"{anon_mib():.0f} MiB (trained)"
    )


if __name__ == "__main__":
    main()
