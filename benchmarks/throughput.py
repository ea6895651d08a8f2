"""Training throughput of the sparse TopK kernel against the dense reference, near the GEMM limit.

    PYTHONPATH=src python benchmarks/throughput.py                 # the default grid, CPU
    PYTHONPATH=src python benchmarks/throughput.py --small         # a grid that runs in a minute or two
    PYTHONPATH=src python benchmarks/throughput.py --device cuda

Prints ONE JSON object on standard output (progress goes to standard error):

    {"peak_flops": F, "results": [{"n_in", "n_latents", "batch", "method", "k", "fast_samples_per_s",
     "dense_samples_per_s", "roofline_ratio", "fast_peak_mem_mb", "dense_peak_mem_mb"}, ...],
     "time_to_recovery_s": T}

- peak_flops: the best of several timed float32 matmuls (square, 4096 on CPU, 8192 on CUDA) in this run.
- samples/s: full training steps of `Trainer.fit` (forward, loss, backward, gradient projection and
  clipping, Adam, decoder renormalisation, its logging) on Gaussian batches made beforehand, so the
  data costs nothing. Steps run in blocks of about `--block-seconds` (from a FLOP estimate, at least 2
  steps); the first block is warm-up and dropped, the rate is the median over the next `--blocks`
  blocks (the median resists other processes on a shared machine). fast = `model.kernel: auto`
  (sparse for the TopK family), dense = `model.kernel: dense`. ReLU has no sparse kernel: its one
  measurement is reported as both. A checkout without the `kernel` field (the code before the fast
  path) is measured once, as both.
- roofline_ratio = fast samples/s ÷ (peak_flops ÷ (2·n_in·n_latents)): the share of the rate that one
  encoder GEMM at peak speed would allow, the least any method must compute.
- peak memory: each (configuration, kernel) runs in a fresh subprocess; on CPU the peak resident set
  size during training (the kernel's high-water mark, reset just before training through
  /proc/self/clear_refs) minus the resident size just before it, on CUDA torch's peak allocated bytes
  minus those allocated before it. Both include gradients and Adam's moments, which the two kernels
  share; the model, optimizer and data exist before the baseline is taken.
- time_to_recovery_s: training seconds (Trainer.train_seconds, evaluation excluded) until the decoder
  columns recover 90% of the features (gt_recovery_decoder ≥ 0.9: M_GT of W_D's columns against
  W_r at τ = 0.95) in the quick bench's TopK run (`sdlkit bench --preset quick --methods topk`),
  checked every `--recovery-every` steps; null if it is not reached. Encoder rows stay near
  M_IP ≈ 0.8 at this scale (see README), so their M_GT never reaches 0.9 in that run.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

DEFAULT_GRID = [
    (768, 16384, 4096, "topk", 32),
    (768, 16384, 4096, "batchtopk", 32),
    (768, 16384, 4096, "relu", None),
    (64, 512, 4096, "topk", 5),
]
SMALL_GRID = [
    (256, 4096, 1024, "topk", 32),
    (256, 4096, 1024, "batchtopk", 32),
    (256, 4096, 1024, "relu", None),
    (64, 512, 4096, "topk", 5),
]


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


# ----- peak FLOP/s --------------------------------------------------------------------------------------
def peak_flops(device: str, repeats: int = 5) -> float:
    """The best FLOP/s of a square float32 matmul on `device`."""
    n = 8192 if device.startswith("cuda") else 4096
    a, b = torch.randn(n, n, device=device), torch.randn(n, n, device=device)
    best = float("inf")
    for _ in range(repeats + 1):
        sync(device)
        start = time.perf_counter()
        a @ b
        sync(device)
        best = min(best, time.perf_counter() - start)
    return 2 * n**3 / best


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


# ----- one (configuration, kernel) in its own process ---------------------------------------------------
class GaussianSource:
    """A DataSource of a few Gaussian batches made in advance (x_r = x_p), cycled."""

    def __init__(self, n_in: int, batch: int, device: str, n_batches: int = 2):
        g = torch.Generator(device=device).manual_seed(0)
        self.n_in = self.n_out = n_in
        self.in_blocks = self.out_blocks = [n_in]
        self._batches = [torch.randn(batch, n_in, generator=g, device=device) for _ in range(n_batches)]
        self._eval = torch.randn(256, n_in, generator=g, device=device)

    def batch(self, index: int, batch_size: int):
        from sdlkit.data.source import Batch

        x = self._batches[index % len(self._batches)]
        return Batch(x, x)

    def eval_batch(self):
        from sdlkit.data.source import Batch

        return Batch(self._eval, self._eval)


def has_kernel_field() -> bool:
    from sdlkit.core.model import ModelConfig

    return "kernel" in ModelConfig.model_fields


def resident_mb(field: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"{field} not in /proc/self/status")


def measure(spec: dict[str, Any]) -> dict[str, float]:
    """Train `spec` for warmup + steps steps; samples/s and peak memory (MB) of the steady state."""
    from sdlkit.config import run_config
    from sdlkit.train.trainer import Trainer

    device, n_in, n_latents, batch = spec["device"], spec["n_in"], spec["n_latents"], spec["batch"]
    method = {"name": spec["method"]} if spec["k"] is None else {"name": spec["method"], "k": spec["k"]}
    model: dict[str, Any] = {"n_latents": n_latents, "method": method}
    if has_kernel_field():
        model["kernel"] = spec["kernel"]
    block = spec["block"]
    train = {"steps": block * (1 + spec["blocks"]), "batch_size": batch, "lr": 1e-4, "log_every": block}
    config = run_config(
        {
            "data": {"preset": "quick", "n_p": n_in, "n_features": n_in},  # shapes only: the data is Gaussian
            "model": model,
            "train": {**train, "progress": False},
            "device": device,
        }
    )
    trainer = Trainer(config, GaussianSource(n_in, batch, device))
    if device.startswith("cuda"):
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated() / 2**20
    else:
        Path("/proc/self/clear_refs").write_text("5")  # reset the peak RSS (VmHWM) to the current RSS
        base = resident_mb("VmRSS")
    history = trainer.fit().history
    peak = torch.cuda.max_memory_allocated() / 2**20 if device.startswith("cuda") else resident_mb("VmHWM")
    rates = [record["samples_per_s"] for record in history[1:]]  # history[0] is the warm-up block
    return {"samples_per_s": statistics.median(rates), "peak_mem_mb": peak - base}


def run_worker(spec: dict[str, Any]) -> dict[str, float]:
    """`measure(spec)` in a fresh Python process, so memory peaks and caches do not carry over."""
    proc = subprocess.run(
        [sys.executable, __file__, "--worker", json.dumps(spec)], capture_output=True, text=True, env=os.environ
    )
    if proc.returncode != 0:
        raise RuntimeError(f"worker for {spec} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def block_steps(seconds: float, step_estimate: float) -> int:
    """Steps in a timing block of about `seconds`, for steps of about `step_estimate` seconds."""
    return max(2, min(500, round(seconds / step_estimate)))


# ----- time to recovery ---------------------------------------------------------------------------------
def time_to_recovery(device: str, every: int, kernel: str, threshold: float = 0.9) -> float | None:
    """Training seconds until gt_recovery_decoder ≥ threshold in the quick bench's TopK run."""
    import sdlkit
    from sdlkit.config import run_config
    from sdlkit.data import build_source
    from sdlkit.eval.recovery import dictionary_recovery
    from sdlkit.paper.bench import BenchSpec, plan_runs
    from sdlkit.train.checkpoint import STATE_JSON, list_checkpoints
    from sdlkit.train.trainer import Trainer

    spec = BenchSpec(preset="quick", rows=["topk"], frames=["gaussian"], device=device)
    values = plan_runs(spec)[0].values  # the unanchored TopK run
    values["train"].update(checkpoint_every=every, keep_checkpoints=10**6, progress=False)
    if has_kernel_field():
        values["model"]["kernel"] = kernel
    config = run_config(values)
    source = build_source(config.data, device=device)
    truth = source.ground_truth()
    with tempfile.TemporaryDirectory() as tmp:
        Trainer(config, source, Path(tmp) / "run").fit()
        for folder in list_checkpoints(Path(tmp) / "run"):
            record = dictionary_recovery(sdlkit.load(folder), truth["W_p"], truth["W_r"])
            if record["gt_recovery_decoder"] >= threshold:
                skeleton = json.loads((folder / STATE_JSON).read_text())
                return float(dict(skeleton["__dict__"])["train_seconds"])
    return None


# ----- main ---------------------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--small", action="store_true", help="a smaller grid (n_in 256, 4,096 latents, batch 1,024)")
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--blocks", type=int, default=3, help="timed blocks of steps per configuration and kernel")
    parser.add_argument("--block-seconds", type=float, default=2.0, help="rough length of a block of steps")
    parser.add_argument("--recovery-every", type=int, default=20, help="steps between recovery checks")
    parser.add_argument("--recovery-kernel", default="auto", choices=["auto", "dense", "sparse"])
    parser.add_argument("--no-recovery", action="store_true", help="skip time_to_recovery_s (null)")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        print(json.dumps(measure(json.loads(args.worker))))
        return
    torch.manual_seed(0)
    flops = peak_flops(args.device)
    log(f"peak float32 matmul: {flops / 1e9:.1f} GFLOP/s")
    results = []
    for n_in, n_latents, batch, method, k in SMALL_GRID if args.small else DEFAULT_GRID:
        spec = {"n_in": n_in, "n_latents": n_latents, "batch": batch, "method": method, "k": k}
        gemm_seconds = 2 * batch * n_in * n_latents / flops  # one encoder GEMM at peak
        spec |= {"device": args.device, "blocks": args.blocks}
        one_path = method == "relu" or not has_kernel_field()
        dense = run_worker({**spec, "kernel": "dense", "block": block_steps(args.block_seconds, 6 * gemm_seconds)})
        fast = dense
        if not one_path:
            fast = run_worker({**spec, "kernel": "auto", "block": block_steps(args.block_seconds, 2 * gemm_seconds)})
        row = {
            "n_in": n_in,
            "n_latents": n_latents,
            "batch": batch,
            "method": method,
            "k": k,
            "fast_samples_per_s": round(fast["samples_per_s"], 1),
            "dense_samples_per_s": round(dense["samples_per_s"], 1),
            "roofline_ratio": round(fast["samples_per_s"] * 2 * n_in * n_latents / flops, 3),
            "fast_peak_mem_mb": round(fast["peak_mem_mb"], 1),
            "dense_peak_mem_mb": round(dense["peak_mem_mb"], 1),
        }
        log(json.dumps(row))
        results.append(row)
    recovery = None
    if not args.no_recovery:
        recovery = time_to_recovery(args.device, args.recovery_every, args.recovery_kernel)
        log(f"time to gt_recovery_decoder >= 0.9: {recovery} s")
    print(json.dumps({"peak_flops": round(flops), "results": results, "time_to_recovery_s": recovery}))


if __name__ == "__main__":
    main()
