"""The checks before a StoreWriter opens a folder: its arguments, the folder to create, the store to resume.

Each refusal is a StoreError that says what to do instead; nothing is deleted unless it is a store and the
caller asked to overwrite it.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from sdlkit.errors import StoreError
from sdlkit.store.format import MANIFEST_FILE, RESERVED_KEYS, StoreManifest, read_manifest


def check_modules(modules: dict[str, int]) -> None:
    """StoreError unless `modules` is a non-empty {name: positive width} with no reserved names."""
    if not isinstance(modules, dict) or not modules:
        raise StoreError("a store needs at least one module: modules = {name: dim, ...}")
    for name, dim in modules.items():
        if not isinstance(name, str) or not name or name in RESERVED_KEYS:
            raise StoreError(f"module name {name!r} is not allowed (empty, or reserved: {', '.join(RESERVED_KEYS)})")
        if not isinstance(dim, int) or isinstance(dim, bool) or dim < 1:
            raise StoreError(f"module {name!r} has dim {dim!r}; a positive integer is needed")


def check_labels(labels: list[str] | None) -> None:
    """StoreError unless `labels` is a list of label names, or None (an unlabelled store)."""
    if labels is not None and (not isinstance(labels, list) or not all(isinstance(x, str) for x in labels)):
        raise StoreError("store labels must be a list of label names (strings), or None for an unlabelled store")


def check_shard_rows(shard_rows: int) -> None:
    """StoreError unless `shard_rows` (rows per shard file) is a positive integer."""
    if not isinstance(shard_rows, int) or shard_rows < 1:
        raise StoreError(f"shard_rows = {shard_rows!r} must be a positive integer")


def normalise_source(source: dict[str, Any]) -> dict[str, Any]:
    """`source` as it reads back from JSON (so a resumed harvest compares like with like)."""
    if not isinstance(source, dict):
        raise StoreError(f"store source must be a dict, got {type(source).__name__}")
    try:
        return json.loads(json.dumps(source))
    except (TypeError, ValueError) as err:
        raise StoreError(f"store source must be JSON-serialisable ({err})") from None


def prepare_folder(folder: Path, overwrite: bool) -> None:
    """Make `folder` an empty folder for a new store: an existing non-empty one only with overwrite=True, and
    then only if it holds a store (anything else is left for the user to delete)."""
    if folder.exists() and not folder.is_dir():
        raise StoreError(f"cannot create a store at {folder}: it is a file; choose another path")
    if folder.is_dir() and any(folder.iterdir()):
        if not overwrite:
            raise StoreError(
                f"{folder} already exists and is not empty; resume it (--resume), replace it (--overwrite) "
                "or choose another folder"
            )
        if not (folder / MANIFEST_FILE).is_file():
            raise StoreError(
                f"refusing to overwrite {folder}: it is not an activation store (no {MANIFEST_FILE}); "
                "delete it yourself or choose another folder"
            )
        shutil.rmtree(folder)
    folder.mkdir(parents=True, exist_ok=True)


def resumable_manifest(folder: Path) -> StoreManifest:
    """The manifest of the incomplete store at `folder`, or a StoreError saying why it cannot resume."""
    if not (folder / MANIFEST_FILE).is_file():
        raise StoreError(
            f"cannot resume {folder}: it holds no activation store ({MANIFEST_FILE} is missing); "
            "start a new harvest without --resume"
        )
    manifest = read_manifest(folder)
    if manifest.progress.complete:
        raise StoreError(
            f"cannot resume {folder}: the store is already complete ({manifest.rows} rows); "
            "use it as is, or harvest again with --overwrite"
        )
    return manifest


def check_same_harvest(folder: Path, manifest: StoreManifest, modules: dict[str, int], source: dict[str, Any]) -> None:
    """StoreError unless a resume asks for the store's modules (same order) and its recorded `source`
    (compared as it reads back from JSON), naming every setting that differs."""
    stored = manifest.dims
    if list(stored.items()) != list(modules.items()):
        raise StoreError(
            f"cannot resume {folder}: the store holds modules {stored} but this harvest asks for "
            f"{dict(modules)}; use the same modules, or harvest into a new folder"
        )
    source = normalise_source(source)
    if source != manifest.source:
        differences = _differences(manifest.source, source)
        raise StoreError(
            f"cannot resume {folder}: the harvest settings differ ({differences}); "
            "resume with the same settings, or harvest into a new folder"
        )


def _differences(stored: dict[str, Any], given: dict[str, Any]) -> str:
    """'key: store has A, this harvest has B; ...' for every top-level key that differs."""
    parts = []
    for key in [*stored, *(k for k in given if k not in stored)]:
        a, b = stored.get(key, "<unset>"), given.get(key, "<unset>")
        if a != b:
            parts.append(f"{key}: store has {json.dumps(a)}, this harvest has {json.dumps(b)}")
    return "; ".join(parts)
