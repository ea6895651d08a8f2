"""What a data source is: the (x_p, x_r) batch interface every trainer consumes, and the registry of sources.

A batch is a pair: x_p is what the encoder reads [batch, n_in], x_r what the decoder must
reconstruct [batch, n_out]. SAE: x_r is x_p. Transcoder: x_r is the MLP output for x_p.
Crosscoder: both are concatenations of m sources; `in_blocks`/`out_blocks` give the source widths.

Sources are random-access by batch index, so a stream position is one integer: resuming a run
or splitting a stream across ranks needs no replay.

The `data:` section of a run config names its source by `kind`; `register_source` maps a kind to its
config class and its source class, `data_config` validates a section through that map (a discriminated
union whose members register themselves), and `build_source` builds the source. Adding a data source
touches three files:

1. its module (or package, as `src/sdlkit/data/synth/`): a config class (a `DataConfig` with
   `kind: Literal["synth"] = "synth"` and `shape()`), a source class (a `DataSource`: `n_in`, `n_out`,
   `in_blocks`, `out_blocks`, `batch`, `eval_batch`, and `known_directions` / `block_scales` when it has
   them), and at its end `register_source("synth", SynthConfig, SynthSource)`;
2. `src/sdlkit/config.py`: one import line (as `from sdlkit.data import synth`, which registers kind "synth"),
   so that every run config can name it;
3. its test, e.g. `tests/test_synth.py`.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

import torch
from pydantic import BaseModel, ValidationError

from sdlkit.errors import STRICT_CONFIG, ConfigError, describe_validation_error

DirectionKind = Literal["auto", "ground_truth", "labels"]
"""Which known directions to take: the bench's ground truth, a labelled store's class means, or 'auto'
(whichever the source has)."""


@dataclass(frozen=True)
class Batch:
    """One training or evaluation batch. For an SAE `x_r` is the same tensor as `x_p`."""

    x_p: torch.Tensor
    x_r: torch.Tensor

    def __len__(self) -> int:
        return self.x_p.shape[0]


@dataclass
class KnownDirections:
    """W_p [n_in, n]: input directions as columns; W_r [n_out, n]: output directions; names [n]."""

    W_p: torch.Tensor
    W_r: torch.Tensor
    names: list[str]
    kind: Literal["ground_truth", "labels"]


@dataclass(frozen=True)
class BlockScales:
    """The factor each input block (`inputs`) and each output block (`outputs`) of raw activations is
    multiplied by before it reaches the trainer; `sdlkit.store.fold_scales` undoes them in the weights."""

    inputs: list[float]
    outputs: list[float]


@dataclass(frozen=True)
class DataShape:
    """The widths a source produces: n_in = sum(in_blocks), n_out = sum(out_blocks)."""

    n_in: int
    n_out: int
    in_blocks: list[int]
    out_blocks: list[int]


class DataSource(ABC):
    """Anything the trainer can train on. `batch` and `eval_batch` are required; a source that knows
    directions (ground truth, class means) or rescales its data says so by overriding the defaults."""

    n_in: int
    n_out: int
    in_blocks: list[int]
    out_blocks: list[int]

    @abstractmethod
    def batch(self, index: int, batch_size: int) -> Batch:
        """The `index`-th training batch; the same (index, batch_size) always gives the same batch."""

    @abstractmethod
    def eval_batch(self) -> Batch:
        """The fixed held-out evaluation set."""

    def known_directions(self, kind: DirectionKind = "auto") -> KnownDirections | None:
        """The directions of `kind` that this source knows (what anchors pin latents to and what recovery
        is scored against); None when it has none of that kind."""
        return None

    def block_scales(self) -> BlockScales | None:
        """The per-block factors applied to raw activations; None when batches are raw."""
        return None


class DataConfig(BaseModel):
    """Base of every data section: `kind` names the registered source (subclasses set it to a Literal)."""

    model_config = STRICT_CONFIG

    kind: str

    def shape(self) -> DataShape:
        """The widths the source of this config will produce (without building it)."""
        raise NotImplementedError

    @classmethod
    def from_dict(cls, values: Mapping[str, Any], *, root: str = "data") -> DataConfig:
        """Validate `values`; any problem becomes a one-line ConfigError naming `root`.field."""
        try:
            return cls.model_validate(dict(values))
        except ValidationError as err:
            raise ConfigError(describe_validation_error(err, root, cls)) from None


SOURCES: dict[str, tuple[type[DataConfig], type[DataSource]]] = {}
"""kind -> (config class, source class), filled by `register_source`."""


def apply_preset(values: Any, presets: Mapping[str, Mapping[str, Any]], what: str) -> Any:
    """A config's `{preset: NAME, **overrides}` -> the preset's settings with the overrides applied (other
    values pass through); ValueError naming the known presets for an unknown NAME."""
    if not isinstance(values, dict) or "preset" not in values:
        return values
    name = values["preset"]
    if name not in presets:
        raise ValueError(f"unknown {what} preset {name!r}; known presets: {', '.join(presets)}")
    return {**presets[name], **{k: v for k, v in values.items() if k != "preset"}}


def register_source(kind: str, config_cls: type[DataConfig], source_cls: type[DataSource]) -> None:
    """Make `kind` a data kind: a `data:` section with that kind validates as `config_cls`, and
    `build_source` builds `source_cls(config, device=device)`."""
    declared = config_cls.model_fields["kind"].default if "kind" in config_cls.model_fields else None
    if not issubclass(config_cls, DataConfig) or declared != kind:
        raise TypeError(f"{config_cls.__name__} must be a DataConfig whose kind defaults to {kind!r}")
    if not issubclass(source_cls, DataSource):
        raise TypeError(f"{source_cls.__name__} must subclass sdlkit.data.DataSource")
    if SOURCES.get(kind, (config_cls, source_cls)) != (config_cls, source_cls):
        raise ValueError(f"data kind {kind!r} is already registered to {SOURCES[kind][1].__name__}")
    SOURCES[kind] = (config_cls, source_cls)


def data_config(spec: DataConfig | Mapping[str, Any], *, root: str = "data") -> DataConfig:
    """The config class registered for `spec["kind"]`, validated (an instance passes through)."""
    if isinstance(spec, DataConfig):
        return spec
    known = ", ".join(sorted(SOURCES))
    if not isinstance(spec, Mapping) or "kind" not in spec:
        raise ConfigError(f"{root} must be a mapping with a 'kind' (one of: {known}), got {spec!r}")
    kind = spec["kind"]
    if kind not in SOURCES:
        raise ConfigError(f"{root}.kind = {kind!r} is not a known data kind; known kinds: {known}")
    return SOURCES[kind][0].from_dict(spec, root=root)


def build_source(config: DataConfig, device: str | torch.device = "cpu") -> DataSource:
    """The data source `config` describes, built by the class registered for its kind."""
    if config.kind not in SOURCES:
        raise ConfigError(
            f"data.kind = {config.kind!r} is not a known data kind; known kinds: {', '.join(sorted(SOURCES))}"
        )
    return SOURCES[config.kind][1](config, device=device)
