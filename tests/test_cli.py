"""The `sdlkit` command: train/info/bench work; bad input is one line on stderr and exit status 2."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

import sdlkit
from conftest import kill_at_first_checkpoint, tiny_values
from sdlkit.cli.main import main

REPO = Path(__file__).resolve().parents[1]


def write_config(path: Path, **kw) -> Path:
    path.write_text(yaml.safe_dump(tiny_values(**kw)))
    return path


def test_train_then_info(tmp_path, capsys):
    config = write_config(tmp_path / "c.yaml", steps=20)
    assert main(["train", "--config", str(config), "--out", str(tmp_path / "run"), "--set", "train.lr=1e-3"]) == 0
    out = capsys.readouterr().out
    assert "| topk" in out and "checkpoint:" in out
    model = sdlkit.load(tmp_path / "run")
    assert model.n_latents == 64
    assert main(["info", str(tmp_path / "run")]) == 0
    info = capsys.readouterr().out
    assert "method      topk  k=4" in info and "n_latents=64" in info and "step 20 of 20" in info


def test_train_seed_changes_the_initialisation(tmp_path):
    config = write_config(tmp_path / "c.yaml", steps=1)
    for seed in (1, 2):
        assert main(["train", "--config", str(config), "--out", str(tmp_path / f"s{seed}"), "--seed", str(seed)]) == 0
    assert not torch.equal(sdlkit.load(tmp_path / "s1").W_E, sdlkit.load(tmp_path / "s2").W_E)


def one_line_error(capsys, argv, match):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1, f"expected one line, got {err!r}"
    assert match in err, err


@pytest.mark.parametrize(
    ("overrides", "match"),
    [
        (["model.method.name=topkk"], "unknown method 'topkk'; known methods: batchtopk"),
        (["model.method.k=65"], "method.k = 65 is not allowed: it must be in [1, model.n_latents = 64]"),
        (["data.S=1.0"], "S"),
        (["train.lrr=1"], "unknown option 'train.lrr'"),
        (["train.batch_size=0"], "train.batch_size = 0 is not allowed: Input should be greater than 0"),
        (["device=tpu"], "device 'tpu' is unknown; use cpu, cuda, cuda:N or auto"),
        (["data.preset=nope"], "nope"),
        (["train.lr"], "is not key=value"),
    ],
)
def test_bad_config_values_exit_2_with_one_line(tmp_path, capsys, overrides, match):
    config = write_config(tmp_path / "c.yaml", steps=2)
    argv = ["train", "--config", str(config), "--out", str(tmp_path / "run")]
    for assignment in overrides:
        argv += ["--set", assignment]
    one_line_error(capsys, argv, match)


def test_missing_config_file(tmp_path, capsys):
    one_line_error(capsys, ["train", "--config", str(tmp_path / "no.yaml")], "no.yaml does not exist")


def test_unknown_command_and_option_exit_2(capsys):
    one_line_error(capsys, ["trian"], "invalid choice: 'trian'")
    one_line_error(capsys, ["info"], "the following arguments are required: checkpoint")


def test_info_on_missing_and_corrupt_checkpoints(tmp_path, capsys):
    one_line_error(capsys, ["info", str(tmp_path / "nope")], "no checkpoint at")
    model = sdlkit.SparseDictionary(sdlkit.ModelConfig(n_in=4, n_latents=8, method="relu"))
    sdlkit.save(model, tmp_path / "ckpt")
    weights = tmp_path / "ckpt" / "weights.safetensors"
    weights.write_bytes(weights.read_bytes()[:-8])
    one_line_error(capsys, ["info", str(tmp_path / "ckpt")], "weights.safetensors is corrupt")


def test_bench_rejects_unknown_preset_and_method(tmp_path, capsys):
    one_line_error(capsys, ["bench", "--preset", "nope", "--out", str(tmp_path)], "invalid choice: 'nope'")
    one_line_error(capsys, ["bench", "--methods", "topk,nope", "--out", str(tmp_path)], "unknown bench row 'nope'")


def _train_cmd(config: Path, out: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "sdlkit", "train", "--config", str(config), "--out", str(out), *extra]


def test_sigkill_after_checkpoint_then_resume_gives_identical_weights(tmp_path):
    """A run killed with SIGKILL (possibly mid-checkpoint) and resumed ends bit-identical to an uninterrupted one."""
    config = write_config(tmp_path / "c.yaml", method="batchtopk", steps=600, checkpoint_every=50, dead_window=512)
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    subprocess.run(_train_cmd(config, tmp_path / "full"), check=True, env=env, capture_output=True)

    proc = subprocess.Popen(
        _train_cmd(config, tmp_path / "killed"), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    checkpoints = tmp_path / "killed" / "checkpoints"
    kill_at_first_checkpoint(proc, checkpoints)
    finished = sorted(p.name for p in checkpoints.iterdir() if p.name.startswith("step-"))
    assert "step-00000600" not in finished, "the kill came too late to test anything"

    subprocess.run(_train_cmd(config, tmp_path / "killed", "--resume"), check=True, env=env, capture_output=True)
    a, b = sdlkit.load(tmp_path / "full").named_tensors(), sdlkit.load(tmp_path / "killed").named_tensors()
    for name in a:
        assert torch.equal(a[name], b[name]), name
