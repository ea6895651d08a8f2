"""What the feature browser shows of each latent, from two streaming passes over an activation store.

Pass 1 (every row, `batch_size` at a time): firing count, activation sum and maximum, the `top_k`
highest activations and their rows (a running [top_k, n_latents] merged with each batch's top_k),
and, on a labelled store, the rows each latent fires on counted by label plus the class sums of the
inputs (for the nearest class mean). Pass 2: the histogram of each latent's non-zero activations on
`bins` equal bins over (0, max], and the latent's activation at the `window` rows either side of each of
its top rows (a store keeps a sample's tokens as consecutive rows, so these are its context).

Codes are read as their non-zero entries (row, latent, value): from the sparse kernel where the method has
one, else from dense codes of a bounded row block (`SparseDictionary.blocks`). So neither the store's
[rows, n_latents] codes nor a batch's exist for the TopK family, and for the others at most one block does.
Memory is O(n_latents · (top_k · (2·window + 1) + bins + n_labels)): mostly the contexts' codes, token ids
and positions (20 bytes a slot), filled from the top rows sorted by row ([top_k, n_latents]).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import torch
from tqdm.auto import tqdm

from sdlkit.core.model import SparseDictionary
from sdlkit.errors import ConfigError
from sdlkit.store import ActivationStore
from sdlkit.store.format import LABEL_KEY, POSITION_KEY, SAMPLE_KEY, TOKEN_KEY


@dataclass
class ScanOptions:
    top_k: int = 20
    """Top activating rows kept per latent."""
    window: int = 10
    """Context rows (tokens) shown either side of a top row."""
    bins: int = 32
    """Histogram bins over (0, max activation] of each latent."""
    batch_size: int = 2048
    """Rows read from the store at a time (encoded in row blocks of bounded size, see the module docstring)."""
    max_rows: int | None = None
    """Scan only the store's first rows (None: all)."""
    progress: bool = True


@dataclass
class LatentScan:
    """Per-latent statistics over `rows` store rows. L = n_latents, K = top_k, W = 2·window + 1, C = labels."""

    rows: int
    count: torch.Tensor  # int64 [L]: rows where the latent's code is > 0
    total: torch.Tensor  # float64 [L]: sum of its codes
    max: torch.Tensor  # float32 [L]
    top_values: torch.Tensor  # float32 [K, L], descending; 0 where it fired on fewer than K rows
    top_rows: torch.Tensor  # int64 [K, L]: store row of each top value; -1 where none
    hist: torch.Tensor  # int64 [L, bins]: its non-zero codes on equal bins over (0, max]
    context_acts: torch.Tensor  # float32 [K, L, W]: its code at rows top_row - window ... top_row + window
    context_tokens: torch.Tensor  # int64 [K, L, W]: token id of those rows; -1 outside the top row's sample
    context_positions: torch.Tensor  # int64 [K, L, W]: position in the sample; -1 outside it
    top_samples: torch.Tensor  # int64 [K, L]: sample of each top row (-1 where none)
    top_labels: torch.Tensor | None  # int64 [K, L]: its label (labelled stores)
    label_counts: torch.Tensor | None  # int64 [L, C]: rows the latent fires on, by label
    label_rows: torch.Tensor | None  # int64 [C]: rows per label (the base rate)
    class_means: torch.Tensor | None  # float64 [C, n_in]: mean input per label (0 for absent labels)

    @property
    def frequency(self) -> torch.Tensor:
        """Share of rows each latent fires on, float64 [L]."""
        return self.count.double() / max(self.rows, 1)

    @property
    def mean_active(self) -> torch.Tensor:
        """Mean code over the rows where the latent fires, float64 [L] (0 if it never fires)."""
        return self.total / self.count.clamp(min=1).double()


def _batches(store: ActivationStore, modules: list[str], options: ScanOptions, desc: str) -> Iterator[tuple[int, dict]]:
    stop = store.rows if options.max_rows is None else min(options.max_rows, store.rows)
    bar = tqdm(total=stop, unit="row", desc=desc, disable=not options.progress, dynamic_ncols=True)
    with bar:
        for lo in range(0, stop, options.batch_size):
            part = store.read_rows(lo, min(lo + options.batch_size, stop), modules)
            yield lo, part
            bar.update(len(part[SAMPLE_KEY]))


def _entries(
    model: SparseDictionary, part: dict[str, torch.Tensor], modules: list[str]
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The non-zero codes of a batch as (row, latent, value), each [nnz] on the CPU (value float32), rows
    ascending: every statistic is computed from these (a TopK code has k of n_latents entries per row)."""
    x = torch.cat([part[name] for name in modules], dim=1) if len(modules) > 1 else part[modules[0]]
    found = [(start, *out.entries()) for start, out in model.blocks(x.to(model.W_E.device, model.W_E.dtype))]
    row = torch.cat([r + start for start, r, _, _ in found]).cpu()
    return row, torch.cat([f[2] for f in found]).cpu(), torch.cat([f[3] for f in found]).float().cpu()


def _batch_top(
    row: torch.Tensor, latent: torch.Tensor, value: torch.Tensor, n_latents: int, k: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Each latent's k largest entries of a batch: (values [k, L], rows [k, L]; 0 and -1 where it has fewer)."""
    order = torch.sort(value, descending=True, stable=True).indices
    order = order[torch.sort(latent[order], stable=True).indices]  # grouped by latent, largest first
    grouped = latent[order]
    starts = torch.cumsum(torch.bincount(grouped, minlength=n_latents), 0) - torch.bincount(
        grouped, minlength=n_latents
    )
    rank = torch.arange(len(order)) - starts[grouped]
    keep = rank < k
    values = torch.zeros(k, n_latents)
    rows = torch.full((k, n_latents), -1, dtype=torch.int64)
    values[rank[keep], grouped[keep]] = value[order][keep]
    rows[rank[keep], grouped[keep]] = row[order][keep]
    return values, rows


@torch.inference_mode()
def scan_store(
    model: SparseDictionary, store: ActivationStore, modules: list[str], options: ScanOptions | None = None
) -> LatentScan:
    """Both passes of `model` (reading raw store rows of `modules`, concatenated) over `store`."""
    options = options or ScanOptions()
    for name in ("top_k", "bins", "batch_size"):
        if getattr(options, name) < 1:
            raise ConfigError(f"--{name.replace('_', '-')} = {getattr(options, name)} must be >= 1")
    if options.window < 0:
        raise ConfigError(f"--window = {options.window} must be >= 0")
    width = sum(store.modules[name] for name in modules)
    if width != model.n_in:
        raise ConfigError(
            f"the store's modules {modules} give rows of width {width} but the dictionary reads {model.n_in}"
        )
    model.eval()
    first = _first_pass(model, store, modules, options)
    return _second_pass(model, store, modules, options, first)


def _first_pass(model: SparseDictionary, store: ActivationStore, modules: list[str], options: ScanOptions) -> dict:
    L, K = model.n_latents, options.top_k
    n_labels = len(store.labels) if store.labels is not None else 0
    out = {
        "rows": 0,
        "count": torch.zeros(L, dtype=torch.int64),
        "total": torch.zeros(L, dtype=torch.float64),
        "max": torch.zeros(L),
        "top_values": torch.zeros(K, L),
        "top_rows": torch.full((K, L), -1, dtype=torch.int64),
        "top_samples": torch.full((K, L), -1, dtype=torch.int64),
        "top_labels": torch.full((K, L), -1, dtype=torch.int64) if n_labels else None,
        "label_counts": torch.zeros(L * n_labels, dtype=torch.int64) if n_labels else None,
        "label_rows": torch.zeros(n_labels, dtype=torch.int64) if n_labels else None,
        "class_sums": torch.zeros(n_labels, model.n_in, dtype=torch.float64) if n_labels else None,
    }
    for lo, part in _batches(store, modules, options, "browse 1/2"):
        row, latent, value = _entries(model, part, modules)
        out["rows"] += len(part[SAMPLE_KEY])
        out["count"] += torch.bincount(latent, minlength=L)
        out["total"] += torch.bincount(latent, weights=value.double(), minlength=L)
        out["max"].scatter_reduce_(0, latent, value, reduce="amax")
        _merge_top(out, part, lo, *_batch_top(row, latent, value, L, K))
        if n_labels:
            labels = part[LABEL_KEY]
            out["label_counts"] += torch.bincount(latent * n_labels + labels[row], minlength=L * n_labels)
            out["label_rows"] += torch.bincount(labels, minlength=n_labels)
            x = torch.cat([part[name] for name in modules], dim=1).double()
            out["class_sums"].index_add_(0, labels, x)
    none = out["top_values"] <= 0
    for key in ("top_rows", "top_samples", "top_labels"):
        if out[key] is not None:
            out[key][none] = -1
    return out


def _merge_top(out: dict, part: dict[str, torch.Tensor], lo: int, values: torch.Tensor, rows: torch.Tensor) -> None:
    """Merge a batch's top entries (values, batch rows [K, L]) into the running top K, with each top row's store
    row, sample and label."""
    has = rows >= 0
    at = rows.clamp(min=0)
    merged = torch.cat([out["top_values"], values]).topk(out["top_values"].shape[0], dim=0)
    out["top_values"] = merged.values
    for key, column in (("top_rows", None), ("top_samples", SAMPLE_KEY), ("top_labels", LABEL_KEY)):
        if out[key] is not None:
            batch = torch.where(has, rows + lo if column is None else part[column][at], -1)
            out[key] = torch.cat([out[key], batch]).gather(0, merged.indices)


def _second_pass(
    model: SparseDictionary, store: ActivationStore, modules: list[str], options: ScanOptions, first: dict
) -> LatentScan:
    """Histograms and top-row contexts, then the LatentScan of both passes."""
    L, bins = model.n_latents, options.bins
    contexts = _Contexts.wanted(first["top_rows"], first["top_samples"], options.window)
    hist = torch.zeros(L * bins, dtype=torch.int64)
    scale = bins / first["max"].clamp(min=1e-30)
    for lo, part in _batches(store, modules, options, "browse 2/2"):
        row, latent, value = _entries(model, part, modules)
        which = (value * scale[latent]).long().clamp(max=bins - 1)
        hist += torch.bincount(latent * bins + which, minlength=L * bins)
        contexts.fill(lo, (row, latent, value), part)
    return _latent_scan(first, hist.view(L, bins), contexts, store)


@dataclass
class _Contexts:
    """The codes, token ids and positions of the rows around each top row, as the second pass reads them.

    Flat over slots of [K, L, W] (top rank, latent, offset -window … +window). The top rows [K, L] are
    sorted by row once, so each batch finds the top rows whose windows reach into it by a binary search."""

    shape: tuple[int, int, int]  # (K, L, W)
    sorted_rows: torch.Tensor  # int64 [tops]: the store row of every top row, ascending
    sorted_top: torch.Tensor  # int64 [tops]: its flat index k·L + latent in [K, L]
    top_samples: torch.Tensor  # int64 [K·L]: the sample of each top row
    acts: torch.Tensor  # float32 [K·L·W]: the latent's code at that row (0 until filled)
    tokens: torch.Tensor  # int64 [K·L·W]: token id of that row (-1 until filled)
    positions: torch.Tensor  # int64 [K·L·W]: its position in its sample

    @classmethod
    def wanted(cls, top_rows: torch.Tensor, top_samples: torch.Tensor, window: int) -> _Contexts:
        """Contexts for the top rows [K, L] (-1: none) and their samples [K, L], unfilled."""
        K, L = top_rows.shape
        W = 2 * window + 1
        flat = top_rows.flatten()
        top = (flat >= 0).nonzero().squeeze(1)
        sorted_rows, order = torch.sort(flat[top], stable=True)
        size = K * L * W
        return cls(
            (K, L, W),
            sorted_rows,
            top[order],
            top_samples.flatten(),
            torch.zeros(size),
            torch.full((size,), -1, dtype=torch.int64),
            torch.full((size,), -1, dtype=torch.int64),
        )

    def fill(self, lo: int, entries: tuple[torch.Tensor, ...], part: dict[str, torch.Tensor]) -> None:
        """Fill the slots whose row is among store rows [lo, lo + n) and in its top row's sample, from the batch's
        code entries (row, latent, value) and columns."""
        _, L, W = self.shape
        n, window = len(part[SAMPLE_KEY]), W // 2
        a, b = torch.searchsorted(self.sorted_rows, torch.tensor([lo - window, lo + n + window])).tolist()
        rows = self.sorted_rows[a:b, None] + torch.arange(-window, window + 1) - lo  # [m, W], batch rows
        top = self.sorted_top[a:b, None].expand_as(rows)
        slot = top * W + torch.arange(W)
        inside = (rows >= 0) & (rows < n)
        here, top, slot = rows[inside], top[inside], slot[inside]
        same = part[SAMPLE_KEY][here] == self.top_samples[top]  # rows of another sample are not context
        here, top, slot = here[same], top[same], slot[same]
        self.acts[slot] = _code_at(entries, here, top % L, L)
        if TOKEN_KEY in part:
            self.tokens[slot], self.positions[slot] = part[TOKEN_KEY][here], part[POSITION_KEY][here]


def _code_at(entries: tuple[torch.Tensor, ...], row: torch.Tensor, latent: torch.Tensor, L: int) -> torch.Tensor:
    """The codes at (row, latent) [m] from a batch's non-zero entries (row, latent, value): 0 where none."""
    want = row * L + latent
    if len(entries[0]) == 0:
        return torch.zeros(len(want))
    keys, order = torch.sort(entries[0] * L + entries[1])
    at = torch.searchsorted(keys, want).clamp(max=len(keys) - 1)
    return torch.where(keys[at] == want, entries[2][order[at]], 0.0)


def _latent_scan(first: dict, hist: torch.Tensor, contexts: _Contexts, store: ActivationStore) -> LatentScan:
    """Both passes' results as one LatentScan (class sums become class means)."""
    n_labels = len(store.labels) if store.labels is not None else 0
    class_means = None
    if n_labels:
        class_means = first["class_sums"] / first["label_rows"].clamp(min=1)[:, None].double()
    L = hist.shape[0]
    return LatentScan(
        rows=first["rows"],
        count=first["count"],
        total=first["total"],
        max=first["max"],
        top_values=first["top_values"],
        top_rows=first["top_rows"],
        hist=hist,
        context_acts=contexts.acts.view(contexts.shape),
        context_tokens=contexts.tokens.view(contexts.shape),
        context_positions=contexts.positions.view(contexts.shape),
        top_samples=first["top_samples"],
        top_labels=first["top_labels"],
        label_counts=first["label_counts"].view(L, n_labels) if n_labels else None,
        label_rows=first["label_rows"],
        class_means=class_means,
    )
