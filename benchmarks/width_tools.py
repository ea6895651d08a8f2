"""What the tools cost on a wide dictionary: peak memory and wall time of info, eval, browse, compare, export
and import on a TopK dictionary of `--latents` latents (65,536 by default) over `--n-in`-wide rows.

    PYTHONPATH=src python benchmarks/width_tools.py [--latents 65536] [--rows 20000] [--out DIR] [--src DIR]
    PYTHONPATH=src python benchmarks/width_tools.py --matching 4096,8192,16384   # exact against --candidates

Builds, without training (the tools' costs do not depend on what the weights learned):
- checkpoint `a`: a random TopK dictionary (`SparseDictionary`'s own initialisation: unit decoder columns);
- checkpoint `b`: `a`'s latents in a random order, each decoder column and encoder row turned by a small
  random angle (so `compare a b` has a known answer: a PW-MCC near 1, every latent matched to its image);
- a store of `--rows` Gaussian rows in samples of `--context` tokens, with token ids and a label per sample
  (so browse has tokens, contexts and labels to show).

Then runs each command as a separate process under `/usr/bin/time -v` and prints a table (command, peak
resident memory, wall time, exit status, the last line it printed) plus the same as JSON. `--matching`
instead times `match_dictionaries` on two independent random dictionaries of each width (the hardest case
for the Hungarian method), exactly and with 8 and 32 candidates, each in its own process. Figures and what
bounds each one: benchmarks/README.md ("65,536 latents: the tools' memory and time").
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

from sdlkit import ModelConfig, SparseDictionary
from sdlkit.io import save
from sdlkit.store import StoreWriter

SRC = Path(__file__).resolve().parents[1] / "src"


def build_checkpoints(out: Path, n_in: int, n_latents: int, k: int, turn: float) -> tuple[Path, Path]:
    """Checkpoint a (random) and b (a permuted, slightly turned copy of a), as described above."""
    config = ModelConfig(n_in=n_in, n_latents=n_latents, method={"name": "topk", "k": k})
    a = SparseDictionary(config, generator=torch.Generator().manual_seed(0))
    b = SparseDictionary(config, generator=torch.Generator().manual_seed(1))
    g = torch.Generator().manual_seed(2)
    order = torch.randperm(n_latents, generator=g)
    with torch.no_grad():
        noise = torch.randn(n_in, n_latents, generator=g)
        W_D = a.W_D[:, order] + turn * noise / noise.norm(dim=0)
        b.W_D.copy_(W_D / W_D.norm(dim=0))
        b.W_E.copy_(b.W_D.T * a.W_E.norm(dim=1)[order, None])
    return save(a, out / "a"), save(b, out / "b")


def build_store(out: Path, n_in: int, rows: int, context: int, n_labels: int) -> Path:
    """A store of `rows` Gaussian rows (float16), `context` tokens per sample, a label per sample."""
    g = torch.Generator().manual_seed(3)
    labels = [f"class-{i}" for i in range(n_labels)]
    writer = StoreWriter.create(
        out / "store", {"x": n_in}, torch.float16, labels=labels, source={}, shard_rows=65536, overwrite=True
    )
    samples_per_batch = max(1, 8192 // context)
    sample = 0
    for lo in range(0, rows, samples_per_batch * context):
        n = min(samples_per_batch * context, rows - lo)
        ids = sample + torch.arange(n) // context
        writer.append(
            {"x": torch.randn(n, n_in, generator=g)},
            ids,
            ids % n_labels,
            torch.randint(0, 30000, (n,), generator=g),
            torch.arange(n) % context,
        )
        sample = int(ids[-1]) + 1
        writer.end_batch(sample)
    writer.close()
    return out / "store"


def measure(name: str, argv: list[str], cwd: Path, src: Path) -> dict:
    """Run `python -m sdlkit ARGV` (sdlkit from `src`) under /usr/bin/time -v: peak RSS (MB), wall (s), exit
    status, last line said."""
    env = {"PYTHONPATH": str(src), "PATH": "/usr/bin:/bin"}
    command = ["/usr/bin/time", "-v", sys.executable, "-m", "sdlkit", *argv]
    print(f"$ sdlkit {' '.join(argv)}", file=sys.stderr, flush=True)
    done = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True)
    rss = re.search(r"Maximum resident set size \(kbytes\): (\d+)", done.stderr)
    wall = re.search(r"Elapsed \(wall clock\) time \(h:mm:ss or m:ss\): ([\d:.]+)", done.stderr)
    seconds = sum(float(part) * 60**i for i, part in enumerate(reversed(wall[1].split(":")))) if wall else None
    errors = [line for line in done.stderr.splitlines() if line.startswith("sdlkit: error")]
    said = errors or [line for line in done.stdout.splitlines() if line and not line.startswith("open file")]
    return {
        "command": name,
        "argv": ["sdlkit", *argv],
        "peak_rss_mb": round(int(rss[1]) / 1024, 1) if rss else None,
        "wall_s": round(seconds, 2) if seconds is not None else None,
        "exit": done.returncode,
        "said": said[-1][:160] if said else "",
    }


def match_one(width: int, n_in: int, candidates: int | None) -> None:
    """Print {width, candidates, seconds, pw_mcc, peak_rss_mb} of one matching of two random dictionaries."""
    import resource
    import time

    from sdlkit.eval.consistency import match_dictionaries

    g = torch.Generator().manual_seed(0)
    A, B = torch.randn(n_in, width, generator=g), torch.randn(n_in, width, generator=g)
    start = time.perf_counter()
    match = match_dictionaries(A, B, candidates)
    seconds = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(
        json.dumps(
            {"width": width, "candidates": candidates, "seconds": round(seconds, 2)}
            | {"pw_mcc": round(match.pw_mcc, 5), "peak_rss_mb": round(peak, 1)}
        )
    )


def matching(widths: list[int], n_in: int) -> None:
    """`match_one` for every width, exact and with 8 and 32 candidates, each in a fresh process (own peak)."""
    print("| width | candidates | seconds | PW-MCC | peak RSS (MB) |\n|---:|---|---:|---:|---:|")
    for width in widths:
        for candidates in (None, 8, 32):
            flag = [] if candidates is None else ["--candidates", str(candidates)]
            argv = [sys.executable, __file__, "--match-one", str(width), "--n-in", str(n_in), *flag]
            done = subprocess.run(argv, capture_output=True, text=True, env={"PYTHONPATH": str(SRC)})
            if done.returncode:
                print(f"| {width:,} | {candidates or 'exact'} | – | {done.stderr.strip().splitlines()[-1]} | – |")
                continue
            r = json.loads(done.stdout)
            print(f"| {width:,} | {candidates or 'exact'} | {r['seconds']} | {r['pw_mcc']} | {r['peak_rss_mb']} |")


def commands(args: argparse.Namespace) -> list[tuple[str, list[str]]]:
    """The commands measured, as (name, argv) run in the output folder."""
    return [
        ("info", ["info", "a"]),
        ("eval", ["eval", "a", "--store", "store"]),
        ("browse", ["browse", "a", "--store", "store", "--out", "site", "--no-progress", "--overwrite"]),
        ("compare (exact)", ["compare", "a", "b"]),
        (f"compare --candidates {args.candidates}", ["compare", "a", "b", "--candidates", str(args.candidates)]),
        ("export saelens", ["export", "a", "--format", "saelens", "--out", "saelens", "--overwrite"]),
        ("export sparsify", ["export", "a", "--format", "sparsify", "--out", "sparsify", "--overwrite"]),
        ("import saelens", ["import", "saelens", "--format", "saelens", "--out", "from-saelens", "--overwrite"]),
        ("import sparsify", ["import", "sparsify", "--format", "sparsify", "--out", "from-sparsify", "--overwrite"]),
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--latents", type=int, default=65536, help="dictionary width (default 65536)")
    parser.add_argument("--n-in", type=int, default=384, help="row width (default 384, MiniLM's)")
    parser.add_argument("--k", type=int, default=32, help="TopK's k (default 32)")
    parser.add_argument("--rows", type=int, default=20000, help="store rows (default 20000)")
    parser.add_argument("--context", type=int, default=64, help="tokens per sample (default 64)")
    parser.add_argument("--labels", type=int, default=20, help="labels (default 20)")
    parser.add_argument("--candidates", type=int, default=None, help="compare's --candidates (default 8)")
    parser.add_argument("--turn", type=float, default=0.2, help="b's columns: a's plus noise of this norm")
    parser.add_argument("--only", default=None, help="comma-separated command names to run (default all)")
    parser.add_argument("--out", default=None, help="working folder (default: a temporary one, removed)")
    parser.add_argument("--src", default=str(SRC), help="the sdlkit sources to measure (default this checkout's)")
    parser.add_argument("--matching", default=None, help="comma-separated widths: time exact and bounded matching")
    parser.add_argument("--match-one", type=int, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.match_one is not None:
        return match_one(args.match_one, args.n_in, args.candidates)
    if args.matching:
        return matching([int(w) for w in args.matching.split(",")], args.n_in)
    args.candidates = args.candidates or 8
    out = Path(args.out) if args.out else Path(tempfile.mkdtemp(prefix="sdlkit-width-"))
    out.mkdir(parents=True, exist_ok=True)
    if not (out / "a").is_dir() or not (out / "b").is_dir():
        build_checkpoints(out, args.n_in, args.latents, args.k, args.turn)
    if not (out / "store").is_dir():
        build_store(out, args.n_in, args.rows, args.context, args.labels)
    wanted = set(args.only.split(",")) if args.only else None
    src = Path(args.src).resolve()
    results = [measure(name, argv, out, src) for name, argv in commands(args) if wanted is None or name in wanted]
    print(f"{args.latents:,} latents, n_in {args.n_in}, k {args.k}, store of {args.rows:,} rows")
    print("| command | peak RSS (MB) | wall (s) | exit | last line |\n|---|---:|---:|---:|---|")
    for r in results:
        print(f"| {r['command']} | {r['peak_rss_mb']} | {r['wall_s']} | {r['exit']} | {r['said']} |")
    print(json.dumps({"latents": args.latents, "n_in": args.n_in, "rows": args.rows, "results": results}))
    if not args.out:
        shutil.rmtree(out)


if __name__ == "__main__":
    main()
