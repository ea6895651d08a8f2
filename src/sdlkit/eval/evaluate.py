"""`sdlkit eval`: how well a saved dictionary reconstructs harvested activations, and (for language
models) what splicing its reconstruction into the model costs.

Reconstruction metrics stream over store rows: the held-out rows when the checkpoint was trained on
this store (the rows its run never saw), else every row (up to `max_rows`). A checkpoint's weights are
for raw activations (runs on normalised data save folded weights), so rows are read unscaled.
Splice metrics (CE loss recovered, KL) re-run the harvested model on the dataset samples those rows
came from, with the dictionary's reconstruction in place of the module's output.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from sdlkit.config import resolve_device
from sdlkit.core.model import SparseDictionary
from sdlkit.data.source import Batch
from sdlkit.errors import ConfigError, ShapeError
from sdlkit.eval.metrics import DENSE_THRESHOLD, streaming_metrics
from sdlkit.io import load, read_config, resolve_checkpoint
from sdlkit.options import with_overrides
from sdlkit.store import ActivationStore, StoreDataConfig, StoreSource


def _modules(
    run_data: dict[str, Any] | None, store: ActivationStore, inputs: list[str] | None, targets: list[str] | None
) -> tuple[list[str], list[str]]:
    """The store modules feeding x_p and x_r: as given, else as the checkpoint's run used, else all modules."""
    if inputs is None and run_data is not None:
        inputs, targets = run_data.get("inputs"), targets or run_data.get("targets")
    inputs = store.check_modules(inputs, "--inputs")
    targets = store.check_modules(targets, "--targets") if targets else inputs
    return inputs, targets


def _same_store(run_data: dict[str, Any] | None, store: Path) -> bool:
    if not run_data or "store" not in run_data:
        return False
    try:
        return Path(run_data["store"]).resolve() == store.resolve()
    except OSError:
        return False


def _batches(
    store: ActivationStore, inputs: list[str], targets: list[str], start: int, stop: int, batch_size: int
) -> Iterator[Batch]:
    for rows in store.iter_rows(sorted(set(inputs) | set(targets)), batch_size, start=start, stop=stop):
        x_p = torch.cat([rows[name].float() for name in inputs], dim=1)
        x_r = x_p if targets == inputs else torch.cat([rows[name].float() for name in targets], dim=1)
        yield Batch(x_p, x_r)


@dataclass(frozen=True)
class EvalOptions:
    """What `evaluate_checkpoint` reads and measures; the fields mirror `sdlkit eval`'s options."""

    inputs: list[str] | None = None
    """Store modules feeding x_p (None: as the checkpoint's run used, else every module)."""
    targets: list[str] | None = None
    """Store modules feeding x_r (None: as the run used, else the inputs)."""
    all_rows: bool = False
    """Every row, even when the checkpoint was trained on this store (default: its held-out rows only)."""
    max_rows: int | None = None
    """Read at most this many rows."""
    batch_size: int = 4096
    """Rows per batch."""
    device: str = "cpu"
    """cpu, cuda[:N] or auto."""
    dense_threshold: float = DENSE_THRESHOLD
    """A latent firing on more than this share of rows counts as dense."""
    splice: bool = False
    """Also splice the dictionary into the language model: CE loss recovered and KL."""
    splice_samples: int = 64
    """Dataset samples the splice metrics run on."""


def evaluate_checkpoint(
    checkpoint: str | os.PathLike,
    store_path: str | os.PathLike,
    options: EvalOptions | None = None,
    **overrides: Any,
) -> dict[str, Any]:
    """FVU, MSE, L0, never-fired and dense fractions of `checkpoint` on the rows of a store, the training
    run's dead_fraction at that checkpoint (None for a checkpoint that does not record one), plus, with
    `splice`, CE loss recovered and KL with the dictionary spliced into the language model. `options`
    (or keyword overrides of its fields, e.g. `all_rows=True`): see EvalOptions."""
    options = with_overrides(EvalOptions, options, overrides, "eval")
    try:
        device = resolve_device(options.device)
    except ValueError as err:
        raise ConfigError(str(err)) from None
    folder = resolve_checkpoint(checkpoint)
    saved = read_config(folder)
    run_data = saved.get("run", {}).get("data")
    model = load(folder, device)
    store = ActivationStore(store_path)
    inputs, targets = _modules(run_data, store, options.inputs, options.targets)
    _check_widths(store, inputs, targets, model)
    start, stop, rows_kind = _row_range(run_data, store, options)
    batches = _batches(store, inputs, targets, start, stop, options.batch_size)
    report: dict[str, Any] = {
        "checkpoint": str(folder),
        "store": str(store.path),
        "inputs": inputs,
        "targets": targets,
        "rows": f"{rows_kind} [{start}, {stop})",
        **streaming_metrics(model, batches, options.dense_threshold),
        "dead_fraction": saved.get("dead_fraction"),  # the training run's, at this checkpoint; None if unknown
    }
    if options.splice:
        report.update(_splice(model, store, inputs, targets, start, stop, options.splice_samples, device))
    return report


def _check_widths(store: ActivationStore, inputs: list[str], targets: list[str], model: SparseDictionary) -> None:
    """ShapeError unless the modules' widths are the dictionary's n_in and n_out."""
    n_in = sum(store.modules[m] for m in inputs)
    n_out = sum(store.modules[m] for m in targets)
    if (n_in, n_out) != (model.n_in, model.n_out):
        raise ShapeError(
            f"the store's modules give n_in={n_in} ({', '.join(inputs)}), n_out={n_out} but the checkpoint has "
            f"n_in={model.n_in}, n_out={model.n_out}: pick the modules it was trained on with --inputs/--targets"
        )


def _row_range(run_data: dict[str, Any] | None, store: ActivationStore, options: EvalOptions) -> tuple[int, int, str]:
    """(start, stop, what they are): the held-out rows when the checkpoint was trained on this store, else all
    rows; at most `max_rows` of them."""
    if _same_store(run_data, store.path) and not options.all_rows:
        assert run_data is not None
        held_out = StoreSource(StoreDataConfig(**{**run_data, "normalize": False}), prefetch=False)
        start, rows_kind = held_out.n_train, "held-out rows (never trained on)"
    else:
        start, rows_kind = 0, "all rows"
    stop = store.rows if options.max_rows is None else min(store.rows, start + options.max_rows)
    return start, stop, rows_kind


def _splice(
    model: SparseDictionary,
    store: ActivationStore,
    inputs: list[str],
    targets: list[str],
    start: int,
    stop: int,
    n_samples: int,
    device: str,
) -> dict[str, float]:
    """Splice metrics on the first `n_samples` dataset samples behind rows [start, stop)."""
    from sdlkit.eval.splice import splice_metrics
    from sdlkit.harvest import check_store_matches_model, load_model, open_dataset

    source = store.manifest.source
    models = source.get("models") or source.get("model")
    if isinstance(models, list):
        if len(models) != 1:
            raise ConfigError("splice metrics need a dictionary on one model; this store was harvested from several")
        models = models[0]
    if len(inputs) != 1 or len(targets) != 1:
        raise ConfigError("splice metrics need one input and one target module (crosscoders are not spliced)")
    if not models or "data" not in source:
        raise ConfigError(f"the store {store.path} does not record the model and data it was harvested from")
    loaded = load_model(models, device=device, trust_remote_code=bool(source.get("trust_remote_code", False)))
    if loaded.kind != "text":
        raise ConfigError("splice metrics (CE loss recovered, KL) are for language models; this store is from images")
    check_store_matches_model(store.manifest, loaded.model, sorted({*inputs, *targets}))
    dataset = open_dataset(
        source["data"], text_column=source.get("text_column") or "text", split=source.get("split") or "train"
    )
    if source.get("shuffle_seed") is not None:  # sample ids are positions in the harvest's visiting order
        dataset = dataset.shuffled(int(source["shuffle_seed"]))
    samples = torch.unique(store.read_rows(start, stop, [])["sample"])[:n_samples]
    texts = [dataset.load(int(i), int(i) + 1).items[0] for i in samples]
    target, read = targets[0], inputs[0]
    model = model.to(loaded.model.device).eval()

    def dictionary(x: torch.Tensor) -> torch.Tensor:
        return model(x.to(model.W_E.dtype)).x_hat.to(x.dtype)

    return splice_metrics(
        loaded.model,
        loaded.tokenizer,
        texts,
        target,
        dictionary,
        input_module=None if read == target else read,
        context_size=int(source.get("context_size", 128)),
        include_special=bool(source.get("include_special", False)),
    )
