"""Reading a store: `ActivationStore` (checked, memory-mapped, read-only) and `StoreSource` (the DataSource).

`StoreSource` holds out the store's last rows for evaluation and streams the rest as an infinite
sequence of epochs. Each epoch permutes the training "units" (shards, or pieces of a shard of at most
`shuffle_buffer` rows), groups consecutive units into windows of at most `shuffle_buffer` rows, and
permutes the rows inside each window. Every permutation is seeded from (seed, epoch[, window]), so batch
`index` is a pure function of (seed, index, batch_size): resuming or splitting across ranks needs no
replay. Only the current window (and the next, being prefetched) is in memory.
"""

from __future__ import annotations

import bisect
import itertools
import os
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open

from sdlkit.data.source import Batch, BlockScales, DataSource, DirectionKind, KnownDirections, register_source
from sdlkit.errors import ConfigError, StoreError
from sdlkit.io import sha256
from sdlkit.seeding import derive_seed
from sdlkit.store.config import StoreDataConfig
from sdlkit.store.format import LABEL_KEY, SAMPLE_KEY, StoreManifest, check_shard, read_manifest, shard_fix

_READ_CHUNK = 65536
"""Rows per read when streaming the store (class means, evaluation set)."""


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


class StoreSource(DataSource):
    """The DataSource over a store: x_p = the `inputs` modules concatenated, x_r = the `targets`.

    `n_in`, `n_out`, `in_blocks`, `out_blocks` (module widths in order), `in_scales`/`out_scales` (per
    block; 1/sqrt(E‖x‖²) with `normalize`, else 1.0), `n_train` (rows streamed for training), `n_eval`
    (held-out rows at the end of the store). For an SAE (targets = inputs) x_r is the same tensor as x_p.
    """

    def __init__(
        self,
        config: StoreDataConfig,
        device: str | torch.device = "cpu",
        dtype: torch.dtype = torch.float32,
        *,
        prefetch: bool = True,
    ):
        self.config = config
        self.device = torch.device(device)
        self.dtype = dtype
        self.store = ActivationStore(config.store, verify=config.verify)
        store = self.store
        self.inputs = store.check_modules(config.inputs, "data.inputs")
        self.targets = store.check_modules(config.targets, "data.targets") if config.targets else list(self.inputs)
        self._same = self.targets == self.inputs
        self.in_blocks = [store.modules[name] for name in self.inputs]
        self.out_blocks = [store.modules[name] for name in self.targets]
        self.n_in, self.n_out = sum(self.in_blocks), sum(self.out_blocks)
        self.scales = {name: self._scale(name) for name in self._union()}
        """Module -> the factor its activations are multiplied by (1.0 unless normalize)."""
        self.in_scales = [self.scales[name] for name in self.inputs]
        self.out_scales = [self.scales[name] for name in self.targets]
        self._in_vec = self._scale_vector(self.inputs)
        self._out_vec = self._in_vec if self._same else self._scale_vector(self.targets)
        self.n_train = self._split()
        self.n_eval = store.rows - self.n_train
        self._units = self._make_units()
        self._layouts: dict[int, tuple[list[list[int]], list[int]]] = {}
        self._window_key: tuple[int, int] | None = None
        self._window: tuple[torch.Tensor, torch.Tensor] | None = None
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="store-prefetch") if prefetch else None
        self._prefetch: tuple[tuple[int, int], Future] | None = None
        self._eval: Batch | None = None

    @property
    def labels(self) -> list[str] | None:
        """Label id -> name of the store, or None when it is unlabelled."""
        return self.store.labels

    # ----- the DataSource protocol ----------------------------------------------------------------
    def batch(self, index: int, batch_size: int) -> Batch:
        """Training rows [index·batch_size, (index+1)·batch_size) of the endless epoch stream."""
        if index < 0 or batch_size < 1:
            raise ConfigError(f"batch({index}, {batch_size}): index must be >= 0 and batch_size >= 1")
        position, end = index * batch_size, (index + 1) * batch_size
        parts_p, parts_r = [], []
        while position < end:
            epoch, offset = divmod(position, self.n_train)
            _, ends = self._layout(epoch)
            window = bisect.bisect_right(ends, offset)
            window_start = ends[window - 1] if window else 0
            take = min(end - position, ends[window] - offset)
            x_p, x_r = self._window_data(epoch, window)
            lo = offset - window_start
            parts_p.append(x_p[lo : lo + take])
            if not self._same:
                parts_r.append(x_r[lo : lo + take])
            position += take
        x_p = self._finish(parts_p, self._in_vec)
        x_r = x_p if self._same else self._finish(parts_r, self._out_vec)
        return Batch(x_p=x_p, x_r=x_r)

    def eval_batch(self) -> Batch:
        """The held-out rows (the end of the store), in store order."""
        if self._eval is None:
            data = self.store.read_rows(self.n_train, self.store.rows, self._union())
            x_p = self._finish([self._concat(data, self.inputs)], self._in_vec)
            x_r = x_p if self._same else self._finish([self._concat(data, self.targets)], self._out_vec)
            self._eval = Batch(x_p=x_p, x_r=x_r)
        return self._eval

    def block_scales(self) -> BlockScales | None:
        """`in_scales`, `out_scales` when `normalize` changed any of them, else None (raw rows)."""
        if all(s == 1.0 for s in [*self.in_scales, *self.out_scales]):
            return None
        return BlockScales(list(self.in_scales), list(self.out_scales))

    def known_directions(self, kind: DirectionKind = "auto") -> KnownDirections | None:
        """A labelled store's class means (inputs -> W_p, targets -> W_r, columns named by label); None
        for an unlabelled store or when ground truth is asked for (real data have none)."""
        if kind == "ground_truth" or self.labels is None:
            return None
        mean_p, _, ids = self.class_means(self.inputs)
        mean_r = mean_p if self._same else self.class_means(self.targets, classes=ids)[0]
        names = [self.labels[i] for i in ids]
        return KnownDirections(mean_p.T.contiguous(), mean_r.T.contiguous(), names, "labels")

    # ----- class means (anchors from labelled data) -----------------------------------------------
    def class_means(
        self, modules: list[str] | None = None, classes: Sequence[int | str] | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, list[int]]:
        """Per-class mean of the training rows of `modules` concatenated (default: the inputs), scaled
        like batch(). Returns (means [C, dim_total] float32, counts [C] int64, class ids) on `device`;
        `classes` (ids or names) defaults to every label that occurs in the training rows."""
        store = self.store
        if store.labels is None:
            raise StoreError(
                f"the store {store.path} has no labels: harvest it with --label-column or from an image folder"
            )
        names = store.check_modules(modules if modules is not None else self.inputs, "class_means modules")
        n_labels = len(store.labels)
        for name in names:
            if name not in self.scales:
                self.scales[name] = self._scale(name)
        scale = torch.cat([torch.full((store.modules[n],), self.scales[n], dtype=torch.float64) for n in names])
        sums = torch.zeros(n_labels, int(scale.numel()), dtype=torch.float64)
        counts = torch.zeros(n_labels, dtype=torch.int64)
        for part in store.iter_rows(names, _READ_CHUNK, stop=self.n_train):
            x = torch.cat([part[name].to(torch.float64) for name in names], dim=1) * scale
            sums.index_add_(0, part[LABEL_KEY], x)
            counts += torch.bincount(part[LABEL_KEY], minlength=n_labels)
        ids = self._class_ids(classes, counts)
        means = sums[ids] / counts[ids, None].to(torch.float64)
        return means.to(self.device, torch.float32), counts[ids].to(self.device), ids

    def _class_ids(self, classes: Sequence[int | str] | None, counts: torch.Tensor) -> list[int]:
        labels = self.store.labels
        assert labels is not None
        if classes is None:
            return [int(i) for i in counts.nonzero().flatten()]
        ids = []
        for cls in classes:
            if isinstance(cls, str):
                if cls not in labels:
                    raise ConfigError(f"class {cls!r} is not a label of the store; labels: {', '.join(labels)}")
                cls = labels.index(cls)
            if not 0 <= int(cls) < len(labels):
                raise ConfigError(f"class id {cls} is out of range: the store has {len(labels)} labels")
            if counts[int(cls)] == 0:
                raise StoreError(f"class {labels[int(cls)]!r} (id {int(cls)}) has no training rows in the store")
            ids.append(int(cls))
        return ids

    # ----- set-up ---------------------------------------------------------------------------------
    def _scale(self, name: str) -> float:
        if not self.config.normalize:
            return 1.0
        msn = self.store.mean_sq_norm(name)
        if not msn > 0:
            raise StoreError(
                f"cannot normalize module {name!r}: its mean squared norm is {msn} (an empty or all-zero module); "
                "set data.normalize: false or re-harvest"
            )
        return msn**-0.5

    def _scale_vector(self, names: list[str]) -> torch.Tensor | None:
        """Per-column scales [width] on the device, or None when every scale is 1."""
        if all(self.scales[name] == 1.0 for name in names):
            return None
        parts = [torch.full((self.store.modules[name],), self.scales[name]) for name in names]
        return torch.cat(parts).to(self.device, self.dtype)

    def _split(self) -> int:
        """Training rows: all but the last eval_rows, moved back to the start of the boundary's sample."""
        rows, eval_rows = self.store.rows, self.config.eval_rows
        if eval_rows >= rows:
            raise ConfigError(
                f"data.eval_rows = {eval_rows} leaves no training rows: the store {self.store.path} has {rows} "
                "rows; lower eval_rows or harvest more"
            )
        boundary = rows - eval_rows
        i = bisect.bisect_right(self.store.offsets, boundary) - 1
        lo = self.store.offsets[i]
        samples = self.store.read_rows(lo, boundary + 1, [])[SAMPLE_KEY]
        differs = (samples[:-1] != samples[-1]).nonzero()
        boundary = lo + (int(differs[-1]) + 1 if len(differs) else 0)
        if boundary == 0:
            raise ConfigError(
                f"data.eval_rows = {eval_rows} leaves no training rows once whole dataset samples are held out; "
                "lower eval_rows"
            )
        return boundary

    def _make_units(self) -> list[tuple[int, int]]:
        """(first row, rows) of each shuffling unit: the training part of each shard, in pieces of at most
        shuffle_buffer rows."""
        units = []
        offsets, cap = self.store.offsets, self.config.shuffle_buffer
        for i in range(self.store.n_shards):
            lo, hi = offsets[i], min(offsets[i + 1], self.n_train)
            if hi <= lo:
                continue
            pieces = -(-(hi - lo) // cap)
            bounds = [lo + (hi - lo) * k // pieces for k in range(pieces + 1)]
            units.extend((a, b - a) for a, b in itertools.pairwise(bounds))
        return units

    def _union(self) -> list[str]:
        return list(dict.fromkeys([*self.inputs, *self.targets]))

    # ----- epochs and windows -----------------------------------------------------------------------
    def _generator(self, *parts: object) -> torch.Generator:
        return torch.Generator().manual_seed(derive_seed(self.config.seed, "store", *parts))

    def _layout(self, epoch: int) -> tuple[list[list[int]], list[int]]:
        """Epoch `epoch`: units of each window (in load order) and each window's end offset in the epoch."""
        layout = self._layouts.get(epoch)
        if layout is None:
            order = torch.randperm(len(self._units), generator=self._generator("units", epoch)).tolist()
            windows: list[list[int]] = []
            ends: list[int] = []
            rows = 0
            for unit in order:
                size = self._units[unit][1]
                if windows and rows + size <= self.config.shuffle_buffer:
                    windows[-1].append(unit)
                    rows += size
                else:
                    if windows:
                        ends.append((ends[-1] if ends else 0) + rows)
                    windows.append([unit])
                    rows = size
            ends.append((ends[-1] if ends else 0) + rows)
            layout = (windows, ends)
            if len(self._layouts) >= 2:
                self._layouts.pop(min(self._layouts))
            self._layouts[epoch] = layout
        return layout

    def _next_key(self, epoch: int, window: int) -> tuple[int, int]:
        windows, _ = self._layout(epoch)
        return (epoch, window + 1) if window + 1 < len(windows) else (epoch + 1, 0)

    def _window_data(self, epoch: int, window: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Window (epoch, window)'s rows in shuffled order, (x_p, x_r) in the store dtype on the CPU."""
        key = (epoch, window)
        if self._window_key == key:
            assert self._window is not None
            return self._window
        self._window = None  # release the old window before loading the new one
        if self._prefetch is not None and self._prefetch[0] == key:
            data = self._prefetch[1].result()
        else:
            if self._prefetch is not None:
                self._prefetch[1].cancel()
            data = self._load_window(epoch, window, self._layout(epoch)[0][window])
        self._prefetch = None
        self._window_key, self._window = key, data
        if self._pool is not None:
            following = self._next_key(epoch, window)
            units = self._layout(following[0])[0][following[1]]
            self._prefetch = (following, self._pool.submit(self._load_window, *following, units))
        return data

    def _load_window(self, epoch: int, window: int, units: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        """Read the window's units and scatter their rows to shuffled positions (seeded by epoch, window).

        Rows go straight into the window tensors (pinned when the device is a GPU), so the peak memory
        is the window plus one unit."""
        sizes = [self._units[u][1] for u in units]
        dest = torch.randperm(sum(sizes), generator=self._generator("rows", epoch, window))
        x_p = self._window_tensor(dest.numel(), self.n_in)
        x_r = x_p if self._same else self._window_tensor(dest.numel(), self.n_out)
        names = self._union()
        done = 0
        for unit, size in zip(units, sizes, strict=True):
            start = self._units[unit][0]
            part = self.store.read_rows(start, start + size, names)
            rows = dest[done : done + size]
            x_p.index_copy_(0, rows, self._concat(part, self.inputs))
            if not self._same:
                x_r.index_copy_(0, rows, self._concat(part, self.targets))
            done += size
        return x_p, x_r

    def _window_tensor(self, rows: int, width: int) -> torch.Tensor:
        pin = self.device.type == "cuda"
        return torch.empty(rows, width, dtype=self.store.manifest.torch_dtype, pin_memory=pin)

    @staticmethod
    def _concat(data: dict[str, torch.Tensor], names: list[str]) -> torch.Tensor:
        return data[names[0]] if len(names) == 1 else torch.cat([data[name] for name in names], dim=1)

    def _finish(self, parts: list[torch.Tensor], scale: torch.Tensor | None) -> torch.Tensor:
        if self.device.type == "cpu":
            x = torch.cat(parts).to(self.dtype)  # cat copies: callers never alias the cached window
        else:  # copy the (pinned) slices as they are, then concatenate and convert on the device
            x = torch.cat([part.to(self.device) for part in parts]).to(self.dtype)
        return x * scale if scale is not None else x

    def close(self) -> None:
        """Stop the prefetch thread and drop the cached window."""
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None
        self._prefetch, self._window, self._window_key = None, None, None


register_source("store", StoreDataConfig, StoreSource)
