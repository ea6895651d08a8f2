"""StoreWriter: append harvested activations to a store, one crash-safe shard at a time.

Rows are buffered on the CPU in the store dtype. At a harvest-batch boundary (`end_batch`) with at
least `shard_rows` rows buffered, they become one shard: written under a temporary name, fsynced,
renamed, and only then listed in the manifest (after `stats.safetensors`). So a crash loses at most
the buffered rows, and `progress.next_sample` always says where a resumed harvest continues.

Statistics (per module: Σx float64 [dim], Σ‖x‖² float64 []) are computed from the stored (cast)
values of each appended part, where the part lives (GPU when harvesting there), and added to the
running totals when its shard is committed, in append order: a resumed harvest continues them exactly
(bit for bit, with the same harvest batches). If a crash left `stats.safetensors` one shard ahead of
the manifest, they are recomputed from the shards (equal up to float64 rounding).
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open

from sdlkit.errors import StoreError
from sdlkit.io import save_file_checked, sha256
from sdlkit.store.format import (
    LABEL_KEY,
    MANIFEST_FILE,
    POSITION_KEY,
    RESERVED_KEYS,
    SAMPLE_KEY,
    STATS_FILE,
    TOKEN_KEY,
    ModuleInfo,
    ModuleStats,
    ShardInfo,
    StoreManifest,
    check_shard,
    dtype_name,
    read_manifest,
    shard_name,
    write_manifest,
)

_STATS_CHUNK = 16384
"""Rows converted to float64 at a time when accumulating statistics (bounds the extra memory)."""


def _fsync_path(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _save_atomically(path: Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None = None) -> None:
    """Write a safetensors file under a temporary name, fsync it, rename it into place, fsync the folder."""
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        save_file_checked(tensors, tmp, metadata)
        _fsync_path(tmp)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_path(path.parent)


def _normalise_source(source: dict[str, Any]) -> dict[str, Any]:
    """`source` as it reads back from JSON (so a resumed harvest compares like with like)."""
    if not isinstance(source, dict):
        raise StoreError(f"store source must be a dict, got {type(source).__name__}")
    try:
        return json.loads(json.dumps(source))
    except (TypeError, ValueError) as err:
        raise StoreError(f"store source must be JSON-serialisable ({err})") from None


def _row_stats(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(Σx float64 [dim], Σ‖x‖² float64 []) over the rows of x, on the CPU; computed where x lives (GPU
    when harvesting there), in fixed-size row chunks. Σ‖x‖² is finite iff every entry of x is."""
    total = torch.zeros(x.shape[1], dtype=torch.float64, device=x.device)
    total_sq = torch.zeros((), dtype=torch.float64, device=x.device)
    for start in range(0, x.shape[0], _STATS_CHUNK):
        chunk = x[start : start + _STATS_CHUNK].to(torch.float64)
        total += chunk.sum(dim=0)
        flat = chunk.reshape(-1)
        total_sq += torch.dot(flat, flat)
    return total.cpu(), total_sq.cpu()


def resumable_manifest(folder: Path) -> StoreManifest:
    """The manifest of the incomplete store at `folder`, or a StoreError saying why it cannot resume."""
    if not (folder / MANIFEST_FILE).is_file():
        raise StoreError(
            f"cannot resume {folder}: it holds no activation store ({MANIFEST_FILE} is missing); "
            "start a new harvest without --resume"
        )
    manifest = read_manifest(folder)
    if manifest.progress.complete:
        raise StoreError(
            f"cannot resume {folder}: the store is already complete ({manifest.rows} rows); "
            "use it as is, or harvest again with --overwrite"
        )
    return manifest


class StoreWriter:
    """Writes one store folder. Build with `create` (new store) or `resume` (an incomplete one).

    `next_sample`: first dataset sample not yet in a committed shard. `rows`: rows appended so far,
    committed or buffered (`committed_rows`: those in shards). `skipped`: committed skip counts.
    """

    def __init__(
        self, folder: Path, manifest: StoreManifest, sums: dict[str, torch.Tensor], sq: dict[str, torch.Tensor]
    ):
        self.folder = folder
        self.manifest = manifest
        self._names = list(manifest.modules)
        self._dtype = manifest.torch_dtype
        self._sum = sums
        self._sum_sq = sq
        # appended parts: (tensors on the CPU, per-module (Σx, Σ‖x‖²)); "ready" = of finished harvest batches
        self._ready: list[tuple[dict[str, torch.Tensor], dict[str, tuple[torch.Tensor, torch.Tensor]]]] = []
        self._ready_rows = 0
        self._ready_end = manifest.progress.next_sample  # next_sample after the last finished batch
        self._ready_skipped: dict[str, int] = {}
        self._pending: list[tuple[dict[str, torch.Tensor], dict[str, tuple[torch.Tensor, torch.Tensor]]]] = []
        self._pending_rows = 0
        self._closed = False

    # ----- opening ------------------------------------------------------------------------------
    @classmethod
    def create(
        cls,
        path: str | os.PathLike,
        modules: dict[str, int],
        dtype: torch.dtype,
        *,
        labels: list[str] | None,
        source: dict,
        shard_rows: int = 65536,
        overwrite: bool = False,
    ) -> StoreWriter:
        """Start a new, empty store at `path` (an existing non-empty folder only with overwrite=True)."""
        folder = Path(path)
        _check_modules(modules)
        if labels is not None and (not isinstance(labels, list) or not all(isinstance(x, str) for x in labels)):
            raise StoreError("store labels must be a list of label names (strings), or None for an unlabelled store")
        if not isinstance(shard_rows, int) or shard_rows < 1:
            raise StoreError(f"shard_rows = {shard_rows!r} must be a positive integer")
        if folder.exists() and not folder.is_dir():
            raise StoreError(f"cannot create a store at {folder}: it is a file; choose another path")
        if folder.is_dir() and any(folder.iterdir()):
            if not overwrite:
                raise StoreError(
                    f"{folder} already exists and is not empty; resume it (--resume), replace it (--overwrite) "
                    "or choose another folder"
                )
            if not (folder / MANIFEST_FILE).is_file():
                raise StoreError(
                    f"refusing to overwrite {folder}: it is not an activation store (no {MANIFEST_FILE}); "
                    "delete it yourself or choose another folder"
                )
            shutil.rmtree(folder)
        folder.mkdir(parents=True, exist_ok=True)
        manifest = StoreManifest(
            modules={name: ModuleInfo(dim=dim) for name, dim in modules.items()},
            dtype=dtype_name(dtype),
            stats={name: ModuleStats(mean_sq_norm=0.0) for name in modules},
            labels=None if labels is None else list(labels),
            source=_normalise_source(source),
            shard_rows=shard_rows,
        )
        sums = {name: torch.zeros(dim, dtype=torch.float64) for name, dim in modules.items()}
        sq = {name: torch.zeros((), dtype=torch.float64) for name in modules}
        writer = cls(folder, manifest, sums, sq)
        writer._commit()
        return writer

    @classmethod
    def resume(
        cls, path: str | os.PathLike, *, modules: dict[str, int], source: dict, shard_rows: int | None = None
    ) -> StoreWriter:
        """Reopen the incomplete store at `path` to append more; refuses if it was harvested differently.

        `shard_rows` (an addition to the spec) defaults to the value the store was created with.
        """
        folder = Path(path)
        manifest = resumable_manifest(folder)
        _check_modules(modules)
        stored = manifest.dims
        if list(stored.items()) != list(modules.items()):
            raise StoreError(
                f"cannot resume {folder}: the store holds modules {stored} but this harvest asks for "
                f"{dict(modules)}; use the same modules, or harvest into a new folder"
            )
        source = _normalise_source(source)
        if source != manifest.source:
            differences = _differences(manifest.source, source)
            raise StoreError(
                f"cannot resume {folder}: the harvest settings differ ({differences}); "
                "resume with the same settings, or harvest into a new folder"
            )
        if shard_rows is not None:
            if not isinstance(shard_rows, int) or shard_rows < 1:
                raise StoreError(f"shard_rows = {shard_rows!r} must be a positive integer")
            manifest.shard_rows = shard_rows
        for index in range(len(manifest.shards)):
            check_shard(folder, manifest, index)
        sums, sq = _load_stats(folder, manifest)
        return cls(folder, manifest, sums, sq)

    # ----- state --------------------------------------------------------------------------------
    @property
    def next_sample(self) -> int:
        """First dataset sample not yet in a committed shard (where a resumed harvest would continue)."""
        return self.manifest.progress.next_sample

    @property
    def committed_rows(self) -> int:
        return self.manifest.rows

    @property
    def rows(self) -> int:
        """Rows appended so far: committed plus buffered."""
        return self.manifest.rows + self._ready_rows + self._pending_rows

    @property
    def skipped(self) -> dict[str, int]:
        return dict(self.manifest.progress.skipped)

    @property
    def labels(self) -> list[str] | None:
        return self.manifest.labels

    # ----- writing ------------------------------------------------------------------------------
    def append(
        self,
        acts: dict[str, torch.Tensor],
        sample: torch.Tensor,
        label: torch.Tensor | None = None,
        token: torch.Tensor | None = None,
        position: torch.Tensor | None = None,
    ) -> None:
        """Buffer r rows: acts[name] [r, dim] for every module, sample int64 [r], label int64 [r] if labelled,
        and each row's provenance: token id and position within its sample, int64 [r] (default -1: a row
        that stands for a whole sample). A version-1 store (resumed) keeps no provenance."""
        self._check_open()
        part, rows = self._cast_acts(acts)
        part[SAMPLE_KEY] = self._index_tensor("sample", sample, rows)
        self._add_labels(part, label, rows)
        for key, value in ((TOKEN_KEY, token), (POSITION_KEY, position)):
            if key in self.manifest.provenance_keys:
                given = torch.full((rows,), -1, dtype=torch.int64) if value is None else value
                part[key] = self._index_tensor(key, given, rows)
        if rows and int(part[SAMPLE_KEY].min()) < self._ready_end:
            raise StoreError(
                f"append got dataset sample {int(part[SAMPLE_KEY].min())}, but samples before "
                f"{self._ready_end} are already stored or finished; rows would be duplicated"
            )
        stats = self._part_stats(part)
        if rows:
            for name in self._names:
                part[name] = part[name].to("cpu").contiguous()
            self._pending.append((part, stats))
            self._pending_rows += rows

    def end_batch(self, next_sample: int, skipped: dict[str, int] | None = None) -> None:
        """Close a harvest batch: every sample below `next_sample` is done. Writes a shard when
        >= shard_rows rows are buffered. `skipped`: counts skipped in THIS batch, added to the totals."""
        self._check_open()
        if int(next_sample) < self._ready_end:
            raise StoreError(
                f"end_batch(next_sample={next_sample}) goes backwards: the last batch ended at {self._ready_end}"
            )
        if self._pending:
            top = max(int(part[SAMPLE_KEY].max()) for part, _ in self._pending)
            if top >= next_sample:
                raise StoreError(
                    f"end_batch(next_sample={next_sample}) but rows of dataset sample {top} were "
                    "appended in this batch; next_sample must be past every appended sample"
                )
        for reason, count in (skipped or {}).items():
            self._ready_skipped[reason] = self._ready_skipped.get(reason, 0) + int(count)
        self._ready.extend(self._pending)
        self._ready_rows += self._pending_rows
        self._pending, self._pending_rows = [], 0
        self._ready_end = int(next_sample)
        if self._ready_rows >= self.manifest.shard_rows:
            self._write_shard()
            self._commit()

    def close(self, complete: bool = True) -> StoreManifest:
        """Flush the buffered rows and write the manifest. complete=False leaves the store resumable and
        drops rows of a batch that `end_batch` did not close (a resumed harvest redoes that batch);
        complete=True ends such a batch after its last appended sample. Closing twice is harmless."""
        if self._closed:
            return self.manifest.model_copy(deep=True)
        if self._pending:
            if complete:
                self.end_batch(max(int(part[SAMPLE_KEY].max()) for part, _ in self._pending) + 1)
            else:
                self._pending, self._pending_rows = [], 0
        if self._ready:
            self._write_shard()
        self.manifest.progress.next_sample = self._ready_end
        self._merge_skipped()
        self.manifest.progress.complete = bool(complete)
        self._commit()
        self._closed = True
        return self.manifest.model_copy(deep=True)

    def __enter__(self) -> StoreWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        """An exception leaves the store resumable (complete=False); a normal exit completes it."""
        self.close(complete=exc_type is None)

    # ----- internals ----------------------------------------------------------------------------
    def _check_open(self) -> None:
        if self._closed:
            raise StoreError(f"the store writer for {self.folder} is closed; reopen it with StoreWriter.resume")

    @staticmethod
    def _index_tensor(what: str, value: torch.Tensor, rows: int) -> torch.Tensor:
        if not isinstance(value, torch.Tensor) or value.shape != (rows,):
            shape = tuple(value.shape) if isinstance(value, torch.Tensor) else type(value).__name__
            raise StoreError(f"{what} has shape {shape}; the store needs one int64 per row: [{rows}]")
        if value.is_floating_point() or value.is_complex() or value.dtype == torch.bool:
            raise StoreError(f"{what} has dtype {value.dtype}; the store needs integer ids (int64)")
        return value.detach().to("cpu", torch.int64).contiguous()

    def _cast_acts(self, acts: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], int]:
        """Every module's activations [rows, dim] in the store dtype (cast where they live: a GPU's copy to the
        CPU is then halved), and the row count; StoreError on a missing or unexpected module or a bad shape."""
        missing = [name for name in self._names if name not in acts]
        extra = [name for name in acts if name not in self.manifest.modules]
        if missing or extra:
            raise StoreError(
                f"append got modules {list(acts)}; the store holds {self._names} (missing {missing}, "
                f"unexpected {extra})"
            )
        rows = None
        part: dict[str, torch.Tensor] = {}
        for name in self._names:
            x = acts[name]
            dim = self.manifest.modules[name].dim
            if not isinstance(x, torch.Tensor) or x.ndim != 2 or x.shape[1] != dim:
                shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
                raise StoreError(f"activations of module {name!r} have shape {shape}; the store needs [rows, {dim}]")
            if rows is None:
                rows = x.shape[0]
            elif x.shape[0] != rows:
                raise StoreError(
                    f"module {name!r} has {x.shape[0]} rows but {self._names[0]!r} has {rows}; "
                    "every module needs one row per token"
                )
            part[name] = x.detach().to(self._dtype)
        assert rows is not None
        return part, rows

    def _add_labels(self, part: dict[str, torch.Tensor], label: torch.Tensor | None, rows: int) -> None:
        """Check `label` against the store (given iff it is labelled, ids in range) and add it to `part`."""
        if self.manifest.labels is None:
            if label is not None:
                raise StoreError("append got labels but the store was created unlabelled (labels=None)")
            return
        if label is None:
            raise StoreError("append got no labels but the store is labelled; pass label int64 [rows]")
        part[LABEL_KEY] = self._index_tensor("label", label, rows)
        n_labels = len(self.manifest.labels)
        if rows and (part[LABEL_KEY].min() < 0 or part[LABEL_KEY].max() >= n_labels):
            raise StoreError(
                f"labels must be label ids in [0, {n_labels}); got values in "
                f"[{int(part[LABEL_KEY].min())}, {int(part[LABEL_KEY].max())}]"
            )

    def _part_stats(self, part: dict[str, torch.Tensor]) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        """Per module (Σx, Σ‖x‖²) of the stored values; StoreError naming the first sample with NaN or inf."""
        stats = {}
        for name in self._names:
            stats[name] = _row_stats(part[name])
            if not torch.isfinite(stats[name][1]):  # only then look for the row (isfinite is slow on CPUs)
                first = int((~torch.isfinite(part[name]).all(dim=1)).nonzero()[0, 0])
                raise StoreError(
                    f"module {name!r} has NaN or inf activations (as {self.manifest.dtype}) for dataset sample "
                    f"{int(part[SAMPLE_KEY][first])}; skip that sample, or harvest in float32 if float16 overflowed"
                )
        return stats

    def _merge_skipped(self) -> None:
        totals = self.manifest.progress.skipped
        for reason, count in self._ready_skipped.items():
            totals[reason] = totals.get(reason, 0) + count
        self._ready_skipped = {}

    def _write_shard(self) -> None:
        """Turn the finished batches' rows into the next shard file and account for it in the manifest."""
        keys = [*self._names, SAMPLE_KEY] + ([LABEL_KEY] if self.manifest.labels is not None else [])
        keys += self.manifest.provenance_keys
        tensors = {key: torch.cat([part[key] for part, _ in self._ready]) for key in keys}
        index = len(self.manifest.shards)
        path = self.folder / shard_name(index)
        _save_atomically(path, tensors)
        for _, stats in self._ready:  # in append order, so a resumed harvest continues the sums exactly
            for name, (total, total_sq) in stats.items():
                self._sum[name] += total
                self._sum_sq[name] += total_sq
        rows = self._ready_rows
        self.manifest.shards.append(
            ShardInfo(
                file=path.name,
                rows=rows,
                bytes=path.stat().st_size,
                sha256=sha256(path),
                first_sample=self.manifest.progress.next_sample,
                end_sample=self._ready_end,
            )
        )
        self.manifest.rows += rows
        self.manifest.progress.next_sample = self._ready_end
        self._merge_skipped()
        self._ready, self._ready_rows = [], 0

    def _commit(self) -> None:
        """Save statistics, then the manifest (both atomically): the manifest never lists a shard whose
        statistics are not saved."""
        rows = self.manifest.rows
        for name in self._names:
            mean = float(self._sum_sq[name]) / rows if rows else 0.0
            self.manifest.stats[name] = ModuleStats(mean_sq_norm=mean)
        _save_atomically(
            self.folder / STATS_FILE,
            _stats_tensors(self._sum, self._sum_sq),
            metadata={"shards": str(len(self.manifest.shards)), "rows": str(rows)},
        )
        write_manifest(self.folder, self.manifest)


def _check_modules(modules: dict[str, int]) -> None:
    if not isinstance(modules, dict) or not modules:
        raise StoreError("a store needs at least one module: modules = {name: dim, ...}")
    for name, dim in modules.items():
        if not isinstance(name, str) or not name or name in RESERVED_KEYS:
            raise StoreError(f"module name {name!r} is not allowed (empty, or reserved: {', '.join(RESERVED_KEYS)})")
        if not isinstance(dim, int) or isinstance(dim, bool) or dim < 1:
            raise StoreError(f"module {name!r} has dim {dim!r}; a positive integer is needed")


def _differences(stored: dict[str, Any], given: dict[str, Any]) -> str:
    """'key: store has A, this harvest has B; ...' for every top-level key that differs."""
    parts = []
    for key in [*stored, *(k for k in given if k not in stored)]:
        a, b = stored.get(key, "<unset>"), given.get(key, "<unset>")
        if a != b:
            parts.append(f"{key}: store has {json.dumps(a)}, this harvest has {json.dumps(b)}")
    return "; ".join(parts)


def _stats_tensors(sums: dict[str, torch.Tensor], sq: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    out = {}
    for name in sums:
        out[f"{name}.sum"] = sums[name].clone()
        out[f"{name}.sum_sq_norm"] = sq[name].clone()
    return out


def _load_stats(folder: Path, manifest: StoreManifest) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """The running sums of the committed shards: from stats.safetensors when it matches the manifest,
    else recomputed from the shards (a crash between the two writes leaves the stats one shard ahead)."""
    path = folder / STATS_FILE
    try:
        with safe_open(str(path), framework="pt") as handle:
            meta = handle.metadata() or {}
            if meta.get("shards") == str(len(manifest.shards)) and meta.get("rows") == str(manifest.rows):
                sums = {name: handle.get_tensor(f"{name}.sum") for name in manifest.modules}
                sq = {name: handle.get_tensor(f"{name}.sum_sq_norm") for name in manifest.modules}
                return sums, sq
    except (SafetensorError, OSError, ValueError, RuntimeError):
        pass  # missing or damaged: recompute below
    return recompute_stats(folder, manifest)


def recompute_stats(
    folder: str | Path, manifest: StoreManifest
) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """Per module (Σx, Σ‖x‖²) float64 over the manifest's shards (the writer's sums up to float64 rounding)."""
    folder = Path(folder)
    names = list(manifest.modules)
    sums = {name: torch.zeros(dim, dtype=torch.float64) for name, dim in manifest.dims.items()}
    sq = {name: torch.zeros((), dtype=torch.float64) for name in names}
    for info in manifest.shards:
        with safe_open(str(folder / info.file), framework="pt") as handle:
            tensors = {name: handle.get_tensor(name) for name in names}
        for name in names:
            total, total_sq = _row_stats(tensors[name])
            sums[name] += total
            sq[name] += total_sq
    return sums, sq


def truncate_store(path: str | os.PathLike, keep: int) -> StoreManifest:
    """Drop shards `keep` and later from the store at `path` (e.g. a damaged one) and mark it
    incomplete, so a harvest with --resume re-creates them. Statistics are recomputed."""
    folder = Path(path)
    manifest = read_manifest(folder)
    if not 0 <= keep <= len(manifest.shards):
        raise StoreError(f"keep = {keep} must be between 0 and the store's {len(manifest.shards)} shards")
    manifest.shards = manifest.shards[:keep]
    manifest.rows = sum(info.rows for info in manifest.shards)
    manifest.progress.next_sample = manifest.shards[-1].end_sample if manifest.shards else 0
    manifest.progress.complete = False
    for index in range(keep):
        check_shard(folder, manifest, index)
    sums, sq = recompute_stats(folder, manifest)
    writer = StoreWriter(folder, manifest, sums, sq)
    writer._commit()
    writer._closed = True
    return manifest.model_copy(deep=True)
