"""The data-source registry: kinds, old configs without a kind, and a new source registered from outside."""

from __future__ import annotations

import json
from typing import Literal

import pytest
import torch

import sdlkit
from sdlkit.config import run_config
from sdlkit.data import LRBConfig, LRBSource, build_source, lrb_preset
from sdlkit.data.directions import require_directions
from sdlkit.data.source import (
    SOURCES,
    Batch,
    BlockScales,
    DataConfig,
    DataShape,
    DataSource,
    DirectionKind,
    KnownDirections,
    register_source,
)
from sdlkit.errors import ConfigError
from sdlkit.store import StoreDataConfig, fold_scales
from sdlkit.train import Trainer

MODEL = {"n_latents": 16, "method": {"name": "topk", "k": 2}}
TRAIN = {"steps": 6, "batch_size": 32, "lr": 1e-2, "progress": False, "log_every": 2}


class ToyConfig(DataConfig):
    """x = 2 · (sparse codes over the first `dim` unit vectors): a source that knows its directions and
    scales its rows, to check that both reach the trainer through the declared interface."""

    kind: Literal["toy"] = "toy"
    dim: int = 6
    seed: int = 0

    def shape(self) -> DataShape:
        return DataShape(self.dim, self.dim, [self.dim], [self.dim])


class ToySource(DataSource):
    SCALE = 2.0

    def __init__(self, config: ToyConfig, device: str | torch.device = "cpu"):
        self.config, self.device = config, torch.device(device)
        self.n_in = self.n_out = config.dim
        self.in_blocks = self.out_blocks = [config.dim]

    def batch(self, index: int, batch_size: int) -> Batch:
        gen = torch.Generator().manual_seed(self.config.seed * 1000 + index)
        codes = torch.rand(batch_size, self.config.dim, generator=gen)
        codes *= torch.rand(batch_size, self.config.dim, generator=gen) < 0.3
        x = (codes * self.SCALE).to(self.device)
        return Batch(x, x)

    def eval_batch(self) -> Batch:
        return self.batch(10**6, 64)

    def known_directions(self, kind: DirectionKind = "auto") -> KnownDirections | None:
        if kind == "labels":
            return None
        eye = torch.eye(self.config.dim)
        return KnownDirections(eye, eye, [f"e{i}" for i in range(self.config.dim)], "ground_truth")

    def block_scales(self) -> BlockScales | None:
        return BlockScales([self.SCALE], [self.SCALE])


@pytest.fixture
def toy_kind():
    register_source("toy", ToyConfig, ToySource)
    yield "toy"
    SOURCES.pop("toy")


def test_built_in_kinds_are_registered():
    assert SOURCES["lrb"] == (LRBConfig, LRBSource)
    assert SOURCES["store"][0] is StoreDataConfig


def test_unknown_kind_is_one_line_naming_the_known_kinds():
    with pytest.raises(ConfigError) as err:
        run_config({"data": {"kind": "nope"}, "model": MODEL})
    assert (
        str(err.value)
        == "data.kind = 'nope' is not a known data kind; known kinds: array, batches, lrb, model, store, synth, tensor"
    )
    with pytest.raises(
        ConfigError,
        match=r"^data must be a mapping with a 'kind' \(one of: array, batches, lrb, model, store, synth, tensor\)",
    ):
        run_config({"data": "quick", "model": MODEL})


def test_a_data_section_without_kind_is_the_bench_unless_it_names_a_store():
    # configs and checkpoints written before `kind` existed, exactly as they were written
    assert run_config({"data": {"preset": "tiny", "S": 0.8}, "model": MODEL}).data == lrb_preset("tiny", S=0.8)
    plain = {"n_features": 26, "n_p": 20, "S": 0.9, "M": 0.3}
    assert run_config({"data": plain, "model": MODEL}).data == LRBConfig(**plain)
    assert run_config({"data": {"kind": "lrb", "preset": "tiny"}, "model": MODEL}).data == lrb_preset("tiny")
    with pytest.raises(ConfigError, match="no activation store at"):  # parsed as a store, then its manifest is read
        run_config({"data": {"store": "/nowhere"}, "model": MODEL})


def test_an_old_checkpoint_config_json_still_validates(tmp_path):
    # the `run` record of a checkpoint written before the registry, its data section without `kind`
    old = {
        "data": {"mode": "sae", "n_features": 26, "n_p": 20, "n_r": None, "n_sources": 1, "S": 0.9, "M": 0.3},
        "model": {"n_in": 20, "n_out": 20, "in_blocks": [20], "out_blocks": [20], **MODEL},
        "train": TRAIN,
        "seed": 0,
        "device": "cpu",
    }
    config = run_config(old)
    assert isinstance(config.data, LRBConfig) and config.data.kind == "lrb"
    # and what a run writes now reads back as the same config
    result = Trainer(config, build_source(config.data), tmp_path).fit()
    saved = json.loads((result.checkpoint / "config.json").read_text())["run"]
    assert saved["data"]["kind"] == "lrb"
    assert run_config(saved) == config


def test_register_source_checks_what_it_is_given():
    with pytest.raises(TypeError, match="kind defaults to 'other'"):
        register_source("other", ToyConfig, ToySource)
    with pytest.raises(TypeError, match="must subclass sdlkit.data.DataSource"):
        register_source("toy", ToyConfig, dict)  # type: ignore[arg-type]
    assert "toy" not in SOURCES
    with pytest.raises(ValueError, match="already registered to LRBSource"):
        register_source("lrb", LRBConfig, ToySource)


def test_a_registered_source_trains_end_to_end(toy_kind, tmp_path):
    values = {"data": {"kind": toy_kind, "dim": 5}, "model": MODEL, "train": {**TRAIN, "anchors": {"count": 2}}}
    config = run_config(values)
    assert (config.model.n_in, config.model.in_blocks) == (5, [5])  # the shape came from ToyConfig.shape
    source = build_source(config.data)
    assert isinstance(source, ToySource)
    assert require_directions(source).names[:2] == ["e0", "e1"]
    with pytest.raises(ConfigError, match="no known directions"):
        require_directions(source, "labels")

    trainer = Trainer(config, source, tmp_path)
    result = trainer.fit()
    assert trainer.anchors is not None and trainer.anchors.k == 2  # from ToySource.known_directions
    # block_scales reached the checkpoint: its weights are the trained ones folded for raw rows
    saved = json.loads((result.checkpoint / "config.json").read_text())
    assert saved["run"]["data"] == {"kind": "toy", "dim": 5, "seed": 0}
    folded = fold_scales(result.model.named_tensors(), [5], [5], [2.0], [2.0])
    torch.testing.assert_close(sdlkit.load(tmp_path).W_E, folded["W_E"])
    assert run_config(saved["run"]) == config


def test_a_source_without_known_directions_or_scales_gets_the_defaults():
    class Plain(DataSource):
        n_in = n_out = 3
        in_blocks = out_blocks = [3]  # noqa: RUF012

        def batch(self, index: int, batch_size: int) -> Batch:
            x = torch.zeros(batch_size, 3)
            return Batch(x, x)

        def eval_batch(self) -> Batch:
            return self.batch(0, 4)

    assert Plain().known_directions() is None and Plain().block_scales() is None
    with pytest.raises(ConfigError, match="anchors from ground truth need"):
        require_directions(Plain(), "ground_truth")
