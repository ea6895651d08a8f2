"""StoreDataConfig: the `data:` section of a run config that trains on a harvested activation store."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, ValidationInfo, field_validator

from sdlkit.data.array.files import FORMATS
from sdlkit.data.source import DataConfig, DataShape
from sdlkit.errors import ConfigError
from sdlkit.store.format import read_manifest


class StoreDataConfig(DataConfig):
    """Which store, which modules feed x_p and x_r, and how rows are normalised, shuffled and held out."""

    kind: Literal["store"] = "store"
    """Data kind tag: an activation store on disk."""
    store: str
    """Path of the store folder (written by the harvester)."""
    inputs: list[str] | None = None
    """Modules concatenated (in this order) into x_p; default: every module of the store."""
    targets: list[str] | None = None
    """Modules concatenated into x_r; default: the inputs (an SAE; x_r is then the same tensor). A transcoder names the
    MLP output here, a crosscoder the same list as inputs."""
    normalize: bool = False
    """Scale each module by 1/sqrt(E‖x‖²) so that E‖x‖² = 1 (per module, from the store's statistics);
    sdlkit.store.fold_scales turns a model trained this way into one for raw activations."""
    shuffle_buffer: int = Field(262144, ge=1)
    """Rows held in memory for shuffling: rows are permuted within windows of about this size."""
    eval_rows: int = Field(4096, ge=1)
    """Held-out rows for evaluation, never trained on: the last rows of the store, extended back to the start of their
    first dataset sample so that no sample is split between training and evaluation."""
    seed: int = 0
    """Seeds the shard and row order of every epoch."""
    verify: bool = True
    """Check each shard's SHA-256 when it is first loaded."""

    @field_validator("store")
    @classmethod
    def _store(cls, value: str) -> str:
        if not value:
            raise ValueError("store must be the path of a store folder")
        if Path(value).suffix.lower() in FORMATS and not Path(value).is_dir():
            raise ValueError(
                f"an array file is not a store folder; train on it with data: {{kind: array, path: {value}}}"
            )
        return value

    @field_validator("inputs", "targets")
    @classmethod
    def _modules(cls, value: list[str] | None, info: ValidationInfo) -> list[str] | None:
        if value is None:
            return value
        if not value:
            raise ValueError(f"{info.field_name} must name at least one module, or be null for the default")
        repeated = sorted({name for name in value if value.count(name) > 1})
        if repeated:
            raise ValueError(f"{info.field_name} names {repeated} more than once")
        return value

    def shape(self) -> DataShape:
        """The widths of the `inputs` and `targets` modules, from the store's manifest."""
        manifest = read_manifest(self.store)
        dims = {name: spec.dim for name, spec in manifest.modules.items()}
        inputs = self.inputs or list(dims)
        targets = self.targets or inputs
        unknown = [name for name in [*inputs, *targets] if name not in dims]
        if unknown:
            raise ConfigError(
                f"data: module {unknown[0]!r} is not in the store {self.store}; it holds: {', '.join(dims)}"
            )
        in_blocks, out_blocks = [dims[n] for n in inputs], [dims[n] for n in targets]
        return DataShape(sum(in_blocks), sum(out_blocks), in_blocks, out_blocks)
