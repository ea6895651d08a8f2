"""`sdlkit eval`: how well a saved dictionary reconstructs activations, what splicing its reconstruction into
a language model costs, and how well its latents line up with known directions.

Reconstruction metrics stream over rows, from an activation store or from an array file (`.npy`,
`.safetensors`, `.pt`, read a batch at a time, never whole): the held-out rows when the checkpoint was
trained on that store or file (the rows its run never saw), else every row (up to `max_rows`). A
checkpoint's weights are for raw activations (runs on normalised data save folded weights), so rows are
read unscaled. Splice metrics (CE loss recovered, KL) re-run the harvested model on the dataset samples a
store's rows came from, with the dictionary's reconstruction in place of the module's output. Known
directions are scored by the bench's recovery code (`sdlkit.eval.directions`).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from sdlkit.core.model import SparseDictionary
from sdlkit.data.array.files import ArrayFile, check_finite, open_array
from sdlkit.data.source import Batch
from sdlkit.devices import resolve_device
from sdlkit.errors import ConfigError, ShapeError
from sdlkit.eval.directions import DirectionFiles, load_directions, score_directions
from sdlkit.eval.metrics import DENSE_THRESHOLD, streaming_metrics
from sdlkit.io import load, read_config, resolve_checkpoint
from sdlkit.overrides import with_overrides
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
    data: str | os.PathLike | None = None
    """An array file of x_p rows (.npy, .safetensors, .pt) to evaluate on, instead of a store."""
    key: str | None = None
    """The tensor in a .safetensors/.pt `data` file that holds several."""
    targets_data: str | os.PathLike | None = None
    """An array file of x_r rows, row for row with `data` (None: x_r = x_p)."""
    targets_key: str | None = None
    """The tensor in a .safetensors/.pt `targets_data` file that holds several."""
    directions: DirectionFiles | str | os.PathLike | None = None
    """Known directions to score the latents against (a file: W_p, and W_r = W_p; or DirectionFiles)."""
    tau: float = 0.95
    """A direction counts as recovered when its best (or matched) |cos| exceeds tau."""
    matched: bool = True
    """Also score a one-to-one matching of latents to directions (memory grows as n_directions²)."""


def evaluate_checkpoint(
    checkpoint: str | os.PathLike,
    store_path: str | os.PathLike | None = None,
    options: EvalOptions | None = None,
    **overrides: Any,
) -> dict[str, Any]:
    """FVU, MSE, L0, never-fired and dense fractions of `checkpoint` on the rows of a store (`store_path`) or
    of an array file (`data`), and the training run's `dead_fraction` at that checkpoint (None for a checkpoint
    that records none); with `splice` (stores), CE loss recovered and KL with the dictionary spliced into the
    language model; with `directions`, the bench's recovery scores against them. `options` (or keyword
    overrides of its fields, e.g. `all_rows=True`): see EvalOptions."""
    options = with_overrides(EvalOptions, options, overrides, "eval")
    if (store_path is None) == (options.data is None):
        raise ConfigError("give the rows to evaluate on: an activation store (--store) or an array file (--data)")
    for flag, value in (("--batch-size", options.batch_size), ("--max-rows", options.max_rows)):
        if value is not None and value < 1:
            raise ConfigError(f"{flag} {value} is not allowed: it must be a positive number of rows")
    if options.splice and store_path is None:
        raise ConfigError("--splice needs --store: it re-runs the model on the samples a store's rows came from")
    device = resolve_device(options.device, "--device")
    folder = resolve_checkpoint(checkpoint)
    saved = read_config(folder)
    run_data = saved.get("run", {}).get("data")
    model = load(folder, device)
    scores: dict[str, Any] = {}
    if options.directions is not None:  # scored before the rows stream, so a bad file or tau fails at once
        files = options.directions
        directions = load_directions(model, files if isinstance(files, DirectionFiles) else DirectionFiles(files))
        scores = score_directions(model, directions, options.tau, options.matched)
    if store_path is not None:
        report = {"checkpoint": str(folder), **_on_store(model, run_data, store_path, options, device)}
    else:
        info, batches = _array_rows(model, run_data, options)
        report = {"checkpoint": str(folder), **info, **streaming_metrics(model, batches, options.dense_threshold)}
    report["dead_fraction"] = saved.get("dead_fraction")  # the training run's, at this checkpoint; None if unknown
    return report | scores


def _on_store(
    model: SparseDictionary,
    run_data: dict[str, Any] | None,
    store_path: str | os.PathLike,
    options: EvalOptions,
    device: str,
) -> dict[str, Any]:
    """The report's store part: which rows, their metrics and, with `splice`, the splice metrics."""
    store = ActivationStore(store_path)
    inputs, targets = _modules(run_data, store, options.inputs, options.targets)
    _check_widths(store, inputs, targets, model)
    start, stop, rows_kind = _row_range(run_data, store, options)
    batches = _batches(store, inputs, targets, start, stop, options.batch_size)
    report: dict[str, Any] = {
        "store": str(store.path),
        "inputs": inputs,
        "targets": targets,
        "rows": f"{rows_kind} [{start}, {stop})",
        **streaming_metrics(model, batches, options.dense_threshold),
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


def _array_rows(
    model: SparseDictionary, run_data: dict[str, Any] | None, options: EvalOptions
) -> tuple[dict[str, Any], Iterator[Batch]]:
    """(what is read, its batches) for `options.data` (x_p) and `options.targets_data` (x_r, else x_p)."""
    inputs = open_array(options.data, options.key, "--data")  # type: ignore[arg-type]
    targets = None
    if options.targets_data is not None:
        targets = open_array(options.targets_data, options.targets_key, "--targets-data")
    _check_array_widths(inputs, targets, model)
    start, stop, rows_kind = _array_row_range(run_data, inputs, options)
    info: dict[str, Any] = {"data": str(inputs.path), "rows": f"{rows_kind} [{start}, {stop})"}
    if targets is not None:
        info["targets_data"] = str(targets.path)
    return info, _array_batches(inputs, targets, start, stop, options.batch_size)


def _array_batches(
    inputs: ArrayFile, targets: ArrayFile | None, start: int, stop: int, batch_size: int
) -> Iterator[Batch]:
    """Rows [start, stop) of the files, `batch_size` at a time, as float32 batches (NaN/inf rows refused)."""
    for lo in range(start, stop, batch_size):
        hi = min(lo + batch_size, stop)
        x_p = check_finite(inputs.rows(lo, hi).float(), lo, inputs)
        x_r = x_p if targets is None else check_finite(targets.rows(lo, hi).float(), lo, targets)
        yield Batch(x_p, x_r)


def _check_array_widths(inputs: ArrayFile, targets: ArrayFile | None, model: SparseDictionary) -> None:
    """ShapeError unless the files' widths are the dictionary's n_in and n_out and they have as many rows."""
    if inputs.width != model.n_in:
        raise ShapeError(
            f"--data: {inputs.path} has rows of width {inputs.width} but the checkpoint reads n_in={model.n_in}"
        )
    if targets is None:
        if model.n_out != model.n_in:
            raise ShapeError(
                f"the checkpoint writes n_out={model.n_out} (not its n_in={model.n_in}): give its targets with "
                "--targets-data"
            )
        return
    if targets.width != model.n_out:
        raise ShapeError(
            f"--targets-data: {targets.path} has rows of width {targets.width} but the checkpoint writes "
            f"n_out={model.n_out}"
        )
    if targets.n_rows != inputs.n_rows:
        raise ShapeError(
            f"--targets-data has {targets.n_rows} rows but --data has {inputs.n_rows}: they must pair row for row"
        )


def _array_row_range(run_data: dict[str, Any] | None, file: ArrayFile, options: EvalOptions) -> tuple[int, int, str]:
    """(start, stop, what they are): the last `eval_rows` rows, which the run held out, when the checkpoint was
    trained on this file (`data: {kind: array, path: ...}` in its run config), else all rows; at most
    `max_rows` of them."""
    held_out = int(run_data.get("eval_rows") or 0) if _same_array(run_data, file) else 0
    if held_out and not options.all_rows:
        start, rows_kind = max(0, file.n_rows - held_out), "held-out rows (the run's last eval_rows, never trained on)"
    else:
        start, rows_kind = 0, "all rows"
    stop = file.n_rows if options.max_rows is None else min(file.n_rows, start + options.max_rows)
    return start, stop, rows_kind


def _same_array(run_data: dict[str, Any] | None, file: ArrayFile) -> bool:
    """Whether the run trained on this file (and tensor): run data of kind `array` naming its path."""
    if not run_data or run_data.get("kind") != "array" or not run_data.get("path"):
        return False
    try:
        same = Path(run_data["path"]).expanduser().resolve() == file.path
    except OSError:
        return False
    return same and run_data.get("key") in (None, file.key)


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
