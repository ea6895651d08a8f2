"""The feature browser: a static HTML site of a trained dictionary's latents on an activation store.

    from sdlkit.browse import build_browser
    build_browser("runs/topk", "stores/minilm-l3", "browser/")      # then open browser/index.html

Two streaming passes over the store (sdlkit.browse.scan) collect each latent's firing frequency,
maximum, histogram, top activating rows with their token context, and the labels of the rows it fires
on; sdlkit.browse.site writes the pages. Layout ideas from SAEDashboard and Neuronpedia (index of
latents; per latent: stats line, histogram, top tokens, neighbours, highlighted contexts); no code.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

from sdlkit.browse.scan import LatentScan, ScanOptions, scan_store
from sdlkit.browse.site import write_site
from sdlkit.browse.tokens import load_tokenizer, token_text
from sdlkit.errors import ConfigError
from sdlkit.harvest.reopen import harvested_dataset
from sdlkit.io import check_output_folder, load, mark_folder, read_config, remove_owned_folder, resolve_checkpoint
from sdlkit.store import ActivationStore

__all__ = ["LatentScan", "ScanOptions", "build_browser", "scan_store"]


def build_browser(
    run: str | os.PathLike,
    store: str | os.PathLike,
    out: str | os.PathLike,
    *,
    tokenizer: str | None = None,
    data: str | None = None,
    options: ScanOptions | None = None,
    device: str = "cpu",
    overwrite: bool = False,
) -> dict[str, Any]:
    """Scan `store` with the dictionary at `run` (a run folder: its latest checkpoint, or a checkpoint) and
    write the site into `out`; returns a summary: out, rows, latents, pages and the LatentScan itself.
    `tokenizer`: where token ids get their text (default: the model the store was harvested from, when that
    folder exists). `data`: the text file the store was harvested from, for the text of rows that stand for a
    whole sample (default: the path the store recorded, when it still holds the same data)."""
    options = options or ScanOptions()
    folder = resolve_checkpoint(run)
    config = read_config(folder)
    opened = ActivationStore(store)
    modules = _modules(config, opened)
    target = Path(out)
    _prepare_out(target, overwrite)
    model = load(folder, device)
    scan = scan_store(model, opened, modules, options)
    used = scan.context_tokens[scan.context_tokens >= 0].unique().tolist()
    tokens = token_text(_tokenizer(tokenizer, opened) if used else None, used)
    texts = _sample_texts(scan, opened, data)
    run_config = config.get("run", {})
    anchors = (run_config.get("train") or {}).get("anchors") or {}
    method = config.get("model", {}).get("method", {})
    meta = {
        "run": str(run),
        "checkpoint": str(folder),
        "store": str(store),
        "modules": modules,
        "model": (opened.manifest.source.get("models") or [None])[0],
        "method": ", ".join(f"{k} = {v}" if k != "name" else str(v) for k, v in method.items() if k in ("name", "k")),
        "rows": scan.rows,
        "per_sample": bool(used == [] and texts),
        "label_rows": scan.label_rows.tolist() if scan.label_rows is not None else None,
        "top_k": options.top_k,
        "window": options.window,
        "sdlkit_version": _version(),
    }
    pages = write_site(
        target, scan, model.W_D.detach().cpu(), (tokens, texts), meta, opened.labels, anchors.get("count", 0)
    )
    return {"out": str(target), "rows": scan.rows, "latents": model.n_latents, "pages": pages, "scan": scan}


def _modules(config: dict[str, Any], store: ActivationStore) -> list[str]:
    """The modules the dictionary was trained on (its run config's data.inputs), else all the store's."""
    data = config.get("run", {}).get("data") or {}
    inputs = data.get("inputs") if data.get("kind", "store") == "store" else None
    return store.check_modules(inputs, "the run's data.inputs")


def _prepare_out(out: Path, overwrite: bool) -> None:
    """Refuse a non-empty `out` unless overwrite; even then, replace only a folder sdlkit wrote as a browser
    (sdlkit.io's marker, as every command that writes a folder); then mark `out` as a browser folder."""
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise ConfigError(f"{out} already exists and is not empty; pass --overwrite to replace it, or choose another")
    if overwrite:
        remove_owned_folder(out, "browser")
    check_output_folder(out, "browser")
    mark_folder(out, "browser")


def _tokenizer(name: str | None, store: ActivationStore) -> Any:
    """The tokenizer asked for, else the store's model's when that folder exists (else None, with a note)."""
    if name is not None:
        return load_tokenizer(name)
    source = (store.manifest.source.get("models") or [None])[0]
    if source and Path(source).is_dir():
        try:
            return load_tokenizer(source)
        except ConfigError as err:
            print(f"sdlkit: warning: {err}; tokens show as ids", file=sys.stderr)
            return None
    print(
        f"sdlkit: note: no tokenizer (the store's model {source!r} is not a local folder); pass --tokenizer "
        "to show token text",
        file=sys.stderr,
    )
    return None


def _sample_texts(scan: LatentScan, store: ActivationStore, data: str | None) -> dict[int, str]:
    """sample id -> text for the top rows that stand for a whole sample (no token of their own), read from the
    data the store was harvested from; {} with a note when that data cannot be had (unless `data` was given:
    then its fault is an error)."""
    centre = (scan.context_tokens.shape[2] - 1) // 2
    whole = (scan.context_tokens[:, :, centre] < 0) & (scan.top_samples >= 0)
    samples = scan.top_samples[whole].unique().tolist()
    if not samples:
        return {}
    try:
        dataset = harvested_dataset(store.manifest.source, data)
    except ConfigError as err:
        if data is not None:
            raise
        print(f"sdlkit: note: rows stand for whole samples, whose text is not shown: {err}", file=sys.stderr)
        return {}
    return dict(zip(samples, dataset.texts(samples), strict=True))


def _version() -> str:
    from sdlkit import __version__

    return __version__
