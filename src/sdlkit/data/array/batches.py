"""`kind: batches`: training on batches a Python program hands over (a list of tensors, a DataLoader, a function
that returns a fresh iterator), as sdlkit.train.fit records them.

The batches are read as one stream of rows: the first `eval_batches` batches are held out, the rest are cut
into the run's batch size, and the stream starts over when they run out (the next epoch). Batch `index` is
read by skipping to its rows, so a resumed run continues at the right row; it ends bit-identical to an
uninterrupted one only when the batches replay the same rows in the same order. No record of their content
is kept: the config says only that they came from Python, their widths and an optional `description`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import Literal

import torch
from pydantic import Field

from sdlkit.data.source import Batch, DataConfig, DataShape, DataSource, register_source
from sdlkit.errors import ConfigError, ShapeError

Batches = Callable[[], Iterable] | Iterable
"""A function returning a fresh iterator, or a re-iterable (a list, a DataLoader); each item a tensor x_p
[b, n_in] (an SAE; a 1-tuple holding it too) or a pair (x_p [b, n_in], x_r [b, n_out])."""


class BatchesDataConfig(DataConfig):
    """Batches from Python: what sdlkit.train.fit records of them (their widths, how many are held out)."""

    kind: Literal["batches"] = Field("batches", description="Data kind tag: batches handed over from Python.")
    n_in: int = Field(gt=0, description="Width of x_p.")
    n_out: int = Field(gt=0, description="Width of x_r (n_in for an SAE).")
    eval_batches: int = Field(1, ge=1, description="The first batches of every pass, held out for evaluation.")
    description: str | None = Field(None, description="What the batches are, in the user's words (provenance).")

    def shape(self) -> DataShape:
        """The recorded widths."""
        return DataShape(self.n_in, self.n_out, [self.n_in], [self.n_out])


def _pair(item: object) -> tuple[torch.Tensor, torch.Tensor]:
    """A batch item as (x_p, x_r) tensors [b, width]; a 1-tuple (a DataLoader over a TensorDataset) is x_p."""
    if isinstance(item, tuple | list) and len(item) == 1:
        item = item[0]
    x_p, x_r = item if isinstance(item, tuple | list) and len(item) == 2 else (item, item)
    if not (isinstance(x_p, torch.Tensor) and isinstance(x_r, torch.Tensor)):
        raise ShapeError(f"a batch must be a tensor or a pair of tensors (x_p, x_r), got {type(item).__name__}")
    if x_p.ndim != 2 or x_r.ndim != 2 or len(x_p) != len(x_r):
        raise ShapeError(f"a batch must be [b, n_in] (and [b, n_out]), got {list(x_p.shape)} and {list(x_r.shape)}")
    return x_p, x_r


def _fresh(batches: Batches) -> Iterator:
    """A new pass over `batches`; ConfigError for a one-shot iterator (it cannot be read twice)."""
    iterable = batches() if callable(batches) else batches
    iterator = iter(iterable)
    if iterator is iterable and not callable(batches):
        raise ConfigError(
            "the batches are an iterator, which can be read only once: pass a list, a DataLoader, or a function "
            "that returns a fresh iterator"
        )
    return iterator


def batches_config(batches: Batches, **settings: object) -> BatchesDataConfig:
    """The `data:` section recording `batches` (widths from the first batch) with `settings` (eval_batches,
    description)."""
    first = next(_fresh(batches), None)
    if first is None:
        raise ConfigError("the batches are empty")
    x_p, x_r = _pair(first)
    return BatchesDataConfig.from_dict({**settings, "n_in": x_p.shape[1], "n_out": x_r.shape[1], "kind": "batches"})


class BatchesSource(DataSource):
    """The rows of `batches` as training batches of any size (see the module); x_r is x_p for an SAE."""

    def __init__(
        self,
        config: BatchesDataConfig,
        device: str | torch.device = "cpu",
        dtype: torch.dtype = torch.float32,
        *,
        batches: Batches | None = None,
    ):
        if batches is None:
            raise ConfigError(
                "data.kind 'batches' are batches from Python, not in the config: train on them with "
                "sdlkit.train.fit(batches, values)"
            )
        self.config, self.batches = config, batches
        self.device, self.dtype = torch.device(device), dtype
        self.n_in, self.n_out = config.n_in, config.n_out
        self.in_blocks, self.out_blocks = [config.n_in], [config.n_out]
        self._pass: Iterator | None = None
        self._parts: list[tuple[torch.Tensor, torch.Tensor]] = []  # rows read but not yet handed out
        self._start = 0  # stream row of the first row in _parts
        self._eval: Batch | None = None

    def batch(self, index: int, batch_size: int) -> Batch:
        """Rows [index·batch_size, (index+1)·batch_size) of the stream (read from the start when they lie behind)."""
        start, stop = index * batch_size, (index + 1) * batch_size
        if self._pass is None or start < self._start:
            self._pass, self._parts, self._start = None, [], 0
        self._fill(start, stop)
        same = all(x_p is x_r for x_p, x_r in self._parts)
        rows_p = torch.cat([x_p for x_p, _ in self._parts])
        rows_r = rows_p if same else torch.cat([x_r for _, x_r in self._parts])
        lo, hi = start - self._start, stop - self._start
        rest = rows_p[hi:]
        self._parts, self._start = [(rest, rest if same else rows_r[hi:])], stop
        return self._batch(rows_p[lo:hi], rows_r[lo:hi], same)

    def eval_batch(self) -> Batch:
        """The first `eval_batches` batches, concatenated."""
        if self._eval is None:
            iterator, pairs = _fresh(self.batches), []
            for _ in range(self.config.eval_batches):
                item = next(iterator, None)
                if item is None:
                    self._ran_out()
                pairs.append(_pair(item))
            same = all(x_p is x_r for x_p, x_r in pairs)
            x_p = torch.cat([x_p for x_p, _ in pairs])
            self._eval = self._batch(x_p, x_p if same else torch.cat([x_r for _, x_r in pairs]), same)
        return self._eval

    def _fill(self, start: int, stop: int) -> None:
        """Read batches until `_parts` reach stream row `stop` (skipping whole batches before `start`), starting a
        new pass when one ends."""
        have = self._start + sum(len(x_p) for x_p, _ in self._parts)
        empty_passes = 0
        while have < stop:
            if self._pass is None:
                self._pass = _fresh(self.batches)
                for _ in range(self.config.eval_batches):
                    next(self._pass, None)
            item = next(self._pass, None)
            if item is None:
                self._pass, empty_passes = None, empty_passes + 1
                if empty_passes > 1:
                    self._ran_out()
                continue
            empty_passes = 0
            x_p, x_r = _pair(item)
            if (x_p.shape[1], x_r.shape[1]) != (self.n_in, self.n_out):
                raise ShapeError(
                    f"a batch is {x_p.shape[1]} -> {x_r.shape[1]} wide but the first was {self.n_in} -> {self.n_out}"
                )
            if not self._parts and have + len(x_p) <= start:  # wholly before the rows asked for: skip it
                self._start = have = have + len(x_p)
                continue
            self._parts.append((x_p, x_r))
            have += len(x_p)

    def _ran_out(self) -> None:
        raise ConfigError(
            f"the batches hold no rows after the {self.config.eval_batches} held out (data.eval_batches): give more"
        )

    def _batch(self, x_p: torch.Tensor, x_r: torch.Tensor, same: bool) -> Batch:
        x_p = x_p.to(self.device, self.dtype)
        return Batch(x_p=x_p, x_r=x_p if same else x_r.to(self.device, self.dtype))


register_source("batches", BatchesDataConfig, BatchesSource)
