"""The harvest loop: run models over a dataset and write the activations of named modules into a store.

Steps are the fixed sample ranges [s·S, (s+1)·S) of the dataset (S = batch_size, × sort_window for text,
whose steps run as length-sorted forward passes: sdlkit.harvest.batching), so a resumed harvest forms
exactly the passes of an uninterrupted one (same composition, same padding: bit-identical activations).
Each step's rows (sdlkit.harvest.forward: one per token or per sample, in sample order, with provenance) are
appended, and shards are committed only at step boundaries (StoreWriter.end_batch), so an exception or
Ctrl-C leaves the store resumable (sdlkit.harvest.resume checks that a resume matches).

Budgets: `max_samples` harvests the first that many samples; `max_rows` stops at the first step boundary
where at least that many rows are stored, so a store may hold up to one step of rows more.
"""

from __future__ import annotations

import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import torch
from tqdm.auto import tqdm

from sdlkit.devices import resolve_device
from sdlkit.errors import ConfigError
from sdlkit.harvest.checks import check_models
from sdlkit.harvest.datasets import Dataset, open_dataset
from sdlkit.harvest.forward import probe_dims, step_rows
from sdlkit.harvest.models import LoadedModel, ModuleSpec, load_model, parse_dtype, parse_modules
from sdlkit.harvest.prepare import Preparer, Step
from sdlkit.harvest.resume import check_fingerprint, precheck_store, source_record
from sdlkit.harvest.settings import HarvestOptions
from sdlkit.overrides import with_overrides
from sdlkit.store import StoreManifest, StoreWriter

SKIPPED_IMAGES = "undecodable_images"
"""The store's skip-count reason for image samples that could not be decoded."""


def harvest(
    model: str | list[str],
    modules: str | list[str],
    data: str,
    out: str,
    options: HarvestOptions | None = None,
    **overrides: Any,
) -> StoreManifest:
    """Harvest the activations of `modules` of `model` (one, or several for crosscoders) over `data` into
    the store `out`; returns the store's manifest.

    model: hub names or local folders; modules: `[i:]NAME[:input|:mean|:unit-mean]` specs (comma-separated or a
    list; `i:` required with several models; `clip:pooled` / `clip:projected` aliases); data: .txt, .jsonl, .parquet,
    an image folder, or a hub dataset (needs `datasets`). `options` (or keyword `overrides` of its fields, e.g.
    `max_rows=1_000_000`) say how: see HarvestOptions.
    """
    options = with_overrides(HarvestOptions, options, overrides, "harvest")
    names = [model] if isinstance(model, str) else list(model)
    if not names:
        raise ConfigError("no model given: pass --model NAME_OR_PATH")
    resuming = precheck_store(out, options.resume, options.overwrite)
    dataset = open_dataset(
        data, text_column=options.text_column, label_column=options.label_column, split=options.split
    )
    fingerprint = check_fingerprint(resuming, dataset, out)
    if options.shuffle_seed is not None:  # rows of an image folder would otherwise come sorted by class
        dataset = dataset.shuffled(options.shuffle_seed)
    job = _job(names, modules, dataset, options)
    dims = probe_dims(job.loaded, job.specs, job.prepare.probe(), job.device)
    source = source_record(names, job.specs, data, dataset.kind, options, fingerprint)
    writer = _open_writer(out, dims, source, dataset, options)
    n_samples = len(dataset) if options.max_samples is None else min(len(dataset), options.max_samples)
    start, step = writer.next_sample, options.batch_size * (options.sort_window if dataset.kind == "text" else 1)
    if start % step and start < n_samples:
        raise ConfigError(f"cannot resume {out}: it stopped at sample {start}, not at a step boundary of {step}")
    with writer:  # an exception (or Ctrl-C) closes the store incomplete, so --resume continues it
        _loop(writer, job, range(start, n_samples, step), n_samples, options.max_rows, options.progress)
    return writer.manifest.model_copy(deep=True)


def _job(names: list[str], modules: str | list[str], dataset: Dataset, options: HarvestOptions) -> _Job:
    """Load the models on their device and pair them with the recorded modules and the batch preparer."""
    torch_dtype = parse_dtype(options.model_dtype, "--model-dtype")
    parse_dtype(options.store_dtype, "--store-dtype")  # refuse a bad store dtype before loading models
    target = torch.device(resolve_device(options.device, "--device"))
    trust = options.trust_remote_code
    loaded = [load_model(n, device=target, dtype=torch_dtype, trust_remote_code=trust) for n in names]
    check_models(loaded, dataset, options.context_size)
    specs = parse_modules(modules, [m.model for m in loaded], names)
    prepare = Preparer(loaded, dataset, options.context_size, options.include_special, options.batch_size)
    return _Job(loaded, specs, dataset, prepare, target)


def _open_writer(
    out: str, dims: dict[str, int], source: dict[str, Any], dataset: Dataset, options: HarvestOptions
) -> StoreWriter:
    """A new store at `out`, or the incomplete one to resume."""
    if options.resume:
        return StoreWriter.resume(out, modules=dims, source=source, shard_rows=options.shard_rows)
    return StoreWriter.create(
        out,
        dims,
        parse_dtype(options.store_dtype, "--store-dtype"),
        labels=dataset.label_names,
        source=source,
        shard_rows=options.shard_rows,
        overwrite=options.overwrite,
    )


@dataclass
class _Job:
    """What a harvest runs: the models, the recorded modules, the data and how batches are prepared."""

    loaded: list[LoadedModel]
    specs: list[ModuleSpec]
    dataset: Dataset
    prepare: Preparer
    device: torch.device

    def append(self, writer: StoreWriter, step: Step) -> None:
        """Run the models on one step's forward passes and append its rows to the store, in sample order."""
        rows = step_rows(self.loaded, self.specs, step, self.device)
        if rows is None:
            return
        acts, sample, token, position = rows
        labels = self.dataset.labels
        writer.append(acts, sample, labels[sample] if labels is not None else None, token, position)


def _loop(writer: StoreWriter, job: _Job, starts: range, n_samples: int, max_rows: int | None, progress: bool) -> None:
    """Harvest batch after batch (batch b = samples [starts[b], starts[b] + step)); the next batch is prepared in
    a thread while the models run."""
    first = starts.start if starts else n_samples
    began, rows_before = time.perf_counter(), writer.rows
    bar = tqdm(total=n_samples, initial=first, unit="sample", disable=not progress, desc="harvest", dynamic_ncols=True)
    with bar, ThreadPoolExecutor(max_workers=1) as pool:
        pending: Future | None = None
        for position, begin in enumerate(starts):
            if max_rows is not None and writer.rows >= max_rows:
                break
            stop = min(begin + starts.step, n_samples)
            batch = pending.result() if pending is not None else job.prepare(begin, stop)
            if position + 1 < len(starts):
                pending = pool.submit(job.prepare, stop, min(stop + starts.step, n_samples))
            job.append(writer, batch)
            writer.end_batch(stop, {SKIPPED_IMAGES: batch.skipped} if job.dataset.kind == "image" else None)
            bar.update(stop - begin)
            rate = (writer.rows - rows_before) / max(time.perf_counter() - began, 1e-9)
            bar.set_postfix(rows=writer.rows, rows_s=f"{rate:.0f}", refresh=False)
