"""Shared fixtures: tiny LRB run configs that train in well under a second."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from sdlkit.config import RunConfig, run_config

METHOD_SPECS: dict[str, dict[str, Any]] = {
    "relu": {"name": "relu", "l1_coefficient": 0.01},
    "jumprelu": {"name": "jumprelu", "l0_coefficient": 0.001, "bandwidth": 0.05, "init_threshold": 0.05},
    "topk": {"name": "topk", "k": 4},
    "batchtopk": {"name": "batchtopk", "k": 4},
    "gated": {"name": "gated", "l1_coefficient": 0.01},
    "matryoshka": {"name": "matryoshka", "k": 4},
    "topk-auxk": {"name": "topk", "k": 4, "auxk": {}},
}


def tiny_values(method: dict[str, Any] | str = "topk", steps: int = 60, **train: Any) -> dict[str, Any]:
    if isinstance(method, str):
        method = METHOD_SPECS[method]
    return {
        "data": {"preset": "tiny"},
        "model": {"n_latents": 64, "method": method},
        "train": {"steps": steps, "batch_size": 64, "lr": 3e-3, "progress": False, "log_every": 10, **train},
    }


def tiny_config(method: dict[str, Any] | str = "topk", steps: int = 60, **train: Any) -> RunConfig:
    return run_config(tiny_values(method, steps, **train))


@pytest.fixture
def make_config():
    return tiny_config


def kill_at_first_checkpoint(proc: subprocess.Popen, checkpoints: Path, timeout: float = 120) -> None:
    """SIGKILL `proc` as soon as a `step-*` checkpoint appears in `checkpoints` (a training run being tested for
    exact resume); fails if the run ends first or nothing appears within `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while not (checkpoints.is_dir() and any(p.name.startswith("step-") for p in checkpoints.iterdir())):
        assert proc.poll() is None, "the run finished before it could be killed: make it longer"
        assert time.monotonic() < deadline
        time.sleep(0.01)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
