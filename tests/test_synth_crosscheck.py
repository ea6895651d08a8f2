"""sdlkit's SynthSAEBench against SAELens's own generator and metrics (issue 14 item 3), at the tiny preset.

Runs where `sae_lens` is importable (it is not an sdlkit dependency), e.g. with a venv that has it:
    PYTHONPATH=$PWD/src python -m pytest tests/test_synth_crosscheck.py
and is skipped elsewhere. The checks and their tolerances are those of benchmarks/synth_crosscheck.py.
"""

from __future__ import annotations

import importlib.util
import logging
from pathlib import Path

import pytest
import torch

pytest.importorskip("sae_lens")

from sdlkit.data.synth import synth_preset


def _crosscheck():
    path = Path(__file__).parents[1] / "benchmarks" / "synth_crosscheck.py"
    spec = importlib.util.spec_from_file_location("synth_crosscheck", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def crosscheck():
    logging.disable(logging.WARNING)
    torch.manual_seed(0)  # SAELens samples from torch's global generator
    return _crosscheck()


def _failures(checks: list[dict]) -> list[dict]:
    return [c for c in checks if not c["holds"]]


def test_data_agree_with_saelens(crosscheck):
    result = crosscheck.data_checks(synth_preset("tiny"), samples=20_000, seeds=8)
    assert _failures(result["checks"]) == []
    names = {c["check"] for c in result["checks"]}
    assert {"firing rate per feature", "forest rules", "joint firing rate of tracked pairs"} <= names


def test_metrics_agree_with_saelens(crosscheck):
    checks = crosscheck.metric_checks(synth_preset("tiny"), samples=8192)
    assert _failures(checks) == []
    assert len(checks) == 22  # 11 metrics for each of 2 dictionaries
