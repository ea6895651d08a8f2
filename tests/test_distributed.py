"""Data-parallel training: 2 gloo processes under torchrun train the weights one process trains on the
same global batches, and a 2-rank checkpoint resumes on 1 rank."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

import sdlkit
from sdlkit.config import run_config
from sdlkit.data import build_source
from sdlkit.data.source import Batch
from sdlkit.errors import ConfigError
from sdlkit.train import Trainer
from sdlkit.train.distributed import RankSlice, local_batch_size


class GlobalBatches:
    """What W ranks see together, for one process: global batch `index` = the W rank slices stacked
    (RankSlice's pieces). Equal to the source itself for position-based sources; the reference a
    data-parallel run is checked against."""

    def __init__(self, source, world_size: int):
        self.source, self.world_size = source, world_size

    def batch(self, index: int, batch_size: int) -> Batch:
        local = local_batch_size(batch_size, self.world_size)
        parts = [RankSlice(self.source, r, self.world_size).batch(index, local) for r in range(self.world_size)]
        x_p = torch.cat([p.x_p for p in parts])
        same = all(p.x_r is p.x_p for p in parts)
        return Batch(x_p, x_p if same else torch.cat([p.x_r for p in parts]))

    def __getattr__(self, name: str):
        return getattr(self.source, name)


def values(steps: int, **data) -> dict:
    return {
        "data": {"preset": "tiny", **data},
        "model": {"n_latents": 32, "method": {"name": "topk", "k": 4}},
        "train": {"steps": steps, "batch_size": 64, "lr": 3e-3, "lr_decay": "none", "progress": False},
    }


def torchrun(config: Path, out: Path, *extra: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    command += ["-m", "sdlkit", "train", "--config", str(config), "--out", str(out), *extra]
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)


def assert_same_weights(a: torch.nn.Module, b: torch.nn.Module) -> None:
    # Equal up to rounding: the all-reduce sums the ranks' gradients in another order than one process,
    # and 20 Adam steps from TopK's small initial encoder rows (0.1) grow that to a few 1e-6 (measured
    # up to 3.9e-6 in W_D); a wrong average or a skipped step would differ by about lr = 3e-3.
    for name, tensor in a.named_tensors().items():
        torch.testing.assert_close(tensor, b.named_tensors()[name], rtol=1e-5, atol=1e-5, msg=name)


def test_rank_slices_of_a_position_stream_are_the_global_batch():
    source = build_source(run_config(values(1, n_samples=500)).data)
    whole = source.batch(3, 64)
    halves = [RankSlice(source, r, 2).batch(3, 32) for r in range(2)]
    assert torch.equal(torch.cat([h.x_p for h in halves]), whole.x_p)
    assert torch.equal(GlobalBatches(source, 2).batch(3, 64).x_p, whole.x_p)
    with pytest.raises(ConfigError, match="multiple of 3"):
        local_batch_size(64, 3)


def test_two_gloo_ranks_match_one_process_and_resume_on_one_rank(tmp_path):
    config = tmp_path / "run.yaml"
    config.write_text(yaml.safe_dump(values(20)))
    done = torchrun(config, tmp_path / "ddp")
    assert done.returncode == 0, done.stderr[-3000:]
    ddp = sdlkit.load(tmp_path / "ddp")
    single = Trainer(run_config(values(20)), GlobalBatches(build_source(run_config(values(20)).data), 2)).fit()
    assert_same_weights(ddp, single.model)

    # a stream whose batches are positions (fixed n_samples) is the same for any number of ranks, so
    # 2 ranks for 10 steps, then 1 rank to 20, trains what 1 process trains in 20 steps
    fixed = values(10, n_samples=400)
    config.write_text(yaml.safe_dump(fixed))
    done = torchrun(config, tmp_path / "mixed")
    assert done.returncode == 0, done.stderr[-3000:]
    resumed = run_config({**fixed, "train": {**fixed["train"], "steps": 20}})
    result = Trainer(resumed, build_source(resumed.data), tmp_path / "mixed").fit(resume=True)
    reference = Trainer(resumed, build_source(resumed.data)).fit()
    assert result.steps == 20
    assert_same_weights(result.model, reference.model)
