"""Validated run configs: data + model (with its method) + training, from YAML and `--set` overrides.

Every bad value becomes a one-line `ConfigError` naming the field, the value and what is allowed.
"""

from __future__ import annotations

import copy
import dataclasses
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, Field, SerializeAsAny, ValidationError, field_validator, model_validator

# The built-in data kinds register themselves when imported. They are imported here, where a `data:` section
# becomes a config class, because every run config passes through this module and it sits above both: data/
# cannot import the store, which builds on data/ (a new kind adds its line here).
from sdlkit import store  # noqa: F401  (registers kind "store")
from sdlkit.core.model import ModelConfig
from sdlkit.data import (
    array,  # noqa: F401  (registers kinds "array", "tensor" and "batches")
    lrb,  # noqa: F401  (registers kind "lrb")
    synth,  # noqa: F401  (registers kind "synth")
)
from sdlkit.data.source import DataConfig, data_config
from sdlkit.devices import resolve_device
from sdlkit.errors import STRICT_CONFIG, ConfigError, describe_validation_error
from sdlkit.harvest import source as _model_source  # noqa: F401  (registers kind "model")

RESAMPLE_SEED_OFFSET = 1_000_003
"""Resampling at step t draws from a generator seeded with seed + this + t: no state to save."""


class ResampleConfig(BaseModel):
    """Dead-latent resampling (Towards Monosemanticity): at each scheduled step, every dead latent gets
    a new decoder column (the normalised residual of an input drawn with probability ∝ loss²), a new
    encoder row (that input's direction at 0.2 × the mean alive encoder norm), b_E = 0, and its
    optimiser state reset."""

    model_config = STRICT_CONFIG

    every_steps: int = Field(1000, gt=0)
    """Resample at steps every_steps, 2·every_steps, … (Anthropic: every 25,000 steps)."""
    stop_step: int | None = Field(None, ge=0)
    """No resampling at or after this step (Anthropic stop halfway); None = until the end."""
    n_inputs: int = Field(8192, gt=0)
    """Inputs scored by loss to draw the new directions from (taken from the training stream)."""
    encoder_scale: float = Field(0.2, gt=0)
    """New encoder rows get this times the mean norm of the alive rows."""


class AnchorConfig(BaseModel):
    """Feature anchoring (paper section 4): the first `count` latents are pulled toward known
    directions by λ_anchor · (‖W_E[:k] − Ã‖² + ‖W_D[:, :k] − B̃‖²), or held there (`mode: hard`)."""

    model_config = STRICT_CONFIG

    count: int = Field(gt=0)
    """k, the number of anchored latents (paper: 100 of 1000 features on the bench, 30 on CLIP)."""
    weight: float = Field(0.1, ge=0)
    """λ_anchor (paper: 0.1 on the bench ablations, 1.0 on CLIP). Under Adam a coordinate moves at
    most ~lr per step whatever λ is, so λ sets the balance with the other terms, not the speed."""
    mode: Literal["soft", "hard"] = "soft"
    """'soft': the paper's penalty; 'hard': anchored rows and columns fixed to the anchors."""
    seed: int = 0
    """Which features (or classes) become anchors: a random subset drawn with this seed."""
    source: Literal["auto", "ground_truth", "labels", "file"] = "auto"
    """Where the anchors come from: the bench's ground-truth features, the class means of a labelled
    activation store (paper eq. 23–24), or a safetensors file of directions (`file`, e.g. from `sdlkit
    anchors discover`); 'auto' takes whichever the data has."""
    file: str | None = None
    """source 'file' only: the anchors file (its first `count` directions). `sdlkit train` loads it and passes
    the anchors to the Trainer; a Python caller passes `anchors=train.anchoring.load_anchors(file, count)`."""
    clip_pull: bool = False
    """Soft mode: whether gradient clipping (train.grad_clip) also counts and scales the anchors' pull. By
    default it does not: anchored rows start far from their anchors, and their early pull inflates the clipped
    norm enough to shrink every other gradient (benchmarks/README.md, "Why anchoring lowered the other
    features' recovery"). True counts it, to reproduce records made that way."""
    file_sha256: str | None = None
    """source 'file' only: the file's SHA-256 (`sdlkit train --anchors-from FILE` records it), so a run
    resumed with a changed file is refused."""

    @model_validator(mode="after")
    def _file(self) -> AnchorConfig:
        if (self.source == "file") != (self.file is not None):
            raise ValueError("train.anchors.file is set exactly when train.anchors.source is 'file'")
        if self.file_sha256 is not None and self.file is None:
            raise ValueError("train.anchors.file_sha256 needs train.anchors.file")
        return self


class TrainConfig(BaseModel):
    """Optimiser, schedules, logging and checkpoints."""

    model_config = STRICT_CONFIG

    steps: int = Field(1000, gt=0)
    """Optimiser steps."""
    batch_size: int = Field(4096, gt=0)
    """Rows per optimiser step (split across ranks under torchrun)."""
    lr: float = Field(4e-4, gt=0)
    """Adam's peak learning rate (after warm-up, before decay)."""
    betas: tuple[float, float] = Field((0.9, 0.999), strict=False)
    """Adam's (β1, β2); a YAML or JSON list is fine."""
    adam_eps: float = Field(1e-8, gt=0)
    """Adam's ε, added to the root of the second-moment estimate."""
    lr_warmup_steps: int = Field(0, ge=0)
    """Linear learning-rate warm-up from 0."""
    lr_decay: Literal["none", "linear", "cosine"] = "linear"
    """Shape of the decay to 0 that starts at `lr_decay_start` (Anthropic: linear over the last 20%)."""
    lr_decay_start: float = Field(0.8, ge=0, le=1)
    """Fraction of `steps` after which the learning rate decays."""
    grad_clip: float | None = Field(1.0, gt=0)
    """Clip the global gradient norm to this; None = no clipping."""
    precision: Literal["fp32", "bf16"] = "fp32"
    """'bf16' runs forward and loss under bf16 autocast (weights and optimiser stay float32)."""
    dead_window: int = Field(1_000_000, gt=0)
    """A latent is dead if it has not fired on any of the last `dead_window` training samples."""
    resample: ResampleConfig | None = None
    """Dead-latent resampling schedule; None = off."""
    anchors: AnchorConfig | None = None
    """Feature anchoring; None = off. From the data's ground truth unless the Trainer is given anchors."""
    log_every: int = Field(50, gt=0)
    """Steps between metrics-log lines (and progress-bar updates)."""
    eval_every: int | None = Field(None, gt=0)
    """Steps between held-out evaluations (eval_fvu, eval_l0, eval_never_fired_fraction in that step's log
    line), a multiple of log_every; None = at every log line. The last step is always evaluated."""
    tensorboard: bool = False
    """Also write every logged value as TensorBoard events into RUN/tensorboard/ (the `tensorboard` extra)."""
    checkpoint_every: int | None = Field(None, gt=0)
    """Steps between checkpoints; the final step is always checkpointed."""
    keep_checkpoints: int = Field(2, ge=1)
    """Finished checkpoints kept in the run folder (the oldest are deleted)."""
    progress: bool = True
    """Show a progress bar."""

    @field_validator("betas")
    @classmethod
    def _betas(cls, value: tuple[float, float]) -> tuple[float, float]:
        if not all(0 <= b < 1 for b in value):
            raise ValueError(f"Adam betas must each be in [0, 1), got {list(value)}")
        return value

    @model_validator(mode="after")
    def _eval_every(self) -> TrainConfig:
        if self.eval_every is not None and self.eval_every % self.log_every:
            raise ValueError(
                f"train.eval_every = {self.eval_every} must be a multiple of train.log_every = {self.log_every}"
            )
        return self


class RunConfig(BaseModel):
    """Everything one training run needs; saved whole in every checkpoint's config.json."""

    model_config = STRICT_CONFIG

    data: SerializeAsAny[DataConfig]
    """The data, by `kind`: a registered data source (see sdlkit.data.source; `sdlkit config show --data KIND`
    lists a kind's fields). Without `kind`, a section is a store when it names one (`{store: PATH}`), else the
    Linear Representation Bench (`{preset: quick}` plus any overrides)."""
    model: ModelConfig
    """The dictionary: its width, constraints and method."""
    train: TrainConfig = Field(default_factory=TrainConfig)
    """Optimiser, schedules, logging and checkpoints."""
    seed: int = 0
    """Seeds the model's initialisation and every random choice in training (not the data's ground
    truth, which `data.seed` fixes)."""
    device: str = "cpu"
    """'cpu', 'cuda', 'cuda:N' or 'auto' (cuda when available)."""

    @field_validator("data", mode="before")
    @classmethod
    def _data(cls, value: Any) -> DataConfig:
        return data_section(value)

    @field_validator("device")
    @classmethod
    def _device(cls, value: str) -> str:
        return resolve_device(value)

    @model_validator(mode="before")
    @classmethod
    def _model_shape(cls, values: Any) -> Any:
        """Fill n_in/n_out/blocks from the data when omitted; refuse values that contradict it."""
        if not isinstance(values, dict) or not isinstance(values.get("model"), dict):
            return values
        data = data_section(values.get("data"))
        model = dict(values["model"])
        for key, value in dataclasses.asdict(data.shape()).items():
            given = model.get(key)
            if given is not None and given != value:
                raise ValueError(f"model.{key} = {given} but the data gives {value}: leave it out or make them agree")
            model[key] = value
        return {**values, "data": data, "model": model}


def data_section(value: Any) -> DataConfig:
    """A `data:` section as the config class its `kind` registered. A mapping without `kind` (written
    before kinds existed) is a store when it names one, else the bench."""
    if isinstance(value, Mapping) and "kind" not in value:
        value = {"kind": "store" if "store" in value else "lrb", **value}
    return data_config(value)


# ----- errors ------------------------------------------------------------------------------------------
def validate(model_cls: type[BaseModel], values: dict[str, Any], root: str = "") -> Any:
    """`model_cls.model_validate(values)` with errors as one-line ConfigErrors."""
    try:
        return model_cls.model_validate(values)
    except ValidationError as err:
        raise ConfigError(describe_validation_error(err, root, model_cls)) from None


# ----- YAML and overrides ----------------------------------------------------------------------------
class _YamlLoader(yaml.SafeLoader):
    """`yaml.safe_load`, but a key given twice in one mapping is an error (PyYAML keeps the last one
    silently), and `1e-3` is a float as in YAML 1.2 (PyYAML reads it as the string "1e-3")."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue
            key = self.construct_object(key_node, deep=True)
            if isinstance(key, str | int | float | bool):
                if key in seen:
                    raise yaml.constructor.ConstructorError(
                        None, None, f"key {key!r} is given twice (line {key_node.start_mark.line + 1})", None
                    )
                seen.add(key)
        return super().construct_mapping(node, deep=deep)


_YamlLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
    list("-+0123456789"),
)


def parse_yaml(text: str) -> Any:
    """YAML text as Python values (see `_YamlLoader`)."""
    return yaml.load(text, Loader=_YamlLoader)  # a SafeLoader: no arbitrary objects


def apply_override(values: dict[str, Any], assignment: str) -> None:
    """Apply one `dotted.key=value` (value parsed as YAML: numbers, booleans, lists, null) in place."""
    if "=" not in assignment:
        raise ConfigError(f"--set {assignment!r} is not key=value (e.g. --set train.lr=1e-3)")
    key, raw = assignment.split("=", 1)
    parts = key.strip().split(".")
    if not all(parts):
        raise ConfigError(f"--set {assignment!r} has an empty key part")
    try:
        value = parse_yaml(raw)
    except yaml.YAMLError:
        value = raw
    node = values
    for part in parts[:-1]:
        child = node.get(part)
        if child is None:
            child = node[part] = {}
        if not isinstance(child, dict):
            raise ConfigError(f"--set {assignment!r}: {part!r} is a value, not a section")
        node = child
    node[parts[-1]] = value


def load_yaml(path: str | os.PathLike) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist")
    try:
        values = parse_yaml(path.read_text(encoding="utf-8")) or {}
    except UnicodeDecodeError as err:
        raise ConfigError(f"config file {path} is not UTF-8 text ({err.reason} at byte {err.start})") from None
    except yaml.YAMLError as err:
        raise ConfigError(f"config file {path} is not valid YAML: {str(err).splitlines()[0]}") from None
    if not isinstance(values, dict):
        raise ConfigError(f"config file {path} must hold a mapping at the top level")
    return values


def run_config(values: dict[str, Any], overrides: list[str] = ()) -> RunConfig:
    """A validated RunConfig from a dict (e.g. loaded YAML) and `key=value` overrides."""
    values = copy.deepcopy(values)
    for assignment in overrides:
        apply_override(values, assignment)
    return validate(RunConfig, values)
