"""ModelSource: the DataSource over a live model (data kind `model`): activations made as training runs,
shuffled in memory, never written to disk.

The texts (in the harvest's seeded visiting order) are cut into units of sort_window × model_batch_size
texts, the harvest's steps, so each unit runs as exactly the forward passes a harvest would run and gives
exactly its rows. A tokenizer pass at start-up counts each unit's rows without running the model; the last
units (at least `eval_rows` rows) are held out. Each epoch permutes the training units, groups them into
windows of at most `shuffle_buffer` rows and permutes the rows inside each window (sdlkit.data.windows, as
for a store), every permutation seeded from (seed, epoch[, window]): batch `index` is a pure function of
(seed, index, batch_size), so a resumed run computes the same batches without replaying the stream. On a
GPU the model runs one window ahead in a background thread while the trainer works on the current one.
"""

from __future__ import annotations

import copy
import threading

import torch

from sdlkit.data.source import Batch, BlockScales, DataSource, register_source
from sdlkit.data.windows import ShuffledWindows, gather
from sdlkit.errors import ConfigError, StoreError
from sdlkit.harvest.checks import check_models
from sdlkit.harvest.config import ModelDataConfig
from sdlkit.harvest.datasets import open_dataset
from sdlkit.harvest.forward import step_rows
from sdlkit.harvest.models import loaded_models, parse_modules
from sdlkit.harvest.prepare import Preparer

_TOKENIZE_CHUNK = 4096
"""Texts per tokenizer call when counting rows."""
_FORWARD_LOCK = threading.Lock()
"""One recorded forward pass at a time: sources share loaded models, and the recording hooks are per module."""


class ModelSource(DataSource):
    """x_p = the `inputs` modules concatenated, x_r = the `targets`, computed by the model on the fly.

    `n_in`, `n_out`, `in_blocks`, `out_blocks`; `unit_rows` (int64 [units]: rows each unit of texts gives);
    `train_units` (the units this process trains on), `eval_units`; `n_train` (rows per epoch)."""

    def __init__(self, config: ModelDataConfig, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32):
        self.config, self.device, self.dtype = config, torch.device(device), dtype
        dataset = open_dataset(config.data, text_column=config.text_column, split=config.split)
        if dataset.kind != "text":
            raise ConfigError(
                f"data: {config.data} holds images; a live model reads texts (harvest images into a store instead)"
            )
        self.dataset = dataset if config.shuffle_seed is None else dataset.shuffled(config.shuffle_seed)
        names = tuple(config.model_names)
        self.loaded = list(loaded_models(names, str(self.device), config.model_dtype, config.trust_remote_code))
        check_models(self.loaded, self.dataset, config.context_size)
        self.specs = parse_modules(list(config.modules), [m.model for m in self.loaded], list(names))
        shape = config.shape()
        keys = [spec.key for spec in self.specs]
        self.inputs = config.inputs or keys
        self.targets = config.targets or self.inputs
        self._same = self.targets == self.inputs
        self.n_in, self.n_out, self.in_blocks, self.out_blocks = (
            shape.n_in,
            shape.n_out,
            shape.in_blocks,
            shape.out_blocks,
        )
        self.prepare = Preparer(
            self.loaded, self.dataset, config.context_size, config.include_special, config.model_batch_size
        )
        self.unit_size = config.model_batch_size * config.sort_window
        self.unit_rows = self._count_rows()
        self.eval_units, self.train_units = self._split_units()
        self._first_row = torch.cumsum(self.unit_rows, 0) - self.unit_rows
        self._unit_at = {int(row): u for u, row in enumerate(self._first_row.tolist())}  # first row -> unit
        self._closing = threading.Event()
        self._stream = self._windows(self.train_units)
        self._eval: Batch | None = None
        self._scales: tuple[torch.Tensor | None, torch.Tensor | None, BlockScales | None] | None = None

    # ----- units and rows ---------------------------------------------------------------------------
    def _count_rows(self) -> torch.Tensor:
        """Rows each unit gives (int64 [units]), from the tokenizer alone: one per kept token for per-token
        modules, one per text for pooled ones (the model's output shape decides, as in the harvest)."""
        n = len(self.dataset)
        per_text = torch.ones(n, dtype=torch.int64)
        if self._per_token():
            tokenizer, special = self.loaded[0].tokenizer, self.prepare.special
            counts = []
            for start in range(0, n, _TOKENIZE_CHUNK):
                texts = self.dataset.load(start, min(start + _TOKENIZE_CHUNK, n)).items
                encoded = tokenizer(
                    texts, truncation=True, max_length=self.config.context_size, padding=True, return_tensors="pt"
                )
                kept = encoded["attention_mask"].bool() & ~torch.isin(encoded["input_ids"], special)
                counts.append(kept.sum(dim=1))
            per_text = torch.cat(counts).to(torch.int64)
        units = torch.arange(n) // self.unit_size
        return torch.zeros(int(units[-1]) + 1, dtype=torch.int64).index_add_(0, units, per_text)

    def _per_token(self) -> bool:
        from sdlkit.harvest.forward import record_batch
        from sdlkit.harvest.prepare import dummy_batch

        probe = dummy_batch(self.loaded[0].model, len(self.loaded))
        records = record_batch(self.loaded, self.specs, probe, self.device)
        return any(x.ndim == 3 for x in records.values())

    def _split_units(self) -> tuple[list[int], list[int]]:
        """(held-out units, training units): the last units until they hold eval_rows rows."""
        n_units, rows, first_eval = len(self.unit_rows), 0, len(self.unit_rows)
        while first_eval > 0 and rows < self.config.eval_rows:
            first_eval -= 1
            rows += int(self.unit_rows[first_eval])
        train = [u for u in range(first_eval) if self.unit_rows[u] > 0]
        if not train or rows < self.config.eval_rows:
            raise ConfigError(
                f"data.eval_rows = {self.config.eval_rows} leaves no training rows: the {len(self.dataset)} texts of "
                f"{self.config.data} give {int(self.unit_rows.sum())} rows in {n_units} units of {self.unit_size} "
                "texts; lower eval_rows (or model_batch_size × sort_window) or give more texts"
            )
        return list(range(first_eval, n_units)), train

    @property
    def n_train(self) -> int:
        return self._stream.n_rows

    def _windows(self, units: list[int]) -> ShuffledWindows:
        """The shuffled epoch stream over `units`, each read by running the model on its texts."""
        table = [(int(self._first_row[u]), int(self.unit_rows[u])) for u in units]
        # a thread runs the model one window ahead on a GPU only: on a CPU it would share the cores the training
        # uses, and gain nothing (benchmarks/README.md, "Training from a live model")
        ahead = self.device.type == "cuda"
        return ShuffledWindows(table, self.config.shuffle_buffer, self.config.seed, "model", self._read, prefetch=ahead)

    def _read(self, start: int, stop: int) -> tuple[torch.Tensor, torch.Tensor]:
        if self._closing.is_set():  # a window being made ahead when the run ends is dropped, unit by unit
            raise _Closed
        unit = self._unit_at[start]
        assert stop - start == int(self.unit_rows[unit])  # ShuffledWindows reads whole units
        return self._run_units([unit])

    def shard(self, rank: int, world_size: int) -> ModelSource:
        """This source for rank `rank` of `world_size`: every world_size-th training unit, so each rank runs
        the model on its own texts (the held-out units stay shared)."""
        mine = self.train_units[rank::world_size]
        if not mine:
            raise ConfigError(f"{len(self.train_units)} units of texts cannot feed {world_size} ranks: give more texts")
        view = copy.copy(self)
        view._closing = threading.Event()
        view.train_units, view._stream = mine, self._windows(mine)
        return view

    # ----- the DataSource protocol --------------------------------------------------------------------
    def batch(self, index: int, batch_size: int) -> Batch:
        """Training rows [index·batch_size, (index+1)·batch_size) of the endless epoch stream."""
        if index < 0 or batch_size < 1:
            raise ConfigError(f"batch({index}, {batch_size}): index must be >= 0 and batch_size >= 1")
        parts_p, parts_r = self._stream.take(index * batch_size, (index + 1) * batch_size)
        in_scale, out_scale, _ = self._scale_vectors()
        x_p = _finish(parts_p, self.device, self.dtype, in_scale)
        return Batch(x_p, x_p if self._same else _finish(parts_r, self.device, self.dtype, out_scale))

    def eval_batch(self) -> Batch:
        """The held-out rows (the last units of texts), in text order."""
        if self._eval is None:
            x_p, x_r = self._run_units(self.eval_units)
            in_scale, out_scale, _ = self._scale_vectors(x_p, x_r)
            x_p = _finish([x_p], self.device, self.dtype, in_scale)
            x_r = x_p if self._same else _finish([x_r], self.device, self.dtype, out_scale)
            self._eval = Batch(x_p, x_r)
        return self._eval

    def block_scales(self) -> BlockScales | None:
        """Per-module factors 1/sqrt(E‖x‖²) on the held-out rows when `normalize`, else None."""
        return self._scale_vectors()[2]

    def _scale_vectors(
        self, x_p: torch.Tensor | None = None, x_r: torch.Tensor | None = None
    ) -> tuple[torch.Tensor | None, torch.Tensor | None, BlockScales | None]:
        if not self.config.normalize:
            return None, None, None
        if self._scales is None:
            if x_p is None:
                x_p, x_r = self._run_units(self.eval_units)
            names = list(dict.fromkeys([*self.inputs, *self.targets]))
            columns = {**_split(x_p, self.inputs, self.in_blocks), **_split(x_r, self.targets, self.out_blocks)}
            factor = {}
            for name in names:
                msn = float(columns[name].double().pow(2).sum(dim=1).mean())
                if not msn > 0:
                    raise StoreError(f"cannot normalize module {name!r}: its held-out rows are all zero")
                factor[name] = msn**-0.5
            ins, outs = [factor[n] for n in self.inputs], [factor[n] for n in self.targets]
            self._scales = (
                _vector(ins, self.in_blocks, self.device),
                _vector(outs, self.out_blocks, self.device),
                BlockScales(ins, outs),
            )
        return self._scales

    # ----- running the model -------------------------------------------------------------------------
    def _run_units(self, units: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        """x_p and x_r rows of `units`, in unit and text order (the model's forward passes, as a harvest's)."""
        parts_p, parts_r = [], []
        n = len(self.dataset)
        for unit in units:
            start = unit * self.unit_size
            step = self.prepare(start, min(start + self.unit_size, n))
            with _FORWARD_LOCK:
                rows = step_rows(self.loaded, self.specs, step, self.device)
            got = 0 if rows is None else len(rows[1])
            if got != int(self.unit_rows[unit]):
                raise StoreError(f"texts {start}.. gave {got} rows, not the {int(self.unit_rows[unit])} counted")
            if rows is None:
                continue
            acts = rows[0]
            parts_p.append(_concat(acts, self.inputs))
            if not self._same:
                parts_r.append(_concat(acts, self.targets))
        x_p = torch.cat(parts_p)
        return x_p, x_p if self._same else torch.cat(parts_r)

    def close(self) -> None:
        """Stop the prefetch thread (a window it is making stops at its next unit) and drop the cached window."""
        self._closing.set()
        self._stream.close()


class _Closed(Exception):
    """Raised in the prefetch thread when the source was closed while it made a window."""


def _concat(acts: dict[str, torch.Tensor], names: list[str]) -> torch.Tensor:
    return acts[names[0]] if len(names) == 1 else torch.cat([acts[name] for name in names], dim=1)


def _split(x: torch.Tensor, names: list[str], blocks: list[int]) -> dict[str, torch.Tensor]:
    return dict(zip(names, x.split(blocks, dim=1), strict=True))


def _vector(scales: list[float], blocks: list[int], device: torch.device) -> torch.Tensor:
    return torch.cat([torch.full((b,), s) for s, b in zip(scales, blocks, strict=True)]).to(device)


def _finish(
    parts: list[torch.Tensor], device: torch.device, dtype: torch.dtype, scale: torch.Tensor | None
) -> torch.Tensor:
    x = gather(parts, device, dtype, None if scale is None else scale.to(dtype))
    if not bool(torch.isfinite(x).all()):
        raise StoreError("the model gave NaN or inf activations; try data.model_dtype: float32")
    return x


register_source("model", ModelDataConfig, ModelSource)
