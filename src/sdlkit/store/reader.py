"""Reading a store: `ActivationStore`, a checked, memory-mapped, read-only view of its rows.

Opening checks every shard's size and header against the manifest; with `verify`, a shard's SHA-256 is
checked the first time its data are read. Rows come back in store order, as the shards hold them (module
activations in the store dtype, sample / label / token / position int64). The training view over a store
is StoreSource (sdlkit.store.source).
"""

from __future__ import annotations

import bisect
import os
from collections.abc import Iterator, Sequence
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open

from sdlkit.errors import ConfigError, StoreError
from sdlkit.io import sha256
from sdlkit.store.format import LABEL_KEY, SAMPLE_KEY, StoreManifest, check_shard, read_manifest, shard_fix


class ActivationStore:
    """A read-only view of a finished or partial store; every shard's size and header are checked on opening.

    `manifest`, `rows`, `modules` (name -> dim, in store order), `labels` (id -> name, or None),
    `offsets` (first global row of each shard, plus `rows` at the end). With `verify`, a shard's SHA-256
    is checked the first time its data are read.
    """

    def __init__(self, path: str | os.PathLike, verify: bool = True):
        self.path = Path(path)
        self.verify = verify
        self.manifest: StoreManifest = read_manifest(self.path)
        for index in range(len(self.manifest.shards)):
            check_shard(self.path, self.manifest, index)
        offsets = [0]
        for info in self.manifest.shards:
            offsets.append(offsets[-1] + info.rows)
        if offsets[-1] != self.manifest.rows:
            raise StoreError(
                f"{self.path / 'manifest.json'} is inconsistent: its shards hold {offsets[-1]} rows but it says "
                f"rows = {self.manifest.rows}; re-harvest the store"
            )
        self.offsets = offsets
        self.rows: int = self.manifest.rows
        self.modules: dict[str, int] = self.manifest.dims
        self.labels: list[str] | None = self.manifest.labels
        self._verified: set[int] = set()

    @property
    def n_shards(self) -> int:
        return len(self.manifest.shards)

    def check_modules(self, names: Sequence[str] | None, what: str = "modules") -> list[str]:
        """`names` (default: every module) as a list, or a ConfigError listing the store's modules."""
        if names is None:
            return list(self.modules)
        if isinstance(names, str):
            names = [names]
        unknown = [name for name in names if name not in self.modules]
        if unknown:
            raise ConfigError(
                f"{what} names {unknown}, not in the store {self.path}; available modules: {', '.join(self.modules)}"
            )
        return list(names)

    def mean_sq_norm(self, module: str) -> float:
        """E‖x‖² of `module` over all rows of the store (from the manifest's statistics)."""
        self.check_modules([module])
        return self.manifest.stats[module].mean_sq_norm

    # ----- reading ------------------------------------------------------------------------------
    def shard(self, i: int, modules: list[str] | None = None) -> dict[str, torch.Tensor]:
        """Shard `i`: each module [rows, dim] in the store dtype, `sample` [rows], (if labelled) `label` [rows]
        and (version 2) `token`, `position` [rows]."""
        if not 0 <= i < self.n_shards:
            raise StoreError(f"shard {i} does not exist: the store {self.path} has {self.n_shards} shards")
        return self._read_shard(i, self.check_modules(modules), 0, self.manifest.shards[i].rows)

    def read_rows(self, start: int, stop: int, modules: list[str] | None = None) -> dict[str, torch.Tensor]:
        """Rows [start, stop) in store order, across shards, like `shard` (only those rows are read)."""
        names = self.check_modules(modules)
        if not 0 <= start <= stop <= self.rows:
            raise StoreError(f"rows [{start}, {stop}) are out of range: the store {self.path} has {self.rows} rows")
        parts = []
        first = bisect.bisect_right(self.offsets, start) - 1
        for i in range(max(first, 0), self.n_shards):
            lo, hi = self.offsets[i], self.offsets[i + 1]
            if lo >= stop:
                break
            if hi > start:
                parts.append(self._read_shard(i, names, max(start, lo) - lo, min(stop, hi) - lo))
        if not parts:
            return self._empty(names)
        if len(parts) == 1:
            return parts[0]
        return {key: torch.cat([part[key] for part in parts]) for key in parts[0]}

    def iter_rows(
        self, modules: list[str] | None, batch_size: int, *, start: int = 0, stop: int | None = None
    ) -> Iterator[dict[str, torch.Tensor]]:
        """Rows [start, stop) in store order, `batch_size` at a time (the last batch may be shorter)."""
        if batch_size < 1:
            raise StoreError(f"batch_size = {batch_size} must be >= 1")
        names = self.check_modules(modules)
        stop = self.rows if stop is None else stop
        for lo in range(start, stop, batch_size):
            yield self.read_rows(lo, min(lo + batch_size, stop), names)

    def _keys(self, names: list[str]) -> list[str]:
        return [*names, SAMPLE_KEY] + ([LABEL_KEY] if self.labels is not None else []) + self.manifest.provenance_keys

    def _empty(self, names: list[str]) -> dict[str, torch.Tensor]:
        out = {name: torch.empty(0, self.modules[name], dtype=self.manifest.torch_dtype) for name in names}
        out[SAMPLE_KEY] = torch.empty(0, dtype=torch.int64)
        for key in ([LABEL_KEY] if self.labels is not None else []) + self.manifest.provenance_keys:
            out[key] = torch.empty(0, dtype=torch.int64)
        return out

    def _read_shard(self, i: int, names: list[str], lo: int, hi: int) -> dict[str, torch.Tensor]:
        info = self.manifest.shards[i]
        path = self.path / info.file
        if self.verify and i not in self._verified:
            try:
                digest = sha256(path)
            except OSError as err:
                raise StoreError(f"shard {path} cannot be read ({err}); {shard_fix(self.path, i)}") from None
            if digest != info.sha256:
                raise StoreError(
                    f"shard {path} is corrupt: its SHA-256 does not match the manifest; {shard_fix(self.path, i)}"
                )
            self._verified.add(i)
        try:
            with safe_open(str(path), framework="pt") as handle:
                return {key: handle.get_slice(key)[lo:hi].contiguous() for key in self._keys(names)}
        except (SafetensorError, OSError, ValueError, RuntimeError) as err:
            raise StoreError(f"shard {path} cannot be read ({err}); {shard_fix(self.path, i)}") from None
