"""StoreSource: the DataSource over an activation store (data kind `store`), shuffled batches for training.

It holds out the store's last rows for evaluation and streams the rest as an infinite sequence of epochs.
Each epoch permutes the training "units" (shards, or pieces of a shard of at most `shuffle_buffer` rows),
groups consecutive units into windows of at most `shuffle_buffer` rows (sdlkit.store.epochs), and permutes
the rows inside each window. Every permutation is seeded from (seed, epoch[, window]), so batch `index` is a
pure function of (seed, index, batch_size): resuming or splitting across ranks needs no replay. Only the
current window (and the next, being prefetched) is in memory.
"""

from __future__ import annotations

import bisect
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor

import torch

from sdlkit.data.source import Batch, BlockScales, DataSource, DirectionKind, KnownDirections, register_source
from sdlkit.errors import ConfigError, StoreError
from sdlkit.seeding import derive_seed
from sdlkit.store.config import StoreDataConfig
from sdlkit.store.epochs import epoch_windows, shuffle_units, train_rows
from sdlkit.store.format import LABEL_KEY
from sdlkit.store.reader import ActivationStore

_READ_CHUNK = 65536
"""Rows per read when streaming the store (class means)."""


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
        self.n_train = train_rows(store, config.eval_rows)
        self.n_eval = store.rows - self.n_train
        self._units = shuffle_units(store.offsets, self.n_train, config.shuffle_buffer)
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
            layout = epoch_windows(self._units, order, self.config.shuffle_buffer)
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
