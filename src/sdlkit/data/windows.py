"""Seeded shuffle windows over a table of rows: the endless, shuffled epoch stream that a store (kind `store`)
and an array (kinds `array`, `tensor`) train on.

The training rows are cut into "units" (pieces of at most `cap` rows that never cross a shard boundary); an
epoch visits the units in a seeded order, grouped into consecutive windows of at most `cap` rows, and
permutes the rows inside each window. Every permutation is seeded from (seed, tag, epoch[, window]), so row
`position` of the stream is a pure function of (seed, position): resuming or splitting a stream across ranks
needs no replay. Only the current window (and the next, being prefetched) is in memory.
"""

from __future__ import annotations

import bisect
import itertools
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor

import torch

from sdlkit.seeding import derive_seed

ReadRows = Callable[[int, int], tuple[torch.Tensor, torch.Tensor]]
"""(start, stop) -> (x_p, x_r) rows [stop - start, width] of the table; x_r is x_p itself when they are one."""


def shuffle_units(offsets: list[int], n_train: int, cap: int) -> list[tuple[int, int]]:
    """(first row, rows) of each shuffling unit: the training part of each shard (`offsets`: first global row
    of each shard, plus the total at the end), in pieces of at most `cap` rows."""
    units = []
    for i in range(len(offsets) - 1):
        lo, hi = offsets[i], min(offsets[i + 1], n_train)
        if hi <= lo:
            continue
        pieces = -(-(hi - lo) // cap)
        bounds = [lo + (hi - lo) * k // pieces for k in range(pieces + 1)]
        units.extend((a, b - a) for a, b in itertools.pairwise(bounds))
    return units


def epoch_windows(units: list[tuple[int, int]], order: list[int], cap: int) -> tuple[list[list[int]], list[int]]:
    """The units in `order` grouped into consecutive windows of at most `cap` rows (a unit starts a new window
    when it would not fit): each window's units (in load order) and each window's end offset in the epoch."""
    windows: list[list[int]] = []
    ends: list[int] = []
    rows = 0
    for unit in order:
        size = units[unit][1]
        if windows and rows + size <= cap:
            windows[-1].append(unit)
            rows += size
        else:
            if windows:
                ends.append((ends[-1] if ends else 0) + rows)
            windows.append([unit])
            rows = size
    ends.append((ends[-1] if ends else 0) + rows)
    return windows, ends


def gather(parts: list[torch.Tensor], device: torch.device, dtype: torch.dtype, scale: object = None) -> torch.Tensor:
    """The parts (slices of a window) concatenated on `device` in `dtype`, times `scale` (a number or a [width]
    tensor) when given: a new tensor, never a view of the window."""
    # cat copies, so callers never alias the window; off the CPU, the (pinned) slices are copied as they are first
    x = torch.cat(parts if device.type == "cpu" else [part.to(device) for part in parts]).to(dtype)
    return x * scale if scale is not None else x


class ShuffledWindows:
    """The endless stream of `units`' rows, epoch after epoch, shuffled in windows of at most `cap` rows.

    `read(start, stop)` gives rows of the table (see ReadRows); `seed` and `tag` seed every permutation;
    `pin` pins the window tensors (for copies to a GPU); `prefetch` reads the next window in a thread."""

    def __init__(
        self,
        units: list[tuple[int, int]],
        cap: int,
        seed: int,
        tag: str,
        read: ReadRows,
        *,
        pin: bool = False,
        prefetch: bool = True,
    ):
        self.units, self.cap, self.seed, self.tag, self.read, self.pin = units, cap, seed, tag, read, pin
        self.n_rows = sum(size for _, size in units)
        """Rows in one epoch."""
        self._layouts: dict[int, tuple[list[list[int]], list[int]]] = {}
        self._window_key: tuple[int, int] | None = None
        self._window: tuple[torch.Tensor, torch.Tensor] | None = None
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="window-prefetch") if prefetch else None
        self._prefetch: tuple[tuple[int, int], Future] | None = None

    def take(self, start: int, stop: int) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """Rows [start, stop) of the stream as slices of the cached windows, (x_p parts, x_r parts): views, so
        a caller copies them (torch.cat) before the next call."""
        parts_p, parts_r = [], []
        position = start
        while position < stop:
            epoch, offset = divmod(position, self.n_rows)
            _, ends = self._layout(epoch)
            window = bisect.bisect_right(ends, offset)
            lo = offset - (ends[window - 1] if window else 0)
            take = min(stop - position, ends[window] - offset)
            x_p, x_r = self._window_data(epoch, window)
            parts_p.append(x_p[lo : lo + take])
            parts_r.append(x_r[lo : lo + take])
            position += take
        return parts_p, parts_r

    def _generator(self, *parts: object) -> torch.Generator:
        return torch.Generator().manual_seed(derive_seed(self.seed, self.tag, *parts))

    def _layout(self, epoch: int) -> tuple[list[list[int]], list[int]]:
        """Epoch `epoch`: units of each window (in load order) and each window's end offset in the epoch."""
        layout = self._layouts.get(epoch)
        if layout is None:
            order = torch.randperm(len(self.units), generator=self._generator("units", epoch)).tolist()
            layout = epoch_windows(self.units, order, self.cap)
            if len(self._layouts) >= 2:
                self._layouts.pop(min(self._layouts))
            self._layouts[epoch] = layout
        return layout

    def _next_key(self, epoch: int, window: int) -> tuple[int, int]:
        windows, _ = self._layout(epoch)
        return (epoch, window + 1) if window + 1 < len(windows) else (epoch + 1, 0)

    def _window_data(self, epoch: int, window: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Window (epoch, window)'s rows in shuffled order, (x_p, x_r)."""
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

        Rows go straight into the window tensors, so the peak memory is the window plus one unit."""
        sizes = [self.units[u][1] for u in units]
        dest = torch.randperm(sum(sizes), generator=self._generator("rows", epoch, window))
        x_p = x_r = None
        done = 0
        for unit, size in zip(units, sizes, strict=True):
            start = self.units[unit][0]
            part_p, part_r = self.read(start, start + size)
            if x_p is None:
                x_p = self._window_tensor(dest.numel(), part_p)
                x_r = x_p if part_r is part_p else self._window_tensor(dest.numel(), part_r)
            rows = dest[done : done + size].to(x_p.device)
            x_p.index_copy_(0, rows, part_p)
            if x_r is not x_p:
                x_r.index_copy_(0, rows, part_r)
            done += size
        return x_p, x_r

    def _window_tensor(self, rows: int, like: torch.Tensor) -> torch.Tensor:
        pin = self.pin and like.device.type == "cpu"
        return torch.empty(rows, like.shape[1], dtype=like.dtype, device=like.device, pin_memory=pin)

    def close(self) -> None:
        """Stop the prefetch thread and drop the cached window."""
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None
        self._prefetch, self._window, self._window_key = None, None, None
