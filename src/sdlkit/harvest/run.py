"""The harvest loop: run models over a dataset and write the activations of named modules into a store.

Steps are the fixed sample ranges [s·S, (s+1)·S) of the dataset (S = batch_size, × sort_window for text,
whose steps run as length-sorted forward passes: sdlkit.harvest.batching), so a resumed harvest forms
exactly the passes of an uninterrupted one (same composition, same padding: bit-identical activations).
A module output [B, T, D] gives one row per token (text: real tokens only, padding and by default special
tokens excluded; images: every token); [B, D] (or a pooled `NAME:mean`) gives one row per sample. Rows
are in sample order, tokens in order, each with its provenance: token id and position in its sample (-1
where a row stands for the whole sample). Shards are committed only at step boundaries
(StoreWriter.end_batch), and an exception or Ctrl-C leaves the store resumable.

Budgets: `max_samples` harvests the first that many samples; `max_rows` stops at the first step boundary
where at least that many rows are stored, so a store may hold up to one step of rows more.
"""

from __future__ import annotations

import sys
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from sdlkit.errors import ConfigError, StoreError
from sdlkit.harvest.batching import pad_ids, sample_order, sorted_passes
from sdlkit.harvest.datasets import Dataset, open_dataset
from sdlkit.harvest.hooks import Recorder
from sdlkit.harvest.models import (
    POOLED_SUFFIXES,
    LoadedModel,
    ModuleSpec,
    check_context_size,
    load_model,
    parse_dtype,
    parse_modules,
    resolve_device,
)
from sdlkit.harvest.pooling import pool_tokens
from sdlkit.options import with_overrides
from sdlkit.store import StoreManifest, StoreWriter
from sdlkit.store.opening import resumable_manifest

SKIPPED_IMAGES = "undecodable_images"


@dataclass
class Prepared:
    """One forward pass ready for the models: inputs per model (CPU), which samples it holds, and the token mask."""

    inputs: list[dict[str, torch.Tensor]]
    index: torch.Tensor  # int64 [B]: dataset index of each sample in the batch
    mask: torch.Tensor | None  # bool [B, T]: the tokens that give rows (text only)
    skipped: int  # samples of the range that could not be decoded


@dataclass
class Step:
    """One harvest step (the unit of resume): its forward passes and how many samples could not be decoded."""

    passes: list[Prepared]
    skipped: int


@dataclass(frozen=True)
class HarvestOptions:
    """How `harvest` reads, runs and writes; the fields mirror `sdlkit harvest`'s options."""

    context_size: int = 128
    """Tokens per text (longer texts are truncated)."""
    batch_size: int = 32
    """Samples per forward pass."""
    sort_window: int = 8
    """Text: a step of sort_window × batch_size samples runs as length-sorted passes (1: file order)."""
    max_rows: int | None = None
    """Stop at the first step boundary where at least this many rows are stored."""
    max_samples: int | None = None
    """Harvest only the first that many samples."""
    device: str = "auto"
    """cpu, cuda[:N] or auto."""
    model_dtype: str = "float32"
    """float32, bfloat16 or float16: the models' dtype."""
    store_dtype: str = "float32"
    """float32, bfloat16 or float16: the stored rows' dtype."""
    include_special: bool = False
    """Also record special tokens (BOS, EOS, ...)."""
    text_column: str = "text"
    """The text column of .jsonl / .parquet data."""
    label_column: str | None = None
    """A column with a label per sample (for class-mean anchors)."""
    split: str = "train"
    """The split of a hub dataset."""
    shuffle_seed: int | None = 0
    """Visit the samples in this seeded order (None: file order)."""
    resume: bool = False
    """Continue the incomplete store at `out` (the same options are required)."""
    overwrite: bool = False
    """Replace an existing store at `out` (only one that sdlkit wrote)."""
    trust_remote_code: bool = False
    """Run the model repository's own code."""
    shard_rows: int = 65536
    """Rows per shard file."""
    progress: bool = True
    """Show a progress bar."""

    def __post_init__(self) -> None:
        for name in ("context_size", "batch_size", "sort_window", "max_rows", "max_samples"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 1):
                raise ConfigError(
                    f"--{name.replace('_', '-')} = {value!r} is not allowed: it must be a positive integer"
                )


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
    resuming = _precheck_store(out, options.resume, options.overwrite)
    dataset = open_dataset(
        data, text_column=options.text_column, label_column=options.label_column, split=options.split
    )
    fingerprint = _check_fingerprint(resuming, dataset, out)
    if options.shuffle_seed is not None:  # rows of an image folder would otherwise come sorted by class
        dataset = dataset.shuffled(options.shuffle_seed)
    job = _job(names, modules, dataset, options)
    dims = probe_dims(job.loaded, job.specs, job.prepare.probe(), job.device)
    source = _source_record(names, job.specs, data, dataset.kind, options, fingerprint)
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
    target = resolve_device(options.device)
    trust = options.trust_remote_code
    loaded = [load_model(n, device=target, dtype=torch_dtype, trust_remote_code=trust) for n in names]
    _check_models(loaded, dataset, options.context_size)
    specs = parse_modules(modules, [m.model for m in loaded], names)
    prepare = _Preparer(loaded, dataset, options.context_size, options.include_special, options.batch_size)
    return _Job(loaded, specs, dataset, prepare, target)


def _source_record(
    names: list[str], specs: list[ModuleSpec], data: str, kind: str, options: HarvestOptions, fingerprint: Any
) -> dict[str, Any]:
    """What the store records of its making (a resume must match it)."""
    text = kind == "text"
    source = {
        "models": [_source_name(n) for n in names],
        "modules": [spec.key for spec in specs],
        "data": _source_name(data),
        "kind": kind,
        "text_column": options.text_column if text else None,
        "label_column": options.label_column,
        "split": options.split if not Path(data).expanduser().exists() else None,
        "context_size": options.context_size if text else None,
        "batch_size": options.batch_size,
        "sort_window": options.sort_window if text else None,
        "model_dtype": options.model_dtype,
        "store_dtype": options.store_dtype,
        "include_special": options.include_special,
        "shuffle_seed": options.shuffle_seed,
        "max_rows": options.max_rows,
        "max_samples": options.max_samples,
        "trust_remote_code": options.trust_remote_code,
        "sdlkit_version": _version(),
    }
    if fingerprint is not None:
        source["data_fingerprint"] = fingerprint
    return source


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
    prepare: _Preparer
    device: torch.device

    def append(self, writer: StoreWriter, step: Step) -> None:
        """Run the models on one step's forward passes and append its rows to the store, in sample order."""
        parts = [_rows(record_batch(self.loaded, self.specs, batch, self.device), batch) for batch in step.passes]
        parts = [part for part in parts if len(part[1])]
        if not parts:
            return
        acts = {key: torch.cat([part[0][key] for part in parts]) for key in parts[0][0]}
        sample, token, position = (torch.cat([part[i] for part in parts]) for i in (1, 2, 3))
        if bool((sample[1:] < sample[:-1]).any()):  # passes (and samples within one) ran sorted by length
            order = sample_order(sample)
            acts = {key: x[order.to(x.device)] for key, x in acts.items()}
            sample, token, position = sample[order], token[order], position[order]
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


def record_batch(
    loaded: list[LoadedModel], specs: list[ModuleSpec], batch: Prepared, device: torch.device
) -> dict[str, torch.Tensor]:
    """The tensors of every spec for one batch, as the modules give them (on `device`)."""
    records: dict[str, torch.Tensor] = {}
    pooled = set(POOLED_SUFFIXES.values())
    with torch.inference_mode():
        for i, item in enumerate(loaded):
            mine = [spec for spec in specs if spec.model_index == i]
            if not mine:
                continue
            inputs = {k: _to_model(v, item.model, device) for k, v in batch.inputs[i].items()}
            with Recorder(item.model, mine) as recorder:
                records.update(recorder.run(lambda m=item.model, x=inputs: _forward(m, x)))
            for spec in mine:
                if spec.role in pooled:
                    attention = inputs.get("attention_mask")
                    records[spec.key] = pool_tokens(records[spec.key], attention, spec.role, spec.key)
    return {spec.key: records[spec.key] for spec in specs}


def _rows(
    records: dict[str, torch.Tensor], batch: Prepared
) -> tuple[dict[str, torch.Tensor], torch.Tensor, torch.Tensor, torch.Tensor]:
    """Rows per module ([rows, D]) and, per row, its dataset sample, token id and position in the sample
    (int64 [rows]; -1 where a row stands for the whole sample, or has no token id: image patches).
    Per-token outputs keep the masked tokens."""
    acts: dict[str, torch.Tensor] = {}
    sample = batch.index
    token = position = torch.full_like(sample, -1)
    for key, x in records.items():
        if x.ndim == 2:
            acts[key] = x
            continue
        mask = batch.mask if batch.mask is not None else torch.ones(x.shape[:2], dtype=torch.bool)
        if tuple(x.shape[:2]) != tuple(mask.shape):
            raise ConfigError(
                f"module {key!r} gives shape {list(x.shape)}, not one vector per token of the batch {list(mask.shape)}"
            )
        acts[key] = x[mask.to(x.device)]
        sample = batch.index[:, None].expand(mask.shape)[mask]
        position = torch.arange(mask.shape[1]).expand(mask.shape)[mask]
        ids = batch.inputs[0].get("input_ids") if batch.inputs else None
        token = ids[mask] if ids is not None and ids.shape == mask.shape else torch.full_like(sample, -1)
    return acts, sample, token, position


def _forward(model: nn.Module, inputs: dict[str, torch.Tensor]) -> Any:
    """One forward pass; a full CLIPModel runs its image path only (no text needed)."""
    if type(model).__name__ == "CLIPModel":
        return model.get_image_features(**inputs)
    return model(**inputs)


def _to_model(x: torch.Tensor, model: nn.Module, device: torch.device) -> torch.Tensor:
    if x.is_floating_point():
        return x.to(device, next(model.parameters()).dtype)
    return x.to(device)


# ----- batch preparation ----------------------------------------------------------------------------
class _Preparer:
    """Turns a sample range into model inputs: tokens (shared by all models) or processed pixels (per model)."""

    def __init__(
        self, loaded: list[LoadedModel], dataset: Dataset, context_size: int, include_special: bool, batch_size: int
    ):
        self.loaded, self.dataset, self.context_size, self.batch_size = loaded, dataset, context_size, batch_size
        tokenizer = loaded[0].tokenizer
        special = [] if include_special or tokenizer is None else sorted(set(tokenizer.all_special_ids))
        self.special = torch.tensor(special, dtype=torch.int64)

    def __call__(self, start: int, stop: int) -> Step:
        samples = self.dataset.load(start, stop)
        if not samples.items:
            return Step([], samples.skipped)
        if self.dataset.kind == "text":
            return Step(self._text(samples.items, samples.index), 0)
        inputs = [{"pixel_values": _pixels(m, samples.items)} for m in self.loaded]
        return Step([Prepared(inputs, samples.index, None, samples.skipped)], samples.skipped)

    def probe(self) -> Prepared:
        """A one-sample batch to learn the modules' shapes: the first text, or a blank image."""
        if self.dataset.kind == "text":
            return self._text(self.dataset.load(0, 1).items, torch.zeros(1, dtype=torch.int64))[0]
        from PIL import Image

        blank = [Image.new("RGB", (64, 64))]
        return Prepared(
            [{"pixel_values": _pixels(m, blank)} for m in self.loaded], torch.zeros(1, dtype=torch.int64), None, 0
        )

    def _text(self, texts: list[str], index: torch.Tensor) -> list[Prepared]:
        """The texts tokenized once, sorted by length and cut into right-padded passes of batch_size."""
        tokenizer = self.loaded[0].tokenizer
        encoded = tokenizer(texts, truncation=True, max_length=self.context_size)["input_ids"]
        lengths = torch.tensor([len(ids) for ids in encoded], dtype=torch.int64)
        passes = []
        for chosen in sorted_passes(lengths, self.batch_size):
            ids, attention = pad_ids([encoded[i] for i in chosen.tolist()], tokenizer.pad_token_id)
            mask = attention.bool() & ~torch.isin(ids, self.special)
            inputs = {"input_ids": ids, "attention_mask": attention}
            passes.append(Prepared([inputs] * len(self.loaded), index[chosen], mask, 0))
        return passes


def _pixels(loaded: LoadedModel, images: list[Any]) -> torch.Tensor:
    return loaded.image_processor(images=images, return_tensors="pt")["pixel_values"]


# ----- checks -----------------------------------------------------------------------------------------
def probe_dims(
    loaded: list[LoadedModel], specs: list[ModuleSpec], probe: Prepared, device: torch.device
) -> dict[str, int]:
    """Module key -> width, from one small forward pass; all modules must give rows the same way."""
    records = record_batch(loaded, specs, probe, device)
    per_token = {key: x.ndim == 3 for key, x in records.items()}
    for key, x in records.items():
        if x.ndim not in (2, 3):
            raise ConfigError(
                f"module {key!r} gives shape {list(x.shape)}; a harvest needs [batch, dim] or [batch, tokens, dim]"
            )
    if len(set(per_token.values())) > 1:
        token = next(k for k, v in per_token.items() if v)
        sample = next(k for k, v in per_token.items() if not v)
        raise ConfigError(
            f"modules give rows differently: {token!r} one per token [B, T, D], {sample!r} one per sample [B, D]; "
            "harvest them into separate stores"
        )
    return {key: int(x.shape[-1]) for key, x in records.items()}


def check_store_matches_model(store_manifest: StoreManifest, model: nn.Module, modules: list[str] | str) -> None:
    """ConfigError unless every module of `modules` is in the store with the width the model gives it."""
    if isinstance(modules, str):
        modules = [modules]
    specs = parse_modules(modules, [model])
    stored = store_manifest.dims
    for spec in specs:
        if spec.key not in stored:
            raise ConfigError(f"module {spec.key!r} is not in the store; it holds {', '.join(stored)}")
    device = next(model.parameters()).device
    dims = probe_dims([LoadedModel("model", model, "text")], specs, _dummy_batch(model), device)
    for key, dim in dims.items():
        if stored[key] != dim:
            raise ConfigError(
                f"module {key!r} has dim {stored[key]} in the store but {dim} in the model; "
                "evaluate with the model the store was harvested from"
            )


def _dummy_batch(model: nn.Module) -> Prepared:
    """A tiny input for a shape probe: two tokens, or a blank image of the model's size."""
    from sdlkit.harvest.models import model_kind

    one = torch.zeros(1, dtype=torch.int64)
    if model_kind(model) == "text":
        ids = torch.zeros(1, 2, dtype=torch.int64)
        return Prepared([{"input_ids": ids, "attention_mask": torch.ones_like(ids)}], one, torch.ones(1, 2).bool(), 0)
    config = getattr(model.config, "vision_config", model.config)
    size, channels = config.image_size, getattr(config, "num_channels", 3)
    return Prepared([{"pixel_values": torch.zeros(1, channels, size, size)}], one, None, 0)


def _check_models(loaded: list[LoadedModel], dataset: Dataset, context_size: int) -> None:
    for item in loaded:
        if item.kind == "text":
            check_context_size(item.model, context_size, item.name)
        if item.kind != dataset.kind:
            raise ConfigError(
                f"model {item.name} takes {'images' if item.kind == 'image' else 'text'} but {dataset.path} "
                f"holds {dataset.kind} samples; give {'an image folder' if item.kind == 'image' else 'a text file'}"
            )
    if dataset.kind == "text" and len(loaded) > 1:
        vocab = loaded[0].tokenizer.get_vocab()
        for item in loaded[1:]:
            other = item.tokenizer.get_vocab()
            if other != vocab:
                raise ConfigError(
                    f"models {loaded[0].name} and {item.name} have different tokenizer vocabularies "
                    f"({len(vocab)} vs {len(other)} tokens); a crosscoder harvest needs one shared tokenizer "
                    "so that token rows align"
                )


def _precheck_store(out: str, resume: bool, overwrite: bool) -> StoreManifest | None:
    """Refuse a store folder that cannot be used before any model is loaded (the writer checks it all again);
    the manifest of the store to resume, if resuming."""
    folder = Path(out)
    if resume:
        return resumable_manifest(folder)
    if not overwrite and folder.is_dir() and any(folder.iterdir()):
        raise StoreError(
            f"{folder} already exists and is not empty; resume it (--resume), replace it (--overwrite) "
            "or choose another folder"
        )
    return None


def _check_fingerprint(resuming: StoreManifest | None, dataset: Dataset, out: str) -> str | None:
    """The data's fingerprint (Dataset.fingerprint); when resuming, refuse data that are not those the
    store was begun with, so a store never mixes two datasets."""
    fingerprint = dataset.fingerprint()
    if resuming is None:
        return fingerprint
    recorded = resuming.source.get("data_fingerprint")
    if recorded is None and "data_fingerprint" not in resuming.source:  # a store begun before fingerprints
        print(
            f"sdlkit: warning: {out} records no fingerprint of its data; cannot check it is unchanged", file=sys.stderr
        )
        return None
    if recorded != fingerprint:
        raise StoreError(
            f"cannot resume {out}: the data {dataset.path} are not those the harvest began with (their content "
            "fingerprint differs); resume with the original data, or harvest into a new folder"
        )
    return fingerprint


def _source_name(name: str) -> str:
    """A local path as an absolute path (a resume from another folder compares equal); a hub name as given."""
    path = Path(name).expanduser()
    return str(path.resolve()) if path.exists() else name


def _version() -> str:
    from sdlkit import __version__

    return __version__
