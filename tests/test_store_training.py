"""Training, anchoring and evaluating on an activation store (synthetic rows written with StoreWriter)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml

import sdlkit
from sdlkit.cli.main import main
from sdlkit.config import run_config
from sdlkit.data import build_source
from sdlkit.data.directions import require_directions
from sdlkit.errors import ConfigError
from sdlkit.eval.evaluate import evaluate_checkpoint
from sdlkit.eval.metrics import reconstruction_metrics
from sdlkit.store import StoreWriter
from sdlkit.train import Trainer

DIM, N_CLASSES = 12, 4
CLASSES = ["a", "b", "c", "d"]


def class_store(path: Path, n_samples: int = 600, seed: int = 0) -> tuple[Path, torch.Tensor]:
    """Each row = 5 × (its class's direction) + noise: class means point along known directions.
    Returns the store and the class directions [C, DIM]. One row per sample, like pooled CLIP embeddings."""
    gen = torch.Generator().manual_seed(seed)
    directions = torch.nn.functional.normalize(torch.randn(N_CLASSES, DIM, generator=gen), dim=1)
    label = torch.randint(0, N_CLASSES, (n_samples,), generator=gen)
    x = 5 * directions[label] + 0.3 * torch.randn(n_samples, DIM, generator=gen)
    writer = StoreWriter.create(
        path, {"pooled": DIM}, torch.float32, labels=CLASSES, source={"models": ["synthetic"]}, shard_rows=128
    )
    for lo in range(0, n_samples, 50):
        rows = torch.arange(lo, min(lo + 50, n_samples))
        writer.append({"pooled": x[rows]}, rows, label[rows])
        writer.end_batch(int(rows[-1]) + 1)
    writer.close()
    return path, directions


def values(store: Path, **train) -> dict:
    return {
        "data": {"store": str(store), "normalize": True, "eval_rows": 100, "shuffle_buffer": 256},
        "model": {"n_latents": 16, "method": {"name": "topk", "k": 2}},
        "train": {"steps": 30, "batch_size": 32, "lr": 3e-3, "progress": False, "log_every": 10, **train},
    }


def test_run_config_takes_its_shape_from_the_store(tmp_path):
    store, _ = class_store(tmp_path / "store")
    config = run_config(values(store))
    assert (config.model.n_in, config.model.n_out, config.model.in_blocks) == (DIM, DIM, [DIM])
    with pytest.raises(ConfigError, match="not in the store"):
        run_config({**values(store), "data": {"store": str(store), "inputs": ["nope"]}})


def test_normalised_run_saves_folded_weights_and_resumes_exactly(tmp_path):
    store, _ = class_store(tmp_path / "store")
    config = run_config(values(store, checkpoint_every=10, lr_decay="none"))
    source = build_source(config.data)
    assert abs(source.batch(0, 500).x_p.pow(2).sum(1).mean().item() - 1) < 0.1  # unit mean squared norm
    full = Trainer(config, source, tmp_path / "full").fit()
    # the saved dictionary works on RAW rows: codes equal, reconstruction = scaled one / scale
    saved = sdlkit.load(full.checkpoint)
    scale = source.in_scales[0]
    x = source.eval_batch().x_p / scale
    with torch.no_grad():
        assert torch.equal(saved(x).x_q != 0, full.model(x * scale).x_q != 0)
        torch.testing.assert_close(saved(x).x_hat, full.model(x * scale).x_hat / scale, rtol=1e-4, atol=1e-5)
    assert json.loads((full.checkpoint / "config.json").read_text())["normalization"]["in_scales"] == [scale]
    # stop after 10 steps, resume to 30: the same training-space weights as the uninterrupted run
    short = run_config(values(store, checkpoint_every=10, lr_decay="none", steps=10))
    Trainer(short, build_source(short.data), tmp_path / "split").fit()
    resumed = Trainer(config, build_source(config.data), tmp_path / "split").fit(resume=True)
    for name, tensor in full.model.named_tensors().items():
        assert torch.equal(tensor, resumed.model.named_tensors()[name]), name


def test_anchors_from_labels_are_the_normalised_class_means(tmp_path):
    store, directions = class_store(tmp_path / "store")
    config = run_config(values(store, anchors={"count": 2, "weight": 1.0, "source": "labels"}, steps=150, lr=0.02))
    source = build_source(config.data)
    trainer = Trainer(config, source)
    truth = require_directions(source)
    assert truth.kind == "labels" and truth.names == CLASSES
    # the class means of this data point along the class directions (cosine near 1)
    cosines = torch.nn.functional.cosine_similarity(truth.W_p.T, directions, dim=1)
    assert cosines.min() > 0.99
    chosen = trainer.anchors.indices
    expected = torch.nn.functional.normalize(truth.W_p[:, chosen].T, dim=1)
    torch.testing.assert_close(trainer.anchors.A, expected)
    result = trainer.fit()
    # λ = 1 pulls the anchored encoder rows onto the class means
    rows = torch.nn.functional.normalize(result.model.W_E[: len(chosen)].detach(), dim=1)
    assert (rows * expected).sum(1).min() > 0.9
    with pytest.raises(ConfigError, match="ground truth"):
        Trainer(run_config(values(store, anchors={"count": 2, "source": "ground_truth"})), source)
    with pytest.raises(ConfigError, match="labelled classes"):
        Trainer(run_config(values(store, anchors={"count": 9})), source)


def test_eval_reports_on_held_out_raw_rows(tmp_path):
    store, _ = class_store(tmp_path / "store")
    config = run_config(values(store))
    source = build_source(config.data)
    result = Trainer(config, source, tmp_path / "run").fit()
    report = evaluate_checkpoint(tmp_path / "run", store)
    assert report["n_samples"] == source.n_eval and "held-out" in report["rows"]
    # FVU is scale-free: raw rows with folded weights give the trainer's own held-out FVU
    assert abs(report["fvu"] - result.metrics["fvu"]) < 1e-4
    mse_raw = reconstruction_metrics(result.model, source.eval_batch())["mse"] / source.in_scales[0] ** 2
    assert abs(report["mse"] - mse_raw) < 1e-3 * mse_raw
    every = evaluate_checkpoint(tmp_path / "run", store, all_rows=True)
    assert every["n_samples"] == 600


def test_cli_train_eval_export_import_on_a_store(tmp_path, capsys):
    store, _ = class_store(tmp_path / "store")
    config = tmp_path / "run.yaml"
    config.write_text(yaml.safe_dump(values(store)))
    run = tmp_path / "run"
    anchors = ["--anchors-from", "labels", "--anchors", "1"]
    assert main(["train", "--config", str(config), "--out", str(run), *anchors]) == 0
    assert "class means of 3 classes" in capsys.readouterr().out
    capsys.readouterr()
    assert main(["eval", str(run), "--store", str(store), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["n_samples"] == 100  # --json: stdout holds the JSON alone
    assert main(["export", str(run), "--format", "saelens", "--out", str(tmp_path / "sl")]) == 0
    assert main(["import", str(tmp_path / "sl"), "--format", "saelens", "--out", str(tmp_path / "back")]) == 0
    original, back = sdlkit.load(run), sdlkit.load(tmp_path / "back")
    x = torch.randn(20, DIM) * 5
    with torch.no_grad():
        torch.testing.assert_close(back(x).x_hat, original(x).x_hat, rtol=1e-5, atol=1e-5)
    capsys.readouterr()
    assert main(["train", "--config", str(config), "--out", str(tmp_path / "r2"), "--anchors-from", "labels"]) == 2
    assert "--anchors K" in capsys.readouterr().err
    assert main(["eval", str(run), "--store", str(tmp_path / "missing")]) == 2
    assert "no activation store" in capsys.readouterr().err
