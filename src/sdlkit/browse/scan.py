"""What the feature browser shows of each latent, from two streaming passes over an activation store.

Pass 1 (every row, `batch_size` at a time): firing count, activation sum and maximum, the `top_k`
highest activations and their rows (a running [top_k, n_latents] merged with each batch's top_k),
and, on a labelled store, the rows each latent fires on counted by label plus the class sums of the
inputs (for the nearest class mean). Pass 2: the histogram of each latent's non-zero activations on
`bins` equal bins over (0, max], and the latent's activation at the `window` rows either side of each of
its top rows (a store keeps a sample's tokens as consecutive rows, so these are its context).

Memory is O(n_latents · (top_k · (2·window + 1) + bins + n_labels)) plus one batch of codes
[batch_size, n_latents]: the store's [rows, n_latents] codes never exist.
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
    """Rows encoded at a time (the only [rows, n_latents] tensor is one batch of codes)."""
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


def _codes(model: SparseDictionary, part: dict[str, torch.Tensor], modules: list[str]) -> torch.Tensor:
    x = torch.cat([part[name] for name in modules], dim=1) if len(modules) > 1 else part[modules[0]]
    return model.encode(x.to(model.W_E.device, model.W_E.dtype)).float().cpu()


def _entries(codes: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The non-zero codes of a batch as (row, latent, value), each [nnz]: every statistic is computed from
    these (a TopK code has k of n_latents entries per row), not from the dense [batch, n_latents]."""
    row, latent = codes.nonzero(as_tuple=True)
    return row, latent, codes[row, latent]


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
        "label_counts": torch.zeros(L * n_labels, dtype=torch.int64) if n_labels else None,
        "label_rows": torch.zeros(n_labels, dtype=torch.int64) if n_labels else None,
        "class_sums": torch.zeros(n_labels, model.n_in, dtype=torch.float64) if n_labels else None,
    }
    for lo, part in _batches(store, modules, options, "browse 1/2"):
        codes = _codes(model, part, modules)
        out["rows"] += codes.shape[0]
        row, latent, value = _entries(codes)
        out["count"] += torch.bincount(latent, minlength=L)
        out["total"] += torch.bincount(latent, weights=value.double(), minlength=L)
        out["max"].scatter_reduce_(0, latent, value, reduce="amax")
        values, rows = _batch_top(row, latent, value, L, K)  # [K, L]: this batch's best rows per latent
        merged_values = torch.cat([out["top_values"], values])
        merged_rows = torch.cat([out["top_rows"], torch.where(rows >= 0, rows + lo, -1)])
        best = merged_values.topk(K, dim=0)
        out["top_values"], out["top_rows"] = best.values, merged_rows.gather(0, best.indices)
        if n_labels:
            labels = part[LABEL_KEY]
            out["label_counts"] += torch.bincount(latent * n_labels + labels[row], minlength=L * n_labels)
            out["label_rows"] += torch.bincount(labels, minlength=n_labels)
            x = torch.cat([part[name] for name in modules], dim=1).double()
            out["class_sums"].index_add_(0, labels, x)
    out["top_rows"][out["top_values"] <= 0] = -1
    return out


def _second_pass(
    model: SparseDictionary, store: ActivationStore, modules: list[str], options: ScanOptions, first: dict
) -> LatentScan:
    """Histograms and top-row contexts, then the LatentScan of both passes."""
    L, bins = model.n_latents, options.bins
    contexts = _Contexts.wanted(first["top_rows"], options.window, first["rows"], store.labels is not None)
    hist = torch.zeros(L * bins, dtype=torch.int64)
    scale = bins / first["max"].clamp(min=1e-30)
    for lo, part in _batches(store, modules, options, "browse 2/2"):
        codes = _codes(model, part, modules)
        _, latent, value = _entries(codes)
        which = (value * scale[latent]).long().clamp(max=bins - 1)
        hist += torch.bincount(latent * bins + which, minlength=L * bins)
        contexts.fill(lo, codes, part)
    return _latent_scan(first, hist.view(L, bins), contexts, store)


@dataclass
class _Contexts:
    """The (row, latent) entries the top rows' contexts need, and their values as the second pass reads them.

    Flat over slots of [K, L, W] (top rank, latent, offset -window … +window); the wanted entries are
    sorted by row so each batch fills one slice."""

    shape: tuple[int, int, int]  # (K, L, W)
    want_rows: torch.Tensor  # int64 [wanted]: store row of each wanted entry, ascending
    want_latent: torch.Tensor  # int64 [wanted]: its latent
    slot: torch.Tensor  # int64 [wanted]: its flat slot in [K, L, W]
    acts: torch.Tensor  # float32 [K·L·W]: the latent's code at that row (0 until filled)
    tokens: torch.Tensor  # int64 [K·L·W]: token id of that row (-1 until filled)
    positions: torch.Tensor  # int64 [K·L·W]: its position in its sample
    samples: torch.Tensor  # int64 [K·L·W]: its sample
    labels: torch.Tensor | None  # int64 [K·L·W]: its label (labelled stores)

    @classmethod
    def wanted(cls, top_rows: torch.Tensor, window: int, rows: int, labelled: bool) -> _Contexts:
        """Every (row, latent) pair within `window` rows of a top row [K, L] (inside [0, rows)), unfilled."""
        K, L = top_rows.shape
        offsets = torch.arange(-window, window + 1)
        W = len(offsets)
        want = top_rows[:, :, None] + offsets  # [K, L, W]
        valid = (top_rows[:, :, None] >= 0) & (want >= 0) & (want < rows)
        slot = valid.flatten().nonzero().squeeze(1)
        want_rows = want.flatten()[slot]
        want_latent = torch.arange(L)[None, :, None].expand(K, L, W).flatten()[slot]
        order = torch.sort(want_rows, stable=True).indices
        size = K * L * W

        def unset() -> torch.Tensor:
            return torch.full((size,), -1, dtype=torch.int64)

        return cls(
            (K, L, W),
            want_rows[order],
            want_latent[order],
            slot[order],
            torch.zeros(size),
            unset(),
            unset(),
            unset(),
            unset() if labelled else None,
        )

    def fill(self, lo: int, codes: torch.Tensor, part: dict[str, torch.Tensor]) -> None:
        """Take the wanted entries among store rows [lo, lo + len(codes)) from a batch's codes and columns."""
        a, b = torch.searchsorted(self.want_rows, torch.tensor([lo, lo + codes.shape[0]])).tolist()
        here, at = self.want_rows[a:b] - lo, self.slot[a:b]
        self.acts[at] = codes[here, self.want_latent[a:b]]
        self.samples[at] = part[SAMPLE_KEY][here]
        if TOKEN_KEY in part:
            self.tokens[at], self.positions[at] = part[TOKEN_KEY][here], part[POSITION_KEY][here]
        if self.labels is not None:
            self.labels[at] = part[LABEL_KEY][here]

    def trimmed(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """(acts, tokens, positions) [K, L, W] with the rows of another sample than the top row's blanked
        (0 / -1), then the top rows' samples and labels [K, L] (labels None on an unlabelled store)."""
        acts, tokens, positions = (x.view(self.shape) for x in (self.acts, self.tokens, self.positions))
        samples, centre = self.samples.view(self.shape), self.shape[2] // 2
        top_samples = samples[:, :, centre]
        outside = samples != top_samples[:, :, None]  # rows of another sample are not context
        acts[outside], tokens[outside], positions[outside] = 0.0, -1, -1
        labels = self.labels.view(self.shape)[:, :, centre] if self.labels is not None else None
        return acts, tokens, positions, top_samples, labels


def _latent_scan(first: dict, hist: torch.Tensor, contexts: _Contexts, store: ActivationStore) -> LatentScan:
    """Both passes' results as one LatentScan (class sums become class means)."""
    n_labels = len(store.labels) if store.labels is not None else 0
    class_means = None
    if n_labels:
        class_means = first["class_sums"] / first["label_rows"].clamp(min=1)[:, None].double()
    L = hist.shape[0]
    acts, tokens, positions, top_samples, top_labels = contexts.trimmed()
    return LatentScan(
        rows=first["rows"],
        count=first["count"],
        total=first["total"],
        max=first["max"],
        top_values=first["top_values"],
        top_rows=first["top_rows"],
        hist=hist,
        context_acts=acts,
        context_tokens=tokens,
        context_positions=positions,
        top_samples=top_samples,
        top_labels=top_labels,
        label_counts=first["label_counts"].view(L, n_labels) if n_labels else None,
        label_rows=first["label_rows"],
        class_means=class_means,
    )
