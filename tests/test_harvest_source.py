"""Training straight from a live model (data kind `model`): the rows are the harvest's rows, batches are a pure
function of their index, a killed run resumes bit-identically, ranks read their own texts, and mistakes are
one line."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

pytest.importorskip("transformers")

import sdlkit
from conftest import kill_at_first_checkpoint
from hf_tiny import TEXTS, one_thread, tiny_clip, tiny_lm  # noqa: F401 (autouse fixture)
from sdlkit.cli.main import main
from sdlkit.config import run_config
from sdlkit.data import build_source
from sdlkit.harvest import harvest
from sdlkit.store import ActivationStore

REPO = Path(__file__).resolve().parents[1]
MODULE = "transformer.h.1"


@pytest.fixture(scope="module")
def lm(tmp_path_factory) -> Path:
    return tiny_lm(tmp_path_factory.mktemp("lm") / "gpt2")


@pytest.fixture(scope="module")
def texts(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("texts") / "texts.txt"
    lines = [TEXTS[i % len(TEXTS)] + " cat" * (i % 5) for i in range(300)]
    path.write_text("\n".join(lines) + "\n")
    return path


def data_section(lm: Path, texts: Path, **extra) -> dict:
    return {
        "kind": "model",
        "model": str(lm),
        "modules": [MODULE],
        "data": str(texts),
        "model_batch_size": 4,
        "sort_window": 2,
        "shuffle_buffer": 500,
        "eval_rows": 200,
        **extra,
    }


def values(lm: Path, texts: Path, steps: int = 30, **extra) -> dict:
    return {
        "data": data_section(lm, texts, **extra),
        "model": {"n_latents": 64, "method": {"name": "topk", "k": 4}},
        "train": {"steps": steps, "batch_size": 64, "lr": 3e-3, "progress": False, "log_every": 10},
    }


def unique_rows(x: torch.Tensor) -> torch.Tensor:
    return torch.unique(x, dim=0)


def test_live_rows_are_the_harvest_rows(lm, texts, tmp_path):
    """Held-out rows equal the harvested store's last rows; one epoch of batches is a permutation of the rest."""
    harvest(str(lm), MODULE, str(texts), str(tmp_path / "store"), batch_size=4, sort_window=2, progress=False)
    store = ActivationStore(tmp_path / "store")
    stored = store.read_rows(0, store.rows, [MODULE])[MODULE]
    source = build_source(run_config(values(lm, texts)).data)
    assert int(source.unit_rows.sum()) == store.rows
    n_train = source.n_train
    assert torch.equal(source.eval_batch().x_p, stored[n_train:])
    assert len(source.eval_batch()) >= 200
    epoch = source.batch(0, n_train).x_p
    assert torch.equal(unique_rows(epoch), unique_rows(stored[:n_train]))
    assert not torch.equal(epoch, stored[:n_train])  # shuffled
    source.close()


def test_batches_are_a_pure_function_of_their_index(lm, texts):
    config = run_config(values(lm, texts)).data
    first, second = build_source(config), build_source(config)
    wanted = first.batch(7, 64).x_p  # crosses windows: 500-row windows, rows 448..512
    for index in (30, 2, 0):
        second.batch(index, 64)
    assert torch.equal(second.batch(7, 64).x_p, wanted)
    assert torch.equal(first.batch(7, 64).x_p, wanted)
    first.close(), second.close()


def test_ranks_read_their_own_texts(lm, texts):
    source = build_source(run_config(values(lm, texts)).data)
    shards = [source.shard(r, 2) for r in range(2)]
    units = [set(s.train_units) for s in shards]
    assert units[0].isdisjoint(units[1]) and units[0] | units[1] == set(source.train_units)
    for shard in shards:
        rows = shard.batch(0, shard.n_train).x_p
        assert len(rows) == int(source.unit_rows[shard.train_units].sum())
        shard.close()
    source.close()


def test_normalize_scales_the_held_out_rows_to_unit_mean_square(lm, texts):
    source = build_source(run_config(values(lm, texts, normalize=True)).data)
    rows = source.eval_batch().x_p.double()
    assert rows.pow(2).sum(dim=1).mean().item() == pytest.approx(1.0, rel=1e-5)
    assert source.block_scales() is not None
    source.close()


def _train(config: Path, out: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "sdlkit", "train", "--config", str(config), "--out", str(out), *extra]


def test_a_killed_live_run_resumes_bit_identically(lm, texts, tmp_path):
    run = values(lm, texts, steps=400)
    run["train"]["checkpoint_every"] = 20
    config = tmp_path / "live.yaml"
    config.write_text(json.dumps(run))
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    subprocess.run(_train(config, tmp_path / "full"), check=True, env=env, capture_output=True)
    proc = subprocess.Popen(_train(config, tmp_path / "killed"), env=env, stderr=subprocess.DEVNULL)
    checkpoints = tmp_path / "killed" / "checkpoints"
    kill_at_first_checkpoint(proc, checkpoints)
    assert not (checkpoints / "step-00000400").exists(), "the kill came too late to test anything"
    subprocess.run(_train(config, tmp_path / "killed", "--resume"), check=True, env=env, capture_output=True)
    a, b = sdlkit.load(tmp_path / "full").named_tensors(), sdlkit.load(tmp_path / "killed").named_tensors()
    for name in a:
        assert torch.equal(a[name], b[name]), name


def test_train_shorthand_and_info(lm, texts, tmp_path, capsys):
    out = tmp_path / "run"
    args = ["train", "--model", str(lm), "--modules", MODULE, "--data", str(texts), "--out", str(out)]
    args += ["--set", "model.n_latents=32", "--set", "train.steps=5", "--set", "train.progress=false"]
    assert main([*args, "--set", "data.eval_rows=100", "--json"]) == 0
    capsys.readouterr()
    saved = json.loads((out / "checkpoints" / "step-00000005" / "config.json").read_text())["run"]["data"]
    assert saved["kind"] == "model" and saved["model"] == str(lm.resolve()) and saved["data"] == str(texts.resolve())
    assert saved["data_fingerprint"].startswith("sha256:")
    assert main(["info", str(out)]) == 0
    assert f"live model {lm.resolve()} ({MODULE}) on {texts.resolve()}" in capsys.readouterr().out


def one_line(capsys, args: list[str], expected: str) -> None:
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and expected in err, err


def test_mistakes_are_one_line(lm, texts, tmp_path, capsys):
    base = ["train", "--out", str(tmp_path / "r"), "--set", "model.n_latents=32"]
    one_line(capsys, [*base, "--model", str(lm), "--data", str(texts)], "--model needs --modules")
    one_line(capsys, [*base, "--model", str(lm), "--modules", "no.such", "--data", str(texts)], "no.such")
    images = tmp_path / "images" / "cls"
    images.mkdir(parents=True)
    from PIL import Image

    Image.new("RGB", (8, 8)).save(images / "a.png")
    clip = tiny_clip(tmp_path / "clip")
    capsys.readouterr()
    one_line(
        capsys, [*base, "--model", str(clip), "--modules", "clip:pooled", "--data", str(tmp_path / "images")], "texts"
    )
    one_line(capsys, [*base, "--modules", MODULE], "give --config FILE, or --model")


def test_changed_texts_refuse_a_resume(lm, texts, tmp_path, capsys):
    data = tmp_path / "mine.txt"
    data.write_text(texts.read_text())
    run = values(lm, data, steps=10)
    config = tmp_path / "c.yaml"
    config.write_text(json.dumps(run))
    assert main(["train", "--config", str(config), "--out", str(tmp_path / "run"), "--set", "train.steps=5"]) == 0
    data.write_text(texts.read_text().replace("cat", "dog"))
    one_line(capsys, ["train", "--config", str(config), "--out", str(tmp_path / "run"), "--resume"], "fingerprint")


class ShardedBatches:
    """What 2 ranks of a live source train on together, for one process: each rank's shard's batch, stacked."""

    def __init__(self, source, world_size: int):
        self.source, self.shards = source, [source.shard(r, world_size) for r in range(world_size)]

    def batch(self, index: int, batch_size: int):
        from sdlkit.data.source import Batch

        local = batch_size // len(self.shards)
        x_p = torch.cat([shard.batch(index, local).x_p for shard in self.shards])
        return Batch(x_p, x_p)

    def __getattr__(self, name: str):
        return getattr(self.source, name)


def test_two_ranks_train_on_their_own_texts(lm, texts, tmp_path):
    from sdlkit.train import Trainer
    from test_distributed import assert_same_weights, torchrun

    run = values(lm, texts, steps=10)
    run["train"]["lr_decay"] = "none"
    config = tmp_path / "live.yaml"
    config.write_text(json.dumps(run))
    done = torchrun(config, tmp_path / "ddp")
    assert done.returncode == 0, done.stderr[-3000:]
    reference = run_config(run)
    single = Trainer(reference, ShardedBatches(build_source(reference.data), 2)).fit()
    assert_same_weights(sdlkit.load(tmp_path / "ddp"), single.model)
