"""ModelDataConfig: the `data:` section of a run that trains straight from a live model (data kind `model`).

The model runs in the training process over a text dataset; its activations fill a shuffle buffer and
nothing is written to disk. The options that shape the rows are the harvest's (context size, special
tokens, pooling in the module spec, sort window, dtype, visiting order), so a live run sees exactly the rows
`sdlkit harvest` would store with the same options. Validation makes the model and data paths absolute and
records the data's content fingerprint, so a resumed run is refused when the texts changed.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator, model_validator

from sdlkit.data.source import DataConfig, DataShape
from sdlkit.errors import ConfigError


class ModelDataConfig(DataConfig):
    """A live model over a text dataset: which model and modules, which texts, and how rows are batched,
    shuffled, normalised and held out."""

    kind: Literal["model"] = "model"
    """Data kind tag: activations computed by a live model as training runs."""
    model: str | list[str]
    """Hub name or local folder of the model (a list: one per source of a crosscoder)."""
    modules: list[str]
    """Module specs to record, as `sdlkit harvest --modules` takes them: `NAME`, `NAME:input`, `NAME:mean`,
    `NAME:unit-mean` (`i:` prefixes with several models)."""
    inputs: list[str] | None = None
    """Recorded modules (their keys) concatenated into x_p; default: every module."""
    targets: list[str] | None = None
    """Recorded modules concatenated into x_r; default: the inputs (an SAE)."""
    data: str
    """The texts: a .txt, .jsonl or .parquet file, or a hub dataset name."""
    text_column: str = "text"
    """The text column of .jsonl / .parquet data."""
    split: str = "train"
    """The split of a hub dataset."""
    context_size: int = Field(128, gt=0)
    """Tokens per text (longer texts are truncated)."""
    include_special: bool = False
    """Also give rows for special tokens (BOS, EOS, ...)."""
    model_batch_size: int = Field(32, gt=0)
    """Texts per forward pass of the model."""
    sort_window: int = Field(8, gt=0)
    """A unit of sort_window × model_batch_size texts runs as length-sorted passes (less padding)."""
    model_dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    """The model's dtype."""
    shuffle_seed: int | None = 0
    """Visit the texts in this seeded order (None: file order), as the harvest does."""
    trust_remote_code: bool = False
    """Run the model repository's own code."""
    shuffle_buffer: int = Field(131072, gt=0)
    """Rows held in memory for shuffling: each epoch permutes units of texts, runs the model over a window
    of about this many rows and permutes the rows inside it."""
    eval_rows: int = Field(4096, gt=0)
    """Held-out rows, never trained on: the rows of the last units of texts (at least this many)."""
    normalize: bool = False
    """Scale each module by 1/sqrt(E‖x‖²), estimated on the held-out rows; saved weights are folded back
    so a checkpoint reads raw activations."""
    seed: int = 0
    """Seeds the order of units and of rows in every epoch."""
    data_fingerprint: str | None = None
    """The texts' content fingerprint, filled in on validation; a run whose data changed is refused."""

    @field_validator("model")
    @classmethod
    def _models(cls, value: str | list[str]) -> str | list[str]:
        if isinstance(value, list):
            if not value:
                raise ValueError("model must name at least one model")
            return [_absolute_if_local(v) for v in value]
        return _absolute_if_local(value)

    @field_validator("data")
    @classmethod
    def _data(cls, value: str) -> str:
        return _absolute_if_local(value)

    @field_validator("modules")
    @classmethod
    def _modules(cls, value: list[str]) -> list[str]:
        if not value:
            raise ValueError("modules must name at least one module (e.g. [encoder.layer.2])")
        return value

    @model_validator(mode="after")
    def _fingerprint(self) -> ModelDataConfig:
        found = text_fingerprint(self.data, self.text_column, self.split)
        if self.data_fingerprint is not None and found is not None and self.data_fingerprint != found:
            raise ValueError(
                f"data: the texts in {self.data} are not those this run began with (their content fingerprint "
                "differs); train on the original texts, or start a new run folder"
            )
        self.data_fingerprint = found
        return self

    @property
    def model_names(self) -> list[str]:
        return [self.model] if isinstance(self.model, str) else list(self.model)

    def shape(self) -> DataShape:
        """The widths of the `inputs` and `targets` modules, from one small forward pass of the model."""
        dims = module_dims(tuple(self.model_names), tuple(self.modules), self.model_dtype, self.trust_remote_code)
        inputs = self.inputs or list(dims)
        targets = self.targets or inputs
        unknown = [name for name in [*inputs, *targets] if name not in dims]
        if unknown:
            raise ConfigError(f"data: module {unknown[0]!r} is not among the recorded modules: {', '.join(dims)}")
        in_blocks, out_blocks = [dims[n] for n in inputs], [dims[n] for n in targets]
        return DataShape(sum(in_blocks), sum(out_blocks), in_blocks, out_blocks)


def _absolute_if_local(name: str) -> str:
    """A path that exists (or reads as one) made absolute, so a run resumed from another folder finds it;
    a hub name as given."""
    local = Path(name).expanduser()
    if local.exists() or name.startswith((".", "/", "~")):
        return str(local.resolve())
    return name


@functools.lru_cache(maxsize=8)
def _fingerprint_of(path: str, mtime_ns: int, size: int, text_column: str, split: str) -> str | None:
    from sdlkit.harvest.datasets import open_dataset

    return open_dataset(path, text_column=text_column, split=split).fingerprint()


def text_fingerprint(data: str, text_column: str, split: str) -> str | None:
    """The content fingerprint of the texts (Dataset.fingerprint), cached per file version."""
    local = Path(data)
    stat = local.stat() if local.is_file() else None
    return _fingerprint_of(data, stat.st_mtime_ns if stat else 0, stat.st_size if stat else 0, text_column, split)


@functools.lru_cache(maxsize=8)
def module_dims(models: tuple[str, ...], modules: tuple[str, ...], dtype: str, trust: bool) -> dict[str, int]:
    """Recorded module key -> width, from a probe forward pass on the CPU (cached per model and modules)."""
    from sdlkit.harvest.forward import probe_dims
    from sdlkit.harvest.models import loaded_models, parse_modules
    from sdlkit.harvest.prepare import dummy_batch

    loaded = loaded_models(models, "cpu", dtype, trust)
    specs = parse_modules(list(modules), [m.model for m in loaded], list(models))
    probe = dummy_batch(loaded[0].model, len(loaded))
    return probe_dims(loaded, specs, probe, next(loaded[0].model.parameters()).device)
