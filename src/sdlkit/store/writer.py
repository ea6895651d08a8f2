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

import os
from pathlib import Path

import torch

from sdlkit.errors import StoreError
from sdlkit.io import save_tensors_atomically, sha256
from sdlkit.store.append import add_labels, cast_acts, index_tensor, part_stats
from sdlkit.store.format import (
    LABEL_KEY,
    POSITION_KEY,
    SAMPLE_KEY,
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
from sdlkit.store.opening import (
    check_labels,
    check_modules,
    check_same_harvest,
    check_shard_rows,
    normalise_source,
    prepare_folder,
    resumable_manifest,
)
from sdlkit.store.stats import load_stats, recompute_stats, save_stats


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
        self._dims = manifest.dims  # module -> width, in store order
        self._names = list(self._dims)
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
        check_modules(modules)
        check_labels(labels)
        check_shard_rows(shard_rows)
        prepare_folder(folder, overwrite)
        manifest = StoreManifest(
            modules={name: ModuleInfo(dim=dim) for name, dim in modules.items()},
            dtype=dtype_name(dtype),
            stats={name: ModuleStats(mean_sq_norm=0.0) for name in modules},
            labels=None if labels is None else list(labels),
            source=normalise_source(source),
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
        check_modules(modules)
        check_same_harvest(folder, manifest, modules, source)
        if shard_rows is not None:
            check_shard_rows(shard_rows)
            manifest.shard_rows = shard_rows
        for index in range(len(manifest.shards)):
            check_shard(folder, manifest, index)
        sums, sq = load_stats(folder, manifest)
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
        part, rows = cast_acts(acts, self._dims, self._dtype)
        part[SAMPLE_KEY] = index_tensor("sample", sample, rows)
        add_labels(part, label, self.manifest.labels, rows)
        for key, value in ((TOKEN_KEY, token), (POSITION_KEY, position)):
            if key in self.manifest.provenance_keys:
                given = torch.full((rows,), -1, dtype=torch.int64) if value is None else value
                part[key] = index_tensor(key, given, rows)
        if rows and int(part[SAMPLE_KEY].min()) < self._ready_end:
            raise StoreError(
                f"append got dataset sample {int(part[SAMPLE_KEY].min())}, but samples before "
                f"{self._ready_end} are already stored or finished; rows would be duplicated"
            )
        stats = part_stats(part, self._names, self.manifest.dtype)
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
        save_tensors_atomically(path, tensors)
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
        save_stats(self.folder, self._sum, self._sum_sq, len(self.manifest.shards), rows)
        write_manifest(self.folder, self.manifest)


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
