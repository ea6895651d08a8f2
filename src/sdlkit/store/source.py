"""StoreSource: the DataSource over an activation store (data kind `store`), shuffled batches for training.

It holds out the store's last rows for evaluation and streams the rest as an infinite sequence of epochs
shuffled in windows of at most `shuffle_buffer` rows that never split a shard's unit (sdlkit.data.windows),
so batch `index` is a pure function of (seed, index, batch_size): resuming or splitting across ranks needs
no replay. Only the current window (and the next, being prefetched) is in memory.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from sdlkit.data.source import Batch, BlockScales, DataSource, DirectionKind, KnownDirections, register_source
from sdlkit.data.windows import ShuffledWindows, gather, shuffle_units
from sdlkit.errors import ConfigError, StoreError
from sdlkit.store.config import StoreDataConfig
from sdlkit.store.epochs import train_rows
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
        units = shuffle_units(store.offsets, self.n_train, config.shuffle_buffer)
        pin = self.device.type == "cuda"
        self._stream = ShuffledWindows(
            units, config.shuffle_buffer, config.seed, "store", self._read, pin=pin, prefetch=prefetch
        )
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
        parts_p, parts_r = self._stream.take(index * batch_size, (index + 1) * batch_size)
        x_p = gather(parts_p, self.device, self.dtype, self._in_vec)
        x_r = x_p if self._same else gather(parts_r, self.device, self.dtype, self._out_vec)
        return Batch(x_p=x_p, x_r=x_r)

    def eval_batch(self) -> Batch:
        """The held-out rows (the end of the store), in store order."""
        if self._eval is None:
            data = self.store.read_rows(self.n_train, self.store.rows, self._union())
            x_p = gather([self._concat(data, self.inputs)], self.device, self.dtype, self._in_vec)
            x_r = (
                x_p
                if self._same
                else gather([self._concat(data, self.targets)], self.device, self.dtype, self._out_vec)
            )
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

    def _read(self, start: int, stop: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Store rows [start, stop) as (x_p, x_r) in the store dtype on the CPU (x_r is x_p for an SAE)."""
        part = self.store.read_rows(start, stop, self._union())
        x_p = self._concat(part, self.inputs)
        return x_p, x_p if self._same else self._concat(part, self.targets)

    @staticmethod
    def _concat(data: dict[str, torch.Tensor], names: list[str]) -> torch.Tensor:
        return data[names[0]] if len(names) == 1 else torch.cat([data[name] for name in names], dim=1)

    def close(self) -> None:
        """Stop the prefetch thread and drop the cached window."""
        self._stream.close()


register_source("store", StoreDataConfig, StoreSource)
