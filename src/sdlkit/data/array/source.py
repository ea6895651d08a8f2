"""Training batches from rows a user already has: `ArraySource` (kind `array`, a file) and `TensorSource` (kind
`tensor`, a tensor in memory), both a `RowsSource`.

A RowsSource holds out the last `eval_rows` rows and streams the others in seeded shuffle windows (the store's
sdlkit.data.windows), so batch `index` is a pure function of (seed, index, batch_size) and of the rows: the
same rows give the same batches whatever holds them (a .npy, a .safetensors, a .pt, a tensor), and a resume
needs no replay. A file is read one window at a time, never whole. A row holding NaN or inf is named by its
index when it is read: the held-out rows (and the rows that estimate the normalisation) when the source is
built, a training row when its window is.
"""

from __future__ import annotations

import hashlib

import numpy as np
import torch

from sdlkit.data.array.config import NORM_SAMPLE_ROWS, ArrayDataConfig, RowsDataConfig, TensorDataConfig
from sdlkit.data.array.files import ArrayFile, check_finite, float_dtype, open_array, rows_and_width
from sdlkit.data.source import Batch, BlockScales, DataSource, register_source
from sdlkit.data.windows import ShuffledWindows, gather, shuffle_units
from sdlkit.errors import ConfigError, ShapeError, StoreError

_NORM_BLOCKS = 64
_HASH_BYTES = 1 << 24
"""Bytes of a tensor hashed per step (the copy to the CPU is this big)."""


class RowsSource(DataSource):
    """Shuffled (x_p, x_r) batches from `inputs` (rows of x_p) and `targets` (rows of x_r; None: x_r = x_p).

    `n_train` (rows streamed for training), `n_eval` (the held-out rows at the end, read when it is built),
    `in_scales`/`out_scales` (1/sqrt(E‖x‖²) with `normalize`, else 1.0)."""

    def __init__(
        self,
        settings: RowsDataConfig,
        inputs: ArrayFile,
        targets: ArrayFile | None,
        device: str | torch.device = "cpu",
        dtype: torch.dtype = torch.float32,
        *,
        prefetch: bool = True,
    ):
        if targets is not None and targets.n_rows != inputs.n_rows:
            raise ShapeError(
                f"data.targets: {targets.path} has {targets.n_rows} rows but {inputs.path} has {inputs.n_rows}; "
                "x_p and x_r must be row for row"
            )
        if settings.eval_rows >= inputs.n_rows:
            raise ConfigError(
                f"data.eval_rows = {settings.eval_rows} leaves no training rows: {inputs.path} has "
                f"{inputs.n_rows} rows; lower eval_rows"
            )
        self.config, self.inputs, self.targets = settings, inputs, targets
        self.device, self.dtype = torch.device(device), dtype
        self.n_in, self.n_out = inputs.width, (inputs if targets is None else targets).width
        self.in_blocks, self.out_blocks = [self.n_in], [self.n_out]
        self.n_train = inputs.n_rows - settings.eval_rows
        self.n_eval = settings.eval_rows
        self.in_scales = [_scale(inputs, self.n_train) if settings.normalize else 1.0]
        self.out_scales = (
            self.in_scales if targets is None or not settings.normalize else [_scale(targets, self.n_train)]
        )
        units = shuffle_units([0, inputs.n_rows], self.n_train, settings.shuffle_buffer)
        pin = self.device.type == "cuda"
        self._stream = ShuffledWindows(
            units, settings.shuffle_buffer, settings.seed, "array", self._read, pin=pin, prefetch=prefetch
        )
        x_p, x_r = self._read(self.n_train, inputs.n_rows)  # now: a NaN among them is named before training
        self._eval = self._batch([x_p], [x_r])

    def batch(self, index: int, batch_size: int) -> Batch:
        """Training rows [index·batch_size, (index+1)·batch_size) of the endless epoch stream."""
        if index < 0 or batch_size < 1:
            raise ConfigError(f"batch({index}, {batch_size}): index must be >= 0 and batch_size >= 1")
        parts_p, parts_r = self._stream.take(index * batch_size, (index + 1) * batch_size)
        return self._batch(parts_p, parts_r)

    def eval_batch(self) -> Batch:
        """The held-out rows (the last `eval_rows`), in file order."""
        return self._eval

    def block_scales(self) -> BlockScales | None:
        """`in_scales`, `out_scales` when `normalize` changed them, else None (raw rows)."""
        if self.in_scales == [1.0] and self.out_scales == [1.0]:
            return None
        return BlockScales(list(self.in_scales), list(self.out_scales))

    def _read(self, start: int, stop: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Rows [start, stop) as (x_p, x_r) in the file's dtype (x_r is x_p for an SAE); StoreError on NaN/inf."""
        x_p = check_finite(self.inputs.rows(start, stop), start, self.inputs)
        if self.targets is None:
            return x_p, x_p
        return x_p, check_finite(self.targets.rows(start, stop), start, self.targets)

    def _batch(self, parts_p: list[torch.Tensor], parts_r: list[torch.Tensor]) -> Batch:
        in_scale, out_scale = self.in_scales[0], self.out_scales[0]
        x_p = gather(parts_p, self.device, self.dtype, in_scale if in_scale != 1.0 else None)
        if self.targets is None:
            return Batch(x_p=x_p, x_r=x_p)
        return Batch(x_p=x_p, x_r=gather(parts_r, self.device, self.dtype, out_scale if out_scale != 1.0 else None))

    def close(self) -> None:
        """Stop the prefetch thread and drop the cached window."""
        self._stream.close()


def _scale(rows: ArrayFile, stop: int) -> float:
    """1/sqrt(E‖x‖²) over rows [0, stop): all of them up to NORM_SAMPLE_ROWS, else 64 evenly spaced blocks."""
    block = -(-NORM_SAMPLE_ROWS // _NORM_BLOCKS)
    if stop <= NORM_SAMPLE_ROWS:
        starts = range(0, stop, block)
    else:
        starts = [stop * i // _NORM_BLOCKS for i in range(_NORM_BLOCKS)]
    total, count = 0.0, 0
    for start in starts:
        x = check_finite(rows.rows(start, min(start + block, stop)), start, rows)
        total += x.to(torch.float64).pow(2).sum().item()
        count += x.shape[0]
    if not total > 0:
        raise StoreError(f"cannot normalize {rows.path}: its rows are all zero; set data.normalize: false")
    return (total / count) ** -0.5


def _open_recorded(path: str, key: str | None, fingerprint: str | None, what: str) -> ArrayFile:
    """The array at `path`, refused when its fingerprint is not the `fingerprint` the config recorded."""
    array = open_array(path, key, what)
    if fingerprint is not None and array.fingerprint() != fingerprint:
        raise StoreError(
            f"{what}: {path} has changed since this config recorded it (fingerprint {fingerprint[:12]}..., now "
            f"{array.fingerprint()[:12]}...): train on the file it recorded, or start a new run"
        )
    return array


class ArraySource(RowsSource):
    """The rows of an array file (`path`), and for a transcoder the rows of `targets`; see RowsSource."""

    def __init__(
        self,
        config: ArrayDataConfig,
        device: str | torch.device = "cpu",
        dtype: torch.dtype = torch.float32,
        *,
        prefetch: bool = True,
    ):
        inputs = _open_recorded(config.path, config.key, config.fingerprint, "data.path")
        targets = None
        if config.targets is not None:
            targets = _open_recorded(config.targets, config.targets_key, config.targets_fingerprint, "data.targets")
        super().__init__(config, inputs, targets, device, dtype, prefetch=prefetch)


class TensorRows(ArrayFile):
    """A tensor in memory [..., width] as rows, like an ArrayFile; `fingerprint()` hashes its whole content (once:
    the tensor must not change while it is trained on)."""

    def __init__(self, x: torch.Tensor | np.ndarray, name: str):
        x = torch.as_tensor(x).detach()
        dtype = float_dtype(x.dtype, name, "data")
        rows, width = rows_and_width(tuple(x.shape), name, "data")
        self.tensor = x.reshape(rows, width)
        self._fingerprint: str | None = None
        super().__init__(name, None, rows, width, dtype, lambda start, stop: self.tensor[start:stop].clone())

    def fingerprint(self) -> str:
        """SHA-256 of the shape, the dtype and every byte of the rows."""
        if self._fingerprint is None:
            digest = hashlib.sha256(f"{self.shape}|{self.dtype}".encode())
            step = max(1, _HASH_BYTES // (self.width * self.tensor.element_size()))
            for start in range(0, self.n_rows, step):
                part = self.tensor[start : start + step].contiguous().cpu()
                digest.update(part.view(torch.uint8).numpy().data)
            self._fingerprint = digest.hexdigest()
        return self._fingerprint


Rows = torch.Tensor | np.ndarray | TensorRows
"""Rows in memory: a tensor or a NumPy array [..., width], or one already wrapped as TensorRows."""


def _tensor_rows(x: Rows | None, name: str) -> TensorRows | None:
    return x if isinstance(x, TensorRows) or x is None else TensorRows(x, name)


def _tensor_record(inputs: TensorRows, targets: TensorRows | None) -> dict[str, object]:
    """What a TensorDataConfig records of the tensors: shape, dtype, fingerprints."""
    record = {"rows": inputs.n_rows, "width": inputs.width, "dtype": str(inputs.dtype).removeprefix("torch.")}
    record.update(fingerprint=inputs.fingerprint(), targets_width=None, targets_fingerprint=None)
    if targets is not None:
        record.update(targets_width=targets.width, targets_fingerprint=targets.fingerprint())
    return record


def tensor_config(x: Rows, targets: Rows | None = None, **settings: object) -> TensorDataConfig:
    """The `data:` section that records `x` (and `targets`): shape, dtype and content fingerprint, plus
    `settings` (normalize, shuffle_buffer, eval_rows, seed)."""
    record = _tensor_record(_tensor_rows(x, "the tensor x"), _tensor_rows(targets, "the tensor targets"))
    return TensorDataConfig.from_dict({**settings, **record, "kind": "tensor"})


class TensorSource(RowsSource):
    """The rows of a tensor in memory `x` (and of `targets` for a transcoder), checked against what `config`
    recorded (see tensor_config); see RowsSource. Built from a config alone it refuses: the tensor is not in it."""

    def __init__(
        self,
        config: TensorDataConfig,
        device: str | torch.device = "cpu",
        dtype: torch.dtype = torch.float32,
        *,
        x: Rows | None = None,
        targets: Rows | None = None,
        prefetch: bool = True,
    ):
        if x is None:
            raise ConfigError(
                "data.kind 'tensor' is a tensor in memory, not in the config: train on it from Python with "
                "sdlkit.train.fit(x, values)"
            )
        inputs, rows = _tensor_rows(x, "the tensor x"), _tensor_rows(targets, "the tensor targets")
        changed = [k for k, v in _tensor_record(inputs, rows).items() if getattr(config, k) != v]
        if changed:
            raise ConfigError(
                f"the tensors given are not the ones the config records (data.{', data.'.join(changed)} differ): "
                "pass the same tensors, or start a new run"
            )
        super().__init__(config, inputs, rows, device, dtype, prefetch=prefetch)


register_source("array", ArrayDataConfig, ArraySource)
register_source("tensor", TensorDataConfig, TensorSource)
