"""Does anchoring to discovered directions help? And does cross-seed consistency (PW-MCC) predict recovery?

On the quick LRB (260 features in 200 dims, data seed 0 for every run, so seeds differ only in the model's
initialisation and training draws), for each frame and row (the quick bench's recipes, 500 steps of 1,024):

    (a) none         no anchors: the m discovery runs (seeds 0..m-1) and the evaluation seeds
    (b) discovered   anchors from `sdlkit anchors discover` over the m discovery runs (k most consistent)
    (c) random       k random unit directions as anchors (a control)
    (d) ground_truth k ground-truth features as anchors (the ceiling; the bench's FA)
    (a') none_long   no anchors, one run of (m + 1) × the steps: the compute (b) spends (m runs + 1)

(b), (c), (d) train the evaluation seeds with soft anchoring (λ = 0.1, the bench's) of k = 26 latents.
Recovery is scored on the features that the anchors do not stand for (ground-truth anchors: their
features; file anchors: each anchor's one-to-one matched feature), and compared with (a) on the SAME
features, seed by seed. PW-MCC is computed within each group of runs that share a condition (on the free
latents k: of anchored runs, which would otherwise agree trivially) and correlated with recovery.

Resumable: every finished run is a record in OUT/records.json and a checkpoint in OUT/runs/; run the same
command again to finish (a record without its checkpoint, as in a fresh clone, is trained again). Writes
OUT/summary.json and OUT/summary.md. About 17 minutes on one core of a busy 2-core machine.

    OMP_NUM_THREADS=1 PYTHONPATH=src python benchmarks/anchor_discovery.py --out benchmarks/results/anchor_discovery
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
from scipy import stats

import sdlkit
from sdlkit.config import run_config
from sdlkit.data import build_source
from sdlkit.eval.consistency import consistency
from sdlkit.eval.recovery import best_match
from sdlkit.io import read_json, write_json_atomically, write_text_atomically
from sdlkit.paper.bench import BenchSpec, plan_runs
from sdlkit.report import format_table
from sdlkit.train import Trainer
from sdlkit.train.anchoring import Anchors, load_anchors, matched_features, save_anchors
from sdlkit.train.checkpoint import list_checkpoints
from sdlkit.train.discovery import discover_anchors

TAU = 0.95
CONDITIONS = ("none", "discovered", "random", "ground_truth", "none_long")


@dataclass(frozen=True)
class Run:
    frame: str
    row: str
    condition: str
    seed: int
    steps: int

    @property
    def run_id(self) -> str:
        return f"{self.frame}__{self.row}__{self.condition}__seed{self.seed}"


def plan(args: argparse.Namespace) -> list[Run]:
    """Every run, in an order where the discovery runs of a (frame, row) come before its anchored runs."""
    runs = []
    discovery = list(range(args.discovery_runs))
    for frame in args.frames:
        for row in args.rows:
            runs += [Run(frame, row, "none", s, args.steps) for s in discovery + args.seeds]
            for condition in ("discovered", "random", "ground_truth"):
                runs += [Run(frame, row, condition, s, args.steps) for s in args.seeds]
            runs.append(Run(frame, row, "none_long", args.seeds[0], args.steps * (args.discovery_runs + 1)))
        for row in args.extra_rows:  # consistency vs recovery only: more methods, no anchoring
            runs += [Run(frame, row, "none", s, args.steps) for s in discovery]
    return runs


def config_values(run: Run, n_anchors: int, anchors_file: Path | None) -> dict[str, Any]:
    """The quick bench's recipe for the row, on data seed 0, with this run's seed, steps and anchors."""
    plans = plan_runs(BenchSpec(preset="quick", rows=[run.row], frames=[run.frame], seeds=[run.seed], steps=run.steps))
    values = next(p.values for p in plans if not p.anchored)
    values["data"]["seed"] = 0
    values["train"].update(progress=False, keep_checkpoints=1)
    values["train"].pop("checkpoint_every", None)
    if run.condition in ("discovered", "random", "ground_truth"):
        values["train"]["anchors"] = {"count": n_anchors, "weight": 0.1, "mode": "soft", "seed": run.seed}
        if anchors_file is not None:
            values["train"]["anchors"] |= {"source": "file", "file": str(anchors_file)}
    return values


def anchors_file(
    out: Path, frame: str, row: str, condition: str, discovery: list[Path], k: int, n_out: int
) -> Path | None:
    """The anchors of (b) or (c) for a (frame, row), written once: discovered from the discovery runs
    (None when they agree on nothing), or k random unit directions (seeded by frame and row)."""
    path = out / "anchors" / f"{frame}__{row}__{condition}.safetensors"
    if path.is_file():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    if condition == "discovered":
        models = [sdlkit.load(run) for run in discovery]
        found = discover_anchors([m.W_E for m in models], [m.W_D for m in models], threshold=0.9, count=k)
        if found.anchors.k == 0:
            return None
        provenance = {"runs": [str(p) for p in discovery], "rule": {"threshold": 0.9, "min_runs": len(models)}}
        save_anchors(path, found.anchors, found.extra(), provenance)
    else:
        gen = torch.Generator().manual_seed(sum(map(ord, frame + row)))
        B = torch.nn.functional.normalize(torch.randn(n_out, k, generator=gen), dim=0)
        save_anchors(path, Anchors(B.T.contiguous(), B, []), {}, {"random": True, "seed": sum(map(ord, frame + row))})
    return path


def train_and_score(run: Run, out: Path, n_anchors: int, file: Path | None) -> dict[str, Any]:
    """Train one run (resuming a cut-off one) and score every feature's best match (encoder and decoder)."""
    config = run_config(config_values(run, n_anchors, file))
    source = build_source(config.data, "cpu")
    truth = source.ground_truth()
    anchors = load_anchors(file, n_anchors) if file is not None else None
    run_dir = out / "runs" / run.run_id
    trainer = Trainer(config, source, run_dir, anchors=anchors)
    result = trainer.fit(resume=bool(list_checkpoints(run_dir)))
    if trainer.anchors is None:
        anchored: list[int] = []
    elif trainer.anchors.indices:
        anchored = trainer.anchors.indices
    else:
        anchored = matched_features(trainer.anchors, truth["W_r"])
    encoder, _ = best_match(result.model.W_E.detach(), truth["W_p"])
    decoder, _ = best_match(result.model.W_D.detach().T, truth["W_r"])
    anchor_quality = None
    if trainer.anchors is not None:  # how close each anchor is to some true feature
        anchor_quality = best_match(truth["W_r"].T, trainer.anchors.B.cpu())[0].tolist()
    return {
        **run.__dict__,
        "run_id": run.run_id,
        "n_anchors": trainer.anchors.k if trainer.anchors is not None else 0,
        "anchored_features": anchored,
        "anchor_best_cos": anchor_quality,
        "encoder_best": [round(v, 6) for v in encoder.tolist()],
        "decoder_best": [round(v, 6) for v in decoder.tolist()],
        "fvu": result.metrics["fvu"],
        "l0": result.metrics["l0"],
        "train_seconds": result.train_seconds,
    }


def write_records(path: Path, records: list[dict[str, Any]]) -> None:
    """records.json with one record a line (their per-feature lists make indented JSON 3x larger)."""
    write_text_atomically(path, "[\n" + ",\n".join(json.dumps(r) for r in records) + "\n]\n")


def run_all(args: argparse.Namespace) -> list[dict[str, Any]]:
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    records_path = out / "records.json"
    records = read_json(records_path, kind=list) if records_path.is_file() else []
    # a record whose checkpoint is gone (a fresh clone keeps records, not checkpoints) is trained again
    records = [r for r in records if list_checkpoints(out / "runs" / r["run_id"])]
    done = {r["run_id"] for r in records}
    runs = plan(args)
    started = time.perf_counter()
    for i, run in enumerate(runs, 1):
        if run.run_id in done:
            continue
        file = None
        if run.condition in ("discovered", "random"):
            discovery = [
                out / "runs" / Run(run.frame, run.row, "none", s, run.steps).run_id for s in range(args.discovery_runs)
            ]
            n_out = run_config(config_values(Run(run.frame, run.row, "none", run.seed, run.steps), 0, None)).model.n_out
            file = anchors_file(out, run.frame, run.row, run.condition, discovery, args.anchors, n_out)
            if file is None:
                print(f"[{i}/{len(runs)}] {run.run_id}: skipped, the discovery runs agree on no direction", flush=True)
                continue
        n_anchors = min(args.anchors, load_anchors(file).k) if file is not None else args.anchors
        records.append(train_and_score(run, out, n_anchors, file))
        write_records(records_path, records)
        print(f"[{i}/{len(runs)}] {run.run_id} ({time.perf_counter() - started:.0f} s)", flush=True)
    return records


# ----- summary --------------------------------------------------------------------------------------------
def recovery(record: dict[str, Any], exclude: set[int]) -> dict[str, float]:
    """Decoder M_GT / M_IP and encoder M_IP / M_GT over the features not in `exclude`."""
    keep = [i for i in range(len(record["decoder_best"])) if i not in exclude]
    dec = [record["decoder_best"][i] for i in keep]
    enc = [record["encoder_best"][i] for i in keep]
    return {
        "dec_gt": sum(v > TAU for v in dec) / len(dec),
        "dec_ip": statistics.fmean(dec),
        "enc_ip": statistics.fmean(enc),
        "enc_gt": sum(v > TAU for v in enc) / len(enc),
    }


def run_consistency(out: Path, group: list[dict[str, Any]]) -> dict[str, float]:
    """Each run's mean PW-MCC with the other runs of its group (anchored runs: on latents k: only)."""
    if len(group) < 2:
        return {}
    decoders = []
    for record in group:
        W_D = sdlkit.load(out / "runs" / record["run_id"]).W_D.detach()
        decoders.append(W_D[:, record["n_anchors"] :])
    result = consistency(decoders)
    R = len(group)
    return {record["run_id"]: (result.matrix[i].sum().item() - 1) / (R - 1) for i, record in enumerate(group)}


def condition_rows(records: list[dict[str, Any]], pw: dict[str, float], seeds: list[int]) -> list[dict[str, Any]]:
    """One line per condition of a (frame, row): recovery on its free features and the change against (a)
    on the same features, seed by seed."""
    by = {(r["condition"], r["seed"]): r for r in records}
    lines = []
    for condition in CONDITIONS:
        runs = [by[(condition, s)] for s in seeds if (condition, s) in by]
        if condition == "none":
            runs = [r for r in records if r["condition"] == "none"]
        if not runs:
            continue
        own, delta = [], []
        for r in runs:
            exclude = set(r["anchored_features"])
            own.append(recovery(r, exclude))
            base = by.get(("none", r["seed"]))
            if base is not None:
                theirs = recovery(base, exclude)
                delta.append({k: own[-1][k] - theirs[k] for k in theirs})
        line = {"condition": condition, "runs": len(runs), "steps": runs[0]["steps"], "k": runs[0]["n_anchors"]}
        line |= {k: statistics.fmean(o[k] for o in own) for k in own[0]}
        line |= {f"delta_{k}": statistics.fmean(d[k] for d in delta) for k in (delta[0] if delta else {})}
        line["delta_dec_gt_each"] = [d["dec_gt"] for d in delta]
        quality = [c for r in runs for c in (r["anchor_best_cos"] or [])]
        line["anchors_true"] = sum(c > TAU for c in quality) / len(quality) if quality else None
        # were the anchored features found anyway? (the same seed's unanchored run, decoder |cos| > τ)
        found = [by[("none", r["seed"])]["decoder_best"][i] > TAU for r in runs for i in r["anchored_features"]]
        line["anchored_found_unanchored"] = sum(found) / len(found) if found and condition != "none" else None
        line["pw_mcc"] = (
            statistics.fmean(pw[r["run_id"]] for r in runs) if all(r["run_id"] in pw for r in runs) else None
        )
        lines.append(line)
    return lines


def _centred(points: list[dict[str, Any]], key: str) -> list[float]:
    """`key` minus its mean over the runs of the same (frame, row, condition)."""
    groups: dict[tuple, list[float]] = {}
    for p in points:
        groups.setdefault((p["frame"], p["row"], p["condition"]), []).append(p[key])
    return [p[key] - statistics.fmean(groups[(p["frame"], p["row"], p["condition"])]) for p in points]


def correlations(points: list[dict[str, Any]], within: bool = False) -> dict[str, Any]:
    """Pearson and Spearman between each run's PW-MCC and its recovery. `within`: both centred on their
    group's mean, so only the differences between seeds of one method count, not those between methods."""
    result: dict[str, Any] = {"n": len(points)}
    if len(points) < 3:
        return result
    x = _centred(points, "pw_mcc") if within else [p["pw_mcc"] for p in points]
    for key in ("dec_ip", "dec_gt", "enc_ip"):
        y = _centred(points, key) if within else [p[key] for p in points]
        if len(set(y)) < 2 or len(set(x)) < 2:  # a constant has no correlation
            continue
        result[key] = {"pearson": float(stats.pearsonr(x, y)[0]), "spearman": float(stats.spearmanr(x, y)[0])}
    return result


def summarise(out: Path, records: list[dict[str, Any]], seeds: list[int]) -> dict[str, Any]:
    """Per (frame, row): the condition lines; per frame and pooled: PW-MCC against recovery."""
    frames: dict[str, dict[str, Any]] = {}
    points = []
    for frame in dict.fromkeys(r["frame"] for r in records):
        frames[frame] = {}
        for row in dict.fromkeys(r["row"] for r in records if r["frame"] == frame):
            mine = [r for r in records if (r["frame"], r["row"]) == (frame, row)]
            pw: dict[str, float] = {}
            for condition in CONDITIONS:
                pw |= run_consistency(out, [r for r in mine if r["condition"] == condition])
            frames[frame][row] = condition_rows(mine, pw, seeds)
            for r in mine:
                if r["run_id"] in pw:
                    free = recovery(r, set(r["anchored_features"]))
                    points.append(
                        {"run_id": r["run_id"], "frame": frame, "row": row, "condition": r["condition"]}
                        | free
                        | {"pw_mcc": pw[r["run_id"]]}
                    )
    correlation = {}
    for frame in [*frames, "both"]:
        mine = [p for p in points if frame in ("both", p["frame"])]
        unanchored = [p for p in mine if p["condition"] == "none"]
        correlation[frame] = {
            "unanchored": correlations(unanchored),
            "unanchored, within methods": correlations(unanchored, within=True),
            "all": correlations(mine),
        }
    return {"frames": frames, "correlation": correlation, "points": points}


def _pct(value: float | None) -> str:
    return "–" if value is None else f"{value:.1%}"


def _signed(value: float | None, percent: bool) -> str:
    if value is None or value != value:  # absent or NaN
        return "–"
    return f"{value * 100:+.1f} pp" if percent else f"{value:+.3f}"


def _spread(values: list[float]) -> str:
    """' ± sd' in pp over the seeds (nothing for fewer than two, or when all are equal)."""
    sd = statistics.stdev(values) * 100 if len(values) > 1 else 0.0
    return f" ± {sd:.1f}" if round(sd, 1) > 0 else ""


def markdown(summary: dict[str, Any], args: argparse.Namespace) -> str:
    lines = [
        "# Anchor discovery and cross-seed consistency on the LRB",
        "",
        f"Quick LRB, data seed 0; {args.discovery_runs} discovery runs (seeds 0..{args.discovery_runs - 1}), "
        f"evaluation seeds {args.seeds}, {args.steps} steps, k = {args.anchors} anchors (soft, λ = 0.1). "
        "Recovery on the features the run's anchors do not stand for; Δ: against (a) none, same seed, same features.",
        "",
    ]
    for frame, rows in summary["frames"].items():
        for row, conditions in rows.items():
            table = [
                {
                    "condition": c["condition"],
                    "runs": c["runs"],
                    "steps": c["steps"],
                    "k": c["k"],
                    "dec M_GT": _pct(c["dec_gt"]),
                    "Δ dec M_GT": _signed(c.get("delta_dec_gt"), True) + _spread(c["delta_dec_gt_each"]),
                    "dec M_IP": f"{c['dec_ip']:.3f}",
                    "Δ dec M_IP": _signed(c.get("delta_dec_ip"), False),
                    "enc M_IP": f"{c['enc_ip']:.3f}",
                    "Δ enc M_IP": _signed(c.get("delta_enc_ip"), False),
                    "anchors true": _pct(c["anchors_true"]),
                    "found anyway": _pct(c["anchored_found_unanchored"]),
                    "PW-MCC": "–" if c["pw_mcc"] is None else f"{c['pw_mcc']:.3f}",
                }
                for c in conditions
            ]
            lines += [f"## {frame} frame, {row}", "", format_table(table, list(table[0])), ""]
    lines += ["## PW-MCC against recovery (Pearson / Spearman over runs)", ""]
    table = []
    for frame, sets in summary["correlation"].items():
        for name, corr in sets.items():
            cells = {
                key: f"{corr[key]['pearson']:+.2f} / {corr[key]['spearman']:+.2f}" if key in corr else "–"
                for key in ("dec_ip", "dec_gt", "enc_ip")
            }
            table.append(
                {
                    "frame": frame,
                    "runs": name,
                    "n": corr["n"],
                    "dec M_IP": cells["dec_ip"],
                    "dec M_GT": cells["dec_gt"],
                    "enc M_IP": cells["enc_ip"],
                }
            )
    lines += [format_table(table, list(table[0])), ""]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="benchmarks/results/anchor_discovery")
    parser.add_argument("--frames", default="gaussian,tight")
    parser.add_argument("--rows", default="topk,relu", help="rows that run the four-way comparison")
    parser.add_argument("--extra-rows", default="jumprelu,batchtopk", help="rows trained only for the correlation")
    parser.add_argument("--discovery-runs", type=int, default=3)
    parser.add_argument("--seeds", default="10,11,12", help="evaluation seeds of (a)-(d)")
    parser.add_argument("--steps", type=int, default=500)
    parser.add_argument("--anchors", type=int, default=26, help="k, as the quick bench (10% of 260 features)")
    args = parser.parse_args()
    args.frames, args.rows = args.frames.split(","), args.rows.split(",")
    args.extra_rows = [r for r in args.extra_rows.split(",") if r]
    args.seeds = [int(s) for s in args.seeds.split(",")]
    records = run_all(args)
    summary = summarise(Path(args.out), records, args.seeds)
    write_json_atomically(Path(args.out) / "summary.json", summary)
    text = markdown(summary, args)
    write_text_atomically(Path(args.out) / "summary.md", text)
    print(text)


if __name__ == "__main__":
    main()
