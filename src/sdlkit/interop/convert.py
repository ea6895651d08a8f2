"""The two entry points: `export_checkpoint` writes an sdlkit checkpoint as a format's folder and
`import_checkpoint` turns a format's folder into an sdlkit checkpoint. A format is one module of this
package (`saelens`, `sparsify`) with CONFIG_FILE, WEIGHTS_FILE, `to_files(model, config, ...)` and
`from_files(folder) -> Imported`."""

from __future__ import annotations

import os
from pathlib import Path

from sdlkit.errors import ConfigError
from sdlkit.interop import saelens, sparsify
from sdlkit.io import (
    check_replaceable,
    load,
    mark_folder,
    read_config,
    resolve_checkpoint,
    save,
    save_tensors,
    write_folder_atomically,
    write_json,
)

MODULES = {"saelens": saelens, "sparsify": sparsify}
FORMATS = tuple(MODULES)


def _format_module(fmt: str):
    if fmt not in MODULES:
        raise ConfigError(f"unknown checkpoint format {fmt!r}; known formats: {', '.join(FORMATS)}")
    return MODULES[fmt]


def _check_output(out: Path, overwrite: bool, kind: str, protected: Path | None = None) -> None:
    """Refuse to replace a non-empty folder unless asked, or one sdlkit did not write as a `kind` folder,
    and never replace the folder being read."""
    if protected is not None and out.resolve() in (protected.resolve(), *protected.resolve().parents):
        raise ConfigError(f"output folder {out} would replace the input {protected}: choose another output folder")
    if out.exists() and not out.is_dir():
        raise ConfigError(f"output {out} is a file: choose a folder path")
    if out.is_dir() and any(out.iterdir()):
        if not overwrite:
            raise ConfigError(f"output folder {out} is not empty: pass --overwrite to replace it")
        check_replaceable(out, kind)


def export_checkpoint(
    checkpoint_path: str | os.PathLike,
    out_dir: str | os.PathLike,
    fmt: str,
    *,
    hook_name: str | None = None,
    model_name: str | None = None,
    overwrite: bool = False,
) -> Path:
    """Write the sdlkit checkpoint at `checkpoint_path` (a checkpoint or run folder) as a folder in
    format `fmt` at `out_dir`; `hook_name` / `model_name` go into the metadata where the format has it.
    Returns `out_dir`."""
    module = _format_module(fmt)
    folder = resolve_checkpoint(checkpoint_path)
    config = read_config(folder)
    model = load(folder)
    model.eval()
    out = Path(out_dir)
    _check_output(out, overwrite, "export", protected=folder)
    cfg, tensors = module.to_files(model, config, hook_name=hook_name, model_name=model_name)

    def write(tmp: Path) -> None:
        mark_folder(tmp, "export")
        save_tensors(tmp / module.WEIGHTS_FILE, tensors)
        write_json(tmp / module.CONFIG_FILE, cfg)

    return write_folder_atomically(out, write)


def import_checkpoint(
    in_dir: str | os.PathLike, out_checkpoint: str | os.PathLike, fmt: str, *, overwrite: bool = False
) -> Path:
    """Read a `fmt` folder at `in_dir` and save it as an sdlkit checkpoint at `out_checkpoint`
    (loadable by `sdlkit.load`); config.json records the source config and every conversion step."""
    module = _format_module(fmt)
    in_dir = Path(in_dir)
    out = Path(out_checkpoint)
    _check_output(out, overwrite, "checkpoint", protected=in_dir)
    imported = module.from_files(in_dir)
    extra = {
        "imported": {
            "format": fmt,
            "from": str(in_dir),
            "kind": imported.kind,
            "notes": imported.notes,
            "source_config": imported.source,
        }
    }
    return save(imported.model, out, extra)
