"""Watching a run: held-out figures in metrics.jsonl, curves.png, TensorBoard events, one dead-latent
story in `train` and `eval`, and BatchTopK's threshold against its batch selection."""

from __future__ import annotations

import json
import sys

import pytest
import torch
import yaml

from conftest import tiny_config, tiny_values
from sdlkit.cli.main import main
from sdlkit.data import Batch, build_source
from sdlkit.errors import ConfigError
from sdlkit.eval.metrics import batch_fvu
from sdlkit.eval.selection import selection_agreement
from sdlkit.train import EnsembleTrainer, Trainer
from sdlkit.train.runlog import CURVES_FILE, METRICS_FILE, TENSORBOARD_DIR, read_records
from test_store_training import class_store

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def records(run_dir) -> list[dict]:
    return [json.loads(line) for line in (run_dir / METRICS_FILE).read_text().splitlines()]


def assert_valid_png(path) -> None:
    from matplotlib.image import imread

    assert path.read_bytes()[:8] == PNG_SIGNATURE
    height, width, _ = imread(path).shape
    assert (height, width) == (600, 900)


@torch.no_grad()
def independent_fvu_and_l0(model, batch: Batch) -> tuple[float, float]:
    """FVU and L0 on the whole batch at once, in float64, σ's inference form."""
    model.eval()
    out = model(batch.x_p)
    x_r, x_hat = batch.x_r.double(), out.x_hat.double()
    fvu = (x_r - x_hat).pow(2).sum() / (x_r - x_r.mean(dim=0)).pow(2).sum()
    return fvu.item(), (out.x_q != 0).sum().item() / len(batch)


# ----- held-out figures in the log ---------------------------------------------------------------------------
def test_log_holds_the_held_out_fvu_every_eval_every_steps(tmp_path):
    config = tiny_config("topk", steps=45, eval_every=20)
    source = build_source(config.data)
    result = Trainer(config, source, tmp_path).fit()
    log = records(tmp_path)
    assert [r["step"] for r in log] == [10, 20, 30, 40, 45]
    assert [r["step"] for r in log if "eval_fvu" in r] == [20, 40, 45]  # multiples of eval_every, and the last
    fvu, l0 = independent_fvu_and_l0(result.model, source.eval_batch())
    assert log[-1]["eval_fvu"] == pytest.approx(fvu, rel=1e-9)
    assert log[-1]["eval_l0"] == pytest.approx(l0, rel=1e-12)
    assert log[-1]["eval_fvu"] == result.metrics["fvu"]  # the same figure the run hands back
    assert 0 < log[-1]["fvu"] < 1 and log[0]["fvu"] > log[-1]["fvu"]  # the training batches' FVU falls


def test_batch_fvu_is_the_fraction_of_variance_left():
    gen = torch.Generator().manual_seed(0)
    x_r, x_hat = torch.randn(3, 50, 7, generator=gen), torch.randn(3, 50, 7, generator=gen)
    expected = [((x_r[e] - x_hat[e]).pow(2).sum() / (x_r[e] - x_r[e].mean(0)).pow(2).sum()).item() for e in range(3)]
    torch.testing.assert_close(batch_fvu(x_r, x_hat), torch.tensor(expected))  # a stack: one per run
    assert batch_fvu(x_r[0], x_r[0]).item() == 0.0


@pytest.mark.parametrize("method", ["batchtopk", "jumprelu"])
def test_evaluating_never_changes_the_training_run(method):
    """Held-out evaluation at every log line, or only at the end: the same weights, bit for bit (BatchTopK's
    threshold would move if the evaluation ran σ's training form)."""
    every = Trainer(tiny_config(method, steps=40, eval_every=10), build_source(tiny_config().data)).fit()
    end = Trainer(tiny_config(method, steps=40, eval_every=1000), build_source(tiny_config().data)).fit()
    assert sum("eval_fvu" in r for r in every.history) == 4 and sum("eval_fvu" in r for r in end.history) == 1
    for name, tensor in every.model.named_tensors().items():
        assert torch.equal(tensor, end.model.named_tensors()[name]), name


def test_eval_every_must_be_a_multiple_of_log_every():
    with pytest.raises(ConfigError, match=r"train.eval_every = 15 must be a multiple of train.log_every = 10"):
        tiny_config(eval_every=15)


def test_ensemble_members_log_their_own_held_out_figures_and_curves(tmp_path):
    configs = [tiny_config("topk", steps=20).model_copy(update={"seed": seed}) for seed in (0, 1)]
    sources = [build_source(c.data) for c in configs]
    dirs = [tmp_path / "a", tmp_path / "b"]
    results = EnsembleTrainer(configs, sources, dirs).fit()
    for run_dir, source, result in zip(dirs, sources, results, strict=True):
        last = records(run_dir)[-1]
        fvu, _ = independent_fvu_and_l0(result.model, source.eval_batch())
        assert last["eval_fvu"] == pytest.approx(fvu, rel=1e-6)
        assert_valid_png(run_dir / CURVES_FILE)
    assert records(dirs[0])[-1]["eval_fvu"] != records(dirs[1])[-1]["eval_fvu"]


# ----- curves.png and `sdlkit info` ----------------------------------------------------------------------------
def test_curves_after_train_and_after_a_resume_and_info_names_them(tmp_path, capsys):
    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump(tiny_values("topk", steps=20)))
    run = tmp_path / "run"
    assert main(["train", "--config", str(config), "--out", str(run)]) == 0
    assert_valid_png(run / CURVES_FILE)
    assert not (run / f".{CURVES_FILE}.tmp").exists()  # written beside and renamed into place
    first = (run / CURVES_FILE).read_bytes()
    assert main(["train", "--config", str(config), "--out", str(run), "--resume", "--set", "train.steps=40"]) == 0
    assert_valid_png(run / CURVES_FILE)
    assert (run / CURVES_FILE).read_bytes() != first  # redrawn from the whole log: steps 10 to 40
    assert [r["step"] for r in read_records(run / METRICS_FILE)] == [10, 20, 30, 40]
    capsys.readouterr()
    assert main(["info", str(run)]) == 0
    assert f"curves      {run / CURVES_FILE}" in capsys.readouterr().out
    assert main(["info", str(run), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["curves"] == str(run / CURVES_FILE) and "tensorboard" not in info


def test_read_records_stops_at_a_torn_line(tmp_path):
    (tmp_path / METRICS_FILE).write_text('{"step": 1, "samples": 8}\n{"step": 2, "samples": 16}\n{"step": 3, "sa')
    assert [r["step"] for r in read_records(tmp_path / METRICS_FILE)] == [1, 2]
    assert read_records(tmp_path / "none.jsonl") == []


# ----- TensorBoard ---------------------------------------------------------------------------------------------
def scalars(run_dir, tag: str) -> list[tuple[int, float]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    accumulator = EventAccumulator(str(run_dir / TENSORBOARD_DIR))
    accumulator.Reload()
    return [(event.step, event.value) for event in accumulator.Scalars(tag)]


def test_tensorboard_events_hold_the_log_once_after_a_resume(tmp_path, capsys):
    pytest.importorskip("tensorboard")
    config = tiny_config("topk", steps=40, checkpoint_every=20, tensorboard=True)
    Trainer(config, build_source(config.data), tmp_path).fit()
    (tmp_path / "checkpoints" / "step-00000040").rename(tmp_path / "final")  # as if killed after step 20
    Trainer(config, build_source(config.data), tmp_path).fit(resume=True)
    log = records(tmp_path)
    assert [r["step"] for r in log] == [10, 20, 30, 40]
    for tag in ("loss", "fvu", "eval_fvu", "dead_fraction", "lr"):
        events = scalars(tmp_path, tag)
        assert [step for step, _ in events] == [r["samples"] for r in log], tag  # each step once, against samples
        assert [value for _, value in events] == pytest.approx([r[tag] for r in log], rel=1e-6), tag
    assert main(["info", str(tmp_path)]) == 0
    assert f"tensorboard {tmp_path / TENSORBOARD_DIR}" in capsys.readouterr().out


def test_tensorboard_without_the_package_is_one_line_before_training(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorboard", None)  # `import tensorboard` raises ImportError
    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump(tiny_values("topk", steps=5, tensorboard=True)))
    assert main(["train", "--config", str(config), "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "pip install 'sdlkit[tensorboard]'" in err, err
    assert not (tmp_path / "run" / METRICS_FILE).exists()


def test_tensorboard_needs_a_run_folder():
    config = tiny_config("topk", steps=5, tensorboard=True)
    with pytest.raises(ConfigError, match="train.tensorboard needs a run folder"):
        Trainer(config, build_source(config.data))


# ----- one dead-latent story -----------------------------------------------------------------------------------
def test_train_and_eval_report_the_same_dead_latent_figures(tmp_path, capsys):
    store, _ = class_store(tmp_path / "store")
    config = tmp_path / "c.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "data": {"store": str(store), "eval_rows": 100, "shuffle_buffer": 256},
                "model": {"n_latents": 32, "method": {"name": "topk", "k": 1}},
                "train": {"steps": 30, "batch_size": 32, "lr": 3e-3, "progress": False, "dead_window": 64},
            }
        )
    )
    run = tmp_path / "run"
    assert main(["train", "--config", str(config), "--out", str(run), "--json"]) == 0
    trained = json.loads(capsys.readouterr().out)
    assert main(["eval", str(run), "--store", str(store), "--json"]) == 0
    evaluated = json.loads(capsys.readouterr().out)
    assert evaluated["rows"].startswith("held-out rows")
    for key in ("dead_fraction", "never_fired_fraction", "n_samples", "l0"):
        assert trained[key] == evaluated[key], key
    assert trained["fvu"] == pytest.approx(evaluated["fvu"], rel=1e-5)
    assert trained["dead_fraction"] > 0 and trained["never_fired_fraction"] > 0  # real figures, not a 0 == 0


# ----- BatchTopK: the threshold against the batch selection ----------------------------------------------------
@torch.no_grad()
def independent_selection(model, x: torch.Tensor, batch_size: int, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Active (row, latent) masks of BatchTopK's training form (k·B largest positive z per batch of B rows)
    and of its inference form (z > θ), computed from W_E and b_E directly."""
    z = x @ model.W_E.T + model.b_E
    train = torch.zeros_like(z, dtype=torch.bool)
    for start in range(0, len(x), batch_size):
        block = z[start : start + batch_size]
        flat = block.reshape(-1)
        kept = torch.zeros_like(flat, dtype=torch.bool)
        values, indices = flat.topk(k * len(block))
        kept[indices[values > 0]] = True
        train[start : start + batch_size] = kept.view_as(block)
    return train, z > model.activation.threshold.clamp_min(0)


def test_batchtopk_threshold_reproduces_the_training_l0():
    """Stated tolerance (README, "Watching a run"): on a tiny run whose θ has settled, θ's L0 on held-out rows
    is within 10% of the batch selection's k."""
    config = tiny_config({"name": "batchtopk", "k": 4, "threshold_momentum": 0.9}, steps=100, eval_every=1000)
    source = build_source(config.data)
    model = Trainer(config, source).fit().model
    theta = model.activation.threshold.clone()
    held_out = source.eval_batch()
    check = selection_agreement(model, held_out, config.train.batch_size)
    assert torch.equal(model.activation.threshold, theta) and model.training  # the model is left as it was
    train, inference = independent_selection(model, held_out.x_p, config.train.batch_size, k=4)
    assert check["l0_train"] == train.sum().item() / len(held_out) == 4.0
    assert check["l0_inference"] == inference.sum().item() / len(held_out)
    assert check["l0_inference"] == pytest.approx(check["l0_train"], rel=0.10)
    train_only = (train.any(0) & ~inference.any(0)).nonzero().flatten().tolist()
    assert check["fired_train_only"] == train_only
    assert check["fired_inference_only"] == (inference.any(0) & ~train.any(0)).nonzero().flatten().tolist()
    assert (check["fired_train"], check["fired_inference"]) == (train.any(0).sum(), inference.any(0).sum())
    assert len(train_only) <= 2  # and nearly the same latents fire under both


def test_a_method_without_a_batch_selection_agrees_with_itself():
    config = tiny_config("topk", steps=10)
    source = build_source(config.data)
    model = Trainer(config, source).fit().model
    check = selection_agreement(model, source.eval_batch(), 100)  # 4,096 rows: a 96-row tail is left out
    assert check["n_samples"] == 4000 and check["l0_train"] == check["l0_inference"] == 4.0
    assert check["fired_train"] == check["fired_inference"] and check["fired_train_only"] == []
