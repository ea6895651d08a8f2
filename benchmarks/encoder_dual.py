"""Where a TopK SAE's encoder rows go during training, on the Gaussian and the tight frame.

Trains the quick bench's TopK run (`sdlkit bench --preset quick --methods topk`, unanchored) on each frame,
checkpointing every `--every` steps, and scores every checkpoint: encoder rows against the features
(M_IP, M_GT) and against the features' dual frame vectors (M_IP dual), decoder columns against the
features. Prints one JSON object and writes a plot.

    PYTHONPATH=src python benchmarks/encoder_dual.py --out benchmarks/results/encoder_dual
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import sdlkit
from sdlkit.config import run_config
from sdlkit.data import build_source
from sdlkit.eval.recovery import dictionary_recovery
from sdlkit.paper.bench import BenchSpec, plan_runs
from sdlkit.paper.bench.scoring import encoder_geometry
from sdlkit.report import plot_xy
from sdlkit.train import Trainer
from sdlkit.train.checkpoint import list_checkpoints


def trajectory(frame: str, every: int, steps: int | None) -> list[dict[str, float]]:
    """Scores of every checkpoint of the quick TopK run on `frame`."""
    spec = BenchSpec(rows=["topk"], frames=[frame], steps=steps)
    values = plan_runs(spec)[0].values
    values["train"].update(checkpoint_every=every, keep_checkpoints=10**6, progress=False)
    config = run_config(values)
    source = build_source(config.data)
    truth = source.ground_truth()
    points = []
    with tempfile.TemporaryDirectory() as tmp:
        Trainer(config, source, Path(tmp) / "run").fit()
        for folder in list_checkpoints(Path(tmp) / "run"):
            model = sdlkit.load(folder)
            record = dictionary_recovery(model, truth["W_p"], truth["W_r"])
            record |= encoder_geometry(model.W_E, source.dual_p(), [])
            points.append({"step": int(folder.name.removeprefix("step-")), **record})
    return points


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--every", type=int, default=50, help="steps between scored checkpoints")
    parser.add_argument("--steps", type=int, default=None, help="training steps (default: the quick bench's)")
    parser.add_argument("--out", default="benchmarks/results/encoder_dual", help="folder for the JSON and plot")
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    result = {frame: trajectory(frame, args.every, args.steps) for frame in ("gaussian", "tight")}
    (out / "encoder_dual.json").write_text(json.dumps(result, indent=1) + "\n")
    steps = [p["step"] for p in result["gaussian"]]
    series = {
        f"{frame}: {label}": [p[key] for p in points]
        for frame, points in result.items()
        for key, label in (
            ("max_inner_product", "encoder vs features"),
            ("max_inner_product_dual", "encoder vs dual"),
            ("max_inner_product_decoder", "decoder vs features"),
        )
    }
    plot_xy(steps, series, out / "encoder_dual.png", "TopK, quick scale: where the rows go", "step", "M_IP")
    print(json.dumps({frame: points[-1] for frame, points in result.items()}, indent=1))


if __name__ == "__main__":
    main()
