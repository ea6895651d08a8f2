"""Anchor discovery on real activations: MiniLM sentence embeddings (or any labelled store) from `make real`.

The LRB version (benchmarks/anchor_discovery.py) has ground truth; here the only "truth" is the store's
labels, so recovery means Table 2's class means (sdlkit.paper.table2.scoring). For one TopK recipe
(examples/minilm/run.py's sentence recipe by default: 1,536 latents, k = 16, 300 steps of 1,024, lr 1e-3):

    none         no anchors: m discovery runs (seeds 0..m-1) and the evaluation seeds
    discovered   `sdlkit anchors discover` over the m discovery runs (k_a most consistent directions)
    random       k_a random unit directions as anchors (a control)
    none_long    no anchors, (m + 1) x the steps: the compute `discovered` spends (m runs, then one more)

Anchored runs pull their first k_a latents to the anchors (λ = 1.0, the MiniLM Table 2 weight). Every run
is scored on ALL the store's class means (discovered anchors are not class means, so none is left out):
M_GT / M_IP at τ = 0.95 from encoder rows and decoder columns, and `free` = without the anchored latents;
FVU, L0 on the held-out rows; dead = never fired in training. PW-MCC: within each condition's evaluation
seeds (on the free latents: anchored runs agree trivially on their anchors), and each run against the
unanchored evaluation runs of the other seeds (all latents).

Resumable: each finished run is a record in OUT/records.json and a checkpoint in OUT/runs/ (git-ignored);
run the same command again to finish. Writes OUT/summary.json and OUT/summary.md. About 4 minutes on one
core of a busy 2-core machine for the sentence store (15 runs, 24 runs' worth of steps).

--grad-clip 0 trains without sdlkit's default gradient-norm clip (1.0): the anchor penalty's gradient
enters that global norm, so with the clip any anchors (random ones too) change how the other latents train.

    OMP_NUM_THREADS=1 PYTHONPATH=src python benchmarks/anchor_discovery_real.py --threshold 0.7 \\
        --store real-out/stores/sentences --out benchmarks/results/anchor_discovery_real/sentences_t0.7
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

import sdlkit
from sdlkit.cli.main import main as sdlkit_cli
from sdlkit.config import run_config
from sdlkit.data import build_source
from sdlkit.data.directions import require_directions
from sdlkit.eval.consistency import consistency, pw_mcc
from sdlkit.eval.recovery import best_match
from sdlkit.io import read_json, write_json_atomically, write_text_atomically
from sdlkit.paper.table2.scoring import TAU, chance, score_dictionary
from sdlkit.report import format_table
from sdlkit.train import Trainer
from sdlkit.train.anchoring import Anchors, load_anchors, save_anchors
from sdlkit.train.checkpoint import list_checkpoints

CONDITIONS = ("none", "discovered", "random", "none_long")


@dataclass(frozen=True)
class Run:
    condition: str
    seed: int
    steps: int

    @property
    def run_id(self) -> str:
        return f"{self.condition}__seed{self.seed}"


def plan(args: argparse.Namespace) -> list[Run]:
    """Every run; the discovery runs (none, seeds 0..m-1) come before the anchored ones."""
    runs = [Run("none", s, args.steps) for s in [*range(args.discovery_runs), *args.seeds]]
    runs += [Run(c, s, args.steps) for c in ("discovered", "random") for s in args.seeds]
    return runs + [Run("none_long", s, args.steps * (args.discovery_runs + 1)) for s in args.seeds]


def config_values(args: argparse.Namespace, run: Run, n_anchors: int, file: Path | None) -> dict[str, Any]:
    """The run config: examples/minilm's recipe (normalised store rows, TopK), this run's seed, steps, anchors."""
    train: dict[str, Any] = {
        "steps": run.steps,
        "batch_size": args.batch,
        "lr": 1e-3,
        "log_every": run.steps,
        "progress": False,
        "keep_checkpoints": 1,
        "grad_clip": args.grad_clip or None,
    }
    if file is not None:
        train["anchors"] = {"count": n_anchors, "weight": args.weight, "source": "file", "file": str(file)}
    return {
        "data": {"store": str(args.store), "normalize": True, "eval_rows": args.eval_rows},
        "model": {"n_latents": args.latents, "method": {"name": "topk", "k": args.k}},
        "train": train,
        "seed": run.seed,
        "device": "cpu",
    }


def anchors_file(args: argparse.Namespace, condition: str, n_out: int) -> Path:
    """The anchors of `discovered` (the `sdlkit anchors discover` command over the discovery runs: at most k_a)
    or `random` (as many seeded random unit directions), written once into OUT/anchors/."""
    path = Path(args.out) / "anchors" / f"{condition}.safetensors"
    if path.is_file():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    if condition == "discovered":
        runs = [str(Path(args.out) / "runs" / Run("none", s, args.steps).run_id) for s in range(args.discovery_runs)]
        command = ["anchors", "discover", *runs, "--out", str(path), "--count", str(args.anchors)]
        command += ["--threshold", str(args.threshold)]
        print("sdlkit " + " ".join(command), flush=True)
        if sdlkit_cli(command) != 0:
            raise SystemExit("anchor discovery failed (no shared direction?): see the message above")
    else:  # as many as were discovered
        k = load_anchors(anchors_file(args, "discovered", n_out)).k
        B = torch.nn.functional.normalize(torch.randn(n_out, k, generator=torch.Generator().manual_seed(0)), dim=0)
        save_anchors(path, Anchors(B.T.contiguous(), B, []), {}, {"random": True, "seed": 0})
    return path


def train_and_score(args: argparse.Namespace, run: Run, file: Path | None) -> dict[str, Any]:
    """Train one run (resuming a cut-off one) and score it on every class mean of the store."""
    n_anchors = min(args.anchors, load_anchors(file).k) if file is not None else 0
    config = run_config(config_values(args, run, n_anchors, file))
    source = build_source(config.data)
    truth = require_directions(source)
    anchors = load_anchors(file, n_anchors) if file is not None else None
    run_dir = Path(args.out) / "runs" / run.run_id
    trainer = Trainer(config, source, run_dir, anchors=anchors)
    result = trainer.fit(resume=bool(list_checkpoints(run_dir)))
    source.close()
    scores = score_dictionary(result.model.W_E, result.model.W_D, truth, [], n_anchors)
    anchor_cos = None
    if anchors is not None:  # how close each anchor is to its nearest class mean (decoder side)
        anchor_cos = best_match(anchors.B.T.cpu().float(), truth.W_r.float().cpu())[0].tolist()
    return {
        **run.__dict__,
        "run_id": run.run_id,
        "n_anchors": n_anchors,
        **scores,
        "fvu": result.metrics["fvu"],
        "l0": result.metrics["l0"],
        "dead": result.metrics["dead_fraction"],
        "train_seconds": result.train_seconds,
        "anchor_class_cos": anchor_cos,
    }


def run_all(args: argparse.Namespace) -> list[dict[str, Any]]:
    """Train every planned run not yet recorded (a record without its checkpoint is trained again)."""
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / "records.json"
    records = read_json(path, kind=list) if path.is_file() else []
    records = [r for r in records if list_checkpoints(out / "runs" / r["run_id"])]
    done = {r["run_id"] for r in records}
    runs, started = plan(args), time.perf_counter()
    for i, run in enumerate(runs, 1):
        if run.run_id in done:
            continue
        file = None
        if run.condition in ("discovered", "random"):
            file = anchors_file(
                args, run.condition, sdlkit.load(out / "runs" / Run("none", 0, args.steps).run_id).n_out
            )
        records.append(train_and_score(args, run, file))
        write_text_atomically(path, "[\n" + ",\n".join(json.dumps(r) for r in records) + "\n]\n")
        print(f"[{i}/{len(runs)}] {run.run_id} ({time.perf_counter() - started:.0f} s)", flush=True)
    return records


# ----- summary --------------------------------------------------------------------------------------------
def _decoder(out: Path, record: dict[str, Any], free: bool) -> torch.Tensor:
    W_D = sdlkit.load(out / "runs" / record["run_id"]).W_D.detach()
    return W_D[:, record["n_anchors"] :] if free else W_D


def pw_mcc_columns(out: Path, records: list[dict[str, Any]], seeds: list[int]) -> dict[str, dict[str, float]]:
    """Per evaluation run: `within` (mean PW-MCC with its condition's other seeds, free latents) and
    `to_none` (mean PW-MCC with the unanchored evaluation runs of the other seeds, all latents)."""
    by = {(r["condition"], r["seed"]): r for r in records}
    result: dict[str, dict[str, float]] = {}
    for condition in CONDITIONS:
        group = [by[(condition, s)] for s in seeds if (condition, s) in by]
        if len(group) < 2:
            continue
        matrix = consistency([_decoder(out, r, free=True) for r in group]).matrix
        for i, r in enumerate(group):
            others = [by[("none", s)] for s in seeds if s != r["seed"] and ("none", s) in by]
            mine = _decoder(out, r, free=False)
            result[r["run_id"]] = {
                "within": (matrix[i].sum().item() - 1) / (len(group) - 1),
                "to_none": statistics.fmean(pw_mcc(mine, _decoder(out, o, free=False)) for o in others),
            }
    return result


KEYS = ("M_GT", "M_IP", "M_GT_dec", "M_IP_dec", "free_M_GT", "free_M_IP", "fvu", "l0", "dead", "train_seconds")


def condition_rows(records: list[dict[str, Any]], pw: dict[str, dict[str, float]], seeds: list[int]) -> list[dict]:
    """One line per condition: means over its evaluation seeds (and sd of M_IP), PW-MCC, anchor quality."""
    lines = []
    for condition in CONDITIONS:
        runs = [r for r in records if r["condition"] == condition and r["seed"] in seeds]
        if not runs:
            continue
        line: dict[str, Any] = {"condition": condition, "runs": len(runs), "steps": runs[0]["steps"]}
        line["k_anchors"] = runs[0]["n_anchors"]
        for key in KEYS:
            values = [r[key] for r in runs if key in r]
            line[key] = statistics.fmean(values) if values else None
        line["M_IP_sd"] = statistics.stdev([r["M_IP"] for r in runs]) if len(runs) > 1 else 0.0
        for name in ("within", "to_none"):
            values = [pw[r["run_id"]][name] for r in runs if r["run_id"] in pw]
            line[f"pw_mcc_{name}"] = statistics.fmean(values) if values else None
        cos = [c for r in runs for c in (r["anchor_class_cos"] or [])]
        line["anchor_class_cos"] = statistics.fmean(cos) if cos else None
        lines.append(line)
    return lines


def discovery_facts(out: Path, args: argparse.Namespace) -> dict[str, Any]:
    """The discovery runs' PW-MCC matrix and what the discovered anchors file holds."""
    decoders = [_decoder(out, {"run_id": Run("none", s, args.steps).run_id, "n_anchors": 0}, False)
                for s in range(args.discovery_runs)]  # fmt: skip
    facts: dict[str, Any] = {"discovery_pw_mcc": consistency(decoders).matrix.tolist()}
    path = out / "anchors" / "discovered.safetensors"
    if path.is_file():
        from safetensors.torch import load_file

        tensors = load_file(str(path))
        facts["discovered"] = int(tensors["B"].shape[1]) if "B" in tensors else None
        for key in ("support", "agreement"):
            if key in tensors:
                facts[f"{key}_range"] = [float(tensors[key].min()), float(tensors[key].max())]
    return facts


def summarise(args: argparse.Namespace, records: list[dict[str, Any]]) -> dict[str, Any]:
    out = Path(args.out)
    pw = pw_mcc_columns(out, records, args.seeds)
    source = build_source(run_config(config_values(args, Run("none", 0, args.steps), 0, None)).data)
    truth = require_directions(source)
    source.close()
    reference = {"chance": chance(truth, [], args.latents), "classes": truth.W_p.shape[1]}
    return {
        "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "conditions": condition_rows(records, pw, args.seeds),
        "pw_mcc": pw,
        "reference": reference,
        **discovery_facts(out, args),
    }


def _pct(x: float | None) -> str:
    return "–" if x is None else f"{100 * x:.1f}%"


def _num(x: float | None) -> str:
    return "–" if x is None else f"{x:.3f}"


def _range(pair: list[float] | None) -> str:
    return "–" if not pair else f"{pair[0]:.3f} to {pair[1]:.3f}"


def markdown(summary: dict[str, Any], args: argparse.Namespace) -> str:
    """OUT/summary.md: the settings, the discovery runs' PW-MCC, one table line per condition."""
    facts, ref = summary, summary["reference"]
    matrix = facts["discovery_pw_mcc"]
    off = [v for i, row in enumerate(matrix) for j, v in enumerate(row) if i < j]
    table = [
        {
            "condition": c["condition"],
            "runs": c["runs"],
            "steps": c["steps"],
            "anchors": c["k_anchors"],
            "M_GT": _pct(c["M_GT"]),
            "M_IP": f"{c['M_IP']:.3f} ± {c['M_IP_sd']:.3f}",
            "M_GT dec": _pct(c["M_GT_dec"]),
            "M_IP dec": _num(c["M_IP_dec"]),
            "free M_IP": _num(c["free_M_IP"]),
            "FVU": _num(c["fvu"]),
            "L0": f"{c['l0']:.1f}",
            "dead": _pct(c["dead"]),
            "PW-MCC within": _num(c["pw_mcc_within"]),
            "PW-MCC to none": _num(c["pw_mcc_to_none"]),
            "anchor→class cos": _num(c["anchor_class_cos"]),
        }
        for c in summary["conditions"]
    ]
    lines = [
        f"# Anchor discovery on real activations: {Path(args.store).name}",
        "",
        f"Store {args.store} ({ref['classes']} labelled classes). TopK, {args.latents:,} latents, k = {args.k}, "
        f"{args.steps} steps of {args.batch:,}, lr 1e-3, gradient clip {args.grad_clip or 'none'}, normalised rows, "
        f"{args.eval_rows} held-out rows. "
        f"{args.discovery_runs} discovery runs (seeds 0..{args.discovery_runs - 1}), mean PW-MCC "
        f"{statistics.fmean(off):.3f} (pairs {', '.join(f'{v:.3f}' for v in off)}); "
        f"{facts.get('discovered', '–')} directions shared by all of them at |cos| ≥ {args.threshold} "
        f"(mean matched |cos| {_range(facts.get('agreement_range'))}); evaluation seeds {args.seeds}; anchored runs: "
        f"the first {args.anchors} latents, λ = {args.weight}.",
        "",
        f"Scores on all {ref['classes']} class means at τ = {TAU} (M_* encoder rows, `dec` decoder columns, `free` "
        "without the anchored latents); means over the evaluation seeds (M_IP ± sd). PW-MCC within: among a "
        "condition's seeds on the free latents; to none: against the unanchored runs of the other seeds. "
        "anchor→class cos: each anchor's best |cos| with a class mean.",
        "",
        format_table(table, list(table[0])),
        "",
        f"Chance ({args.latents:,} random unit directions): M_GT {_pct(ref['chance']['M_GT'])}, "
        f"M_IP {ref['chance']['M_IP']:.3f}.",
        "",
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--store", required=True, help="a labelled activation store (e.g. real-out/stores/sentences)")
    parser.add_argument("--out", required=True, help="output folder (records, anchors, summary; runs/ git-ignored)")
    parser.add_argument("--latents", type=int, default=1536, help="latents per SAE (default 1536, the MiniLM recipe)")
    parser.add_argument("--k", type=int, default=16, help="TopK's k (default 16)")
    parser.add_argument("--steps", type=int, default=300, help="steps of one run (default 300)")
    parser.add_argument("--batch", type=int, default=1024, help="rows per step (default 1024)")
    parser.add_argument("--eval-rows", type=int, default=600, help="held-out store rows (default 600)")
    parser.add_argument("--discovery-runs", type=int, default=3, help="m, unanchored runs to discover from")
    parser.add_argument("--seeds", default="10,11,12", help="evaluation seeds of every condition")
    parser.add_argument("--anchors", type=int, default=30, help="anchors kept and anchored (default 30, Table 2's)")
    parser.add_argument("--threshold", type=float, default=0.9, help="discovery's |cos| threshold (default 0.9)")
    parser.add_argument("--weight", type=float, default=1.0, help="λ_anchor (default 1.0, MiniLM Table 2's)")
    parser.add_argument(
        "--grad-clip", type=float, default=1.0, help="global gradient-norm clip (default 1.0, sdlkit's; 0 = none)"
    )
    args = parser.parse_args()
    args.seeds = [int(s) for s in args.seeds.split(",")]
    records = run_all(args)
    summary = summarise(args, records)
    write_json_atomically(Path(args.out) / "summary.json", summary)
    text = markdown(summary, args)
    write_text_atomically(Path(args.out) / "summary.md", text)
    print(text)


if __name__ == "__main__":
    main()
