"""The on-disk layout of an activation store: manifest model, file names, dtypes, strict manifest reading.

A store is a folder holding `manifest.json` (a `StoreManifest`), shards `shard-NNNNNN.safetensors`
(one [rows, dim] tensor per module, plus `sample` int64 [rows] and, when labelled, `label` int64 [rows];
from version 2 also `token` and `position` int64 [rows]: the row's token id and its position within its
sample, -1 for rows that stand for a whole sample) and `stats.safetensors` (per module `<name>.sum`
float64 [dim] and `<name>.sum_sq_norm` float64 []).
The manifest is the single source of truth: a shard file it does not list does not exist.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import torch
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from sdlkit.errors import StoreError, describe_validation_error
from sdlkit.io import read_json_object, write_json_atomically

FORMAT = "sdlkit-activation-store"
VERSION = 2
READABLE_VERSIONS = (1, 2)
"""Version 2 added the row provenance (`token`, `position`); version 1 stores still read (without it)."""
MANIFEST_FILE = "manifest.json"
STATS_FILE = "stats.safetensors"
SAMPLE_KEY = "sample"
LABEL_KEY = "label"
TOKEN_KEY = "token"
POSITION_KEY = "position"
RESERVED_KEYS = (SAMPLE_KEY, LABEL_KEY, TOKEN_KEY, POSITION_KEY)
"""Shard tensor names that are not modules."""

STORE_DTYPES: dict[str, torch.dtype] = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
SAFETENSORS_DTYPES = {"float32": "F32", "float16": "F16", "bfloat16": "BF16", "int64": "I64"}
"""Store dtype name -> the dtype string in a safetensors header."""


def shard_name(index: int) -> str:
    """File name of shard `index` (0-based): shard-000000.safetensors."""
    return f"shard-{index:06d}.safetensors"


def dtype_name(dtype: torch.dtype) -> str:
    """The store's name for a torch dtype (StoreError unless float32, float16 or bfloat16)."""
    for name, value in STORE_DTYPES.items():
        if value == dtype:
            return name
    raise StoreError(f"store dtype {dtype} is not supported; use one of: {', '.join(STORE_DTYPES)}")


class ModuleInfo(BaseModel):
    model_config = ConfigDict(extra="forbid")

    dim: int = Field(gt=0)
    """Width of the module's activation vector."""


class ShardInfo(BaseModel):
    model_config = ConfigDict(extra="forbid")

    file: str
    rows: int = Field(ge=0)
    bytes: int = Field(ge=0)
    sha256: str
    first_sample: int = Field(ge=0)
    """First dataset sample whose rows are in this shard (samples are never split between shards)."""
    end_sample: int = Field(ge=0)
    """One past the last dataset sample covered (harvest-batch boundary; a resume continues here)."""


class ModuleStats(BaseModel):
    model_config = ConfigDict(extra="forbid")

    mean_sq_norm: float
    """E‖x‖² over all rows of the store (0 while it has none)."""


class Progress(BaseModel):
    model_config = ConfigDict(extra="forbid")

    next_sample: int = Field(0, ge=0)
    """First dataset sample not yet in a committed shard."""
    complete: bool = False
    skipped: dict[str, int] = Field(default_factory=dict)
    """Counts of samples the harvester skipped, by reason (e.g. undecodable_images)."""


class StoreManifest(BaseModel):
    """manifest.json: what the store holds and how far the harvest got."""

    model_config = ConfigDict(extra="forbid")

    format: Literal["sdlkit-activation-store"] = FORMAT
    version: Literal[1, 2] = VERSION
    modules: dict[str, ModuleInfo]
    """Module name -> width, in the order the user listed them."""
    dtype: Literal["float32", "float16", "bfloat16"]
    rows: int = Field(0, ge=0)
    """Total rows in the listed shards."""
    shards: list[ShardInfo] = Field(default_factory=list)
    stats: dict[str, ModuleStats] = Field(default_factory=dict)
    labels: list[str] | None = None
    """Label id -> name; None when the store is unlabelled."""
    source: dict[str, Any] = Field(default_factory=dict)
    """Free-form description of what was harvested (model, data, options)."""
    progress: Progress = Field(default_factory=Progress)
    shard_rows: int = Field(65536, gt=0)
    """Rows buffered before a shard is written (an addition to the shared spec; used on resume)."""

    @property
    def torch_dtype(self) -> torch.dtype:
        return STORE_DTYPES[self.dtype]

    @property
    def dims(self) -> dict[str, int]:
        """Module name -> width, in store order."""
        return {name: info.dim for name, info in self.modules.items()}

    @property
    def provenance_keys(self) -> list[str]:
        """The per-row provenance tensors its shards hold: token and position (version 2), none (version 1)."""
        return [TOKEN_KEY, POSITION_KEY] if self.version >= 2 else []


def read_manifest(folder: str | Path) -> StoreManifest:
    """The validated manifest of the store at `folder` (StoreError naming the problem otherwise)."""
    folder = Path(folder)
    path = folder / MANIFEST_FILE
    if not folder.is_dir():
        raise StoreError(f"no activation store at {folder}: it is not a folder (harvest one first)")
    if not path.is_file():
        raise StoreError(f"{folder} is not an activation store: {MANIFEST_FILE} is missing (harvest one first)")
    raw = read_json_object(path, StoreError, "; re-harvest the store")
    if raw.get("format") != FORMAT:
        raise StoreError(f"{path} is not an activation-store manifest (format is not {FORMAT!r})")
    if raw.get("version") not in READABLE_VERSIONS:
        raise StoreError(
            f"{path} has store format version {raw.get('version')!r}; this sdlkit reads versions "
            f"{', '.join(map(str, READABLE_VERSIONS))}: re-harvest the store with this version"
        )
    try:
        return StoreManifest.model_validate(raw)
    except ValidationError as err:
        raise StoreError(f"{path} is invalid: {describe_validation_error(err, 'manifest', StoreManifest)}") from None


def write_manifest(folder: str | Path, manifest: StoreManifest) -> None:
    """Replace the manifest atomically (readers see the old one or the new one)."""
    write_json_atomically(Path(folder) / MANIFEST_FILE, manifest.model_dump(mode="json"))


def expected_tensors(manifest: StoreManifest, rows: int) -> dict[str, tuple[list[int], str]]:
    """Tensor name -> (shape, safetensors dtype) that a shard of `rows` rows must hold."""
    expected = {name: ([rows, dim], SAFETENSORS_DTYPES[manifest.dtype]) for name, dim in manifest.dims.items()}
    expected[SAMPLE_KEY] = ([rows], "I64")
    if manifest.labels is not None:
        expected[LABEL_KEY] = ([rows], "I64")
    for key in manifest.provenance_keys:
        expected[key] = ([rows], "I64")
    return expected


def shard_fix(folder: Path, index: int) -> str:
    """The one-clause fix for a broken shard `index`."""
    return (
        f"fix: drop it and later shards from the manifest (sdlkit.store.truncate_store({str(folder)!r}, {index})) "
        "and re-harvest with --resume, or harvest again with --overwrite"
    )


def check_shard(folder: str | Path, manifest: StoreManifest, index: int) -> None:
    """Check that shard `index` exists with its listed byte size and a header matching the manifest."""
    from safetensors import SafetensorError, safe_open

    folder = Path(folder)
    info = manifest.shards[index]
    path = folder / info.file
    fix = shard_fix(folder, index)
    if not path.is_file():
        raise StoreError(f"shard {path} is missing; {fix}")
    size = path.stat().st_size
    if size != info.bytes:
        raise StoreError(f"shard {path} is truncated or altered: {size} bytes, the manifest lists {info.bytes}; {fix}")
    try:
        with safe_open(str(path), framework="pt") as handle:
            header = {}
            for key in handle.keys():  # noqa: SIM118 (a safe_open handle is not a dict)
                part = handle.get_slice(key)
                header[key] = (list(part.get_shape()), part.get_dtype())
    except (SafetensorError, OSError, ValueError, RuntimeError) as err:
        raise StoreError(f"shard {path} is corrupt ({err}); {fix}") from None
    expected = expected_tensors(manifest, info.rows)
    if set(header) != set(expected):
        missing, extra = sorted(set(expected) - set(header)), sorted(set(header) - set(expected))
        raise StoreError(f"shard {path} does not match the manifest: missing {missing}, unexpected {extra}; {fix}")
    for key, (shape, dtype) in expected.items():
        if header[key] != (shape, dtype):
            raise StoreError(
                f"shard {path} does not match the manifest: {key} is {header[key][0]} {header[key][1]}, "
                f"the manifest says {shape} {dtype}; {fix}"
            )
