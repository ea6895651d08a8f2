"""Training from a live model against harvest-then-train, at equal tokens, on all-MiniLM-L6-v2 (`make real`'s model
and corpus): wall time, peak memory and held-out FVU of each path, and the live path's rate against the model's
forward alone.

    PYTHONPATH=src python benchmarks/live_vs_store.py --work /tmp/minilm --out benchmarks/results/live_vs_store

Each path runs as its own `sdlkit` process under /usr/bin/time -v (peak RSS). Both hold out the same rows (the
live source's held-out units: the store run is given that many eval_rows), so their FVUs are comparable.
Needs the `real` extra (pip install -e '.[real]').
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "examples" / "minilm"))

MODULE = "encoder.layer.2"


def timed(command: list[str], log: Path) -> dict:
    """Run `command` under /usr/bin/time -v: wall seconds, peak RSS in MB, and its standard output."""
    began = time.perf_counter()
    done = subprocess.run(["/usr/bin/time", "-v", *command], capture_output=True, text=True)
    seconds = time.perf_counter() - began
    log.write_text(done.stdout + "\n----- stderr -----\n" + done.stderr)
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed; see {log}")
    peak_kb = int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", done.stderr).group(1))
    return {"seconds": round(seconds, 1), "peak_rss_mb": round(peak_kb / 1024), "stdout": done.stdout}


def sdlkit_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "sdlkit", *args]


def forward_alone(live: dict) -> dict:
    """Rows/s of the model's forward passes and row extraction over the training units, in this process."""
    from sdlkit.config import run_config
    from sdlkit.data import build_source

    config = run_config({"data": live, "model": {"n_latents": 64, "method": {"name": "topk", "k": 4}}})
    source = build_source(config.data)
    began = time.perf_counter()
    rows = sum(len(source._run_units([u])[0]) for u in source.train_units)
    seconds = time.perf_counter() - began
    eval_rows = int(source.unit_rows[source.eval_units].sum())
    source.close()
    return {"rows": rows, "seconds": round(seconds, 1), "rows_per_s": round(rows / seconds), "eval_rows": eval_rows}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", required=True, help="scratch folder: model, corpus, store, runs (not committed)")
    parser.add_argument("--out", default="benchmarks/results/live_vs_store", help="where results.json goes")
    parser.add_argument("--latents", type=int, default=4096)
    parser.add_argument("--k", type=int, default=32)
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--batch", type=int, default=4096)
    args = parser.parse_args()
    from corpus import build_corpus
    from run import extract_model

    work, out = Path(args.work), Path(args.out)
    work.mkdir(parents=True, exist_ok=True)
    out.mkdir(parents=True, exist_ok=True)
    model = extract_model(work / "model")
    corpus = work / "docs.jsonl"
    if not corpus.is_file():
        build_corpus(corpus)
    live = {"kind": "model", "model": str(model), "modules": [MODULE], "data": str(corpus), "eval_rows": 8192}
    forward = forward_alone(live)
    print("forward alone:", forward, flush=True)
    harvest = timed(
        sdlkit_cmd("harvest", "--model", str(model), "--modules", MODULE, "--data", str(corpus), "--out",
                   str(work / "store"), "--overwrite", "--no-progress", "--device", "cpu"),
        out / "harvest.log",
    )  # fmt: skip
    print("harvest:", {k: v for k, v in harvest.items() if k != "stdout"}, flush=True)
    rest = {
        "model": {"n_latents": args.latents, "method": {"name": "topk", "k": args.k}},
        "train": {"steps": args.steps, "batch_size": args.batch, "lr": 1e-3, "progress": False},
    }
    store = {"kind": "store", "store": str(work / "store"), "eval_rows": forward["eval_rows"]}
    results = {"forward_alone": forward, "harvest": {k: v for k, v in harvest.items() if k != "stdout"}}
    for name, data in (("store", store), ("live", live)):
        config = work / f"{name}.yaml"
        config.write_text(yaml.safe_dump({"data": data, **rest}))
        run = timed(
            sdlkit_cmd("train", "--config", str(config), "--out", str(work / f"run-{name}"), "--overwrite", "--json"),
            out / f"train-{name}.log",
        )
        metrics = json.loads(run.pop("stdout"))
        results[name] = {
            **run,
            "train_seconds": metrics["seconds"],
            **{k: metrics[k] for k in ("fvu", "l0", "samples")},
        }
        print(name, results[name], flush=True)
    results["settings"] = {**vars(args), "eval_rows": forward["eval_rows"], "module": MODULE}
    (out / "results.json").write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
