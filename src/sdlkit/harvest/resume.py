"""What a store records of its harvest, and the checks that let a resume continue it safely.

The store's `source` dict names the models, modules, data (local paths made absolute) and every option that
shapes the rows, plus the data's content fingerprint; StoreWriter.resume refuses a harvest whose record
differs, so a resumed store never mixes two settings or two datasets. The folder is checked before any
model is loaded, so a mistake costs no loading time.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from sdlkit.errors import StoreError
from sdlkit.harvest.datasets import Dataset
from sdlkit.harvest.models import ModuleSpec
from sdlkit.harvest.settings import HarvestOptions
from sdlkit.store import StoreManifest
from sdlkit.store.opening import resumable_manifest


def precheck_store(out: str, resume: bool, overwrite: bool) -> StoreManifest | None:
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


def check_fingerprint(resuming: StoreManifest | None, dataset: Dataset, out: str) -> str | None:
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


def source_record(
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


def _source_name(name: str) -> str:
    """A local path as an absolute path (a resume from another folder compares equal); a hub name as given."""
    path = Path(name).expanduser()
    return str(path.resolve()) if path.exists() else name


def _version() -> str:
    from sdlkit import __version__

    return __version__
