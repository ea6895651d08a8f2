"""Checkpoint folders: `config.json` + `weights.safetensors`, written atomically, read back strictly.

A checkpoint is written into a temporary sibling folder, every file fsynced, then renamed into place:
a run killed mid-write leaves only a `.tmp-*` folder that nothing loads. A single file (results, a log,
a manifest, a store shard) is replaced the same way by `write_atomically`, the one durable writer: a
temporary file beside it, fsynced, renamed, the folder fsynced. Files and folders get the modes `open()`
and `mkdir` give under the user's umask. `config.json` records the
SHA-256 of the weights file, so a truncated or altered file is named as corrupt instead of loading
wrong numbers. No pickle anywhere: nested state (optimiser, scheduler) is split into tensors for
safetensors and a JSON skeleton that points at them.

Every folder sdlkit creates for a command (a run, a bench, a theory check, an export) holds a marker
file, `.sdlkit`, naming its kind: `--overwrite` deletes a folder only when sdlkit wrote it as that kind
(`remove_owned_folder`), so a mistyped `--out` can never delete a store, a dataset or a home folder.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import re
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file

from sdlkit.errors import CheckpointError, SdlkitError

FORMAT_VERSION = 1
DICTIONARY_FORMAT = "sdlkit-dictionary"
CONFIG_FILE = "config.json"
WEIGHTS_FILE = "weights.safetensors"
MARKER_FILE = ".sdlkit"
"""Written into every folder sdlkit creates for a command; holds {"kind": "run" | "bench" | ...}."""


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 22), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _fsync(path: Path) -> None:
    """Flush what the system holds of the file or folder at `path` to the disk (a folder: its entries)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_atomically(path: Path, write: Callable[[Path], None]) -> None:
    """Replace the file `path` with the one `write(tmp)` writes at a temporary path beside it, durably: the
    temporary file is fsynced, renamed over `path`, and the folder fsynced, so readers see the old file or
    the whole new one, never half, even after a power cut. A failed write (a full disk) leaves the old file
    and no temporary. `write` creates the file as `open()` does (mode 0666 less the umask; `save_file_checked`
    gives safetensors files that mode too)."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        tmp.unlink(missing_ok=True)  # a leftover keeps its mode: start afresh so the umask decides
        write(tmp)
        _fsync(tmp)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync(path.parent)


def _umask() -> int:
    """The process's umask, read from /proc where the system has it (setting and restoring it elsewhere)."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def write_folder_atomically(target: Path, write: Callable[[Path], None]) -> Path:
    """Call `write(tmp_dir)` to fill a temporary folder, fsync its files, then rename it to `target`
    (replacing it) and fsync the parent folder."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{target.name}-", dir=target.parent))
    os.chmod(tmp, 0o777 & ~_umask())  # mkdtemp makes it 0700: give the mode mkdir would
    try:
        write(tmp)
        for file in tmp.iterdir():
            _fsync(file)
        if target.exists():
            old = target.with_name(f".old-{target.name}-{os.getpid()}")
            target.rename(old)
            tmp.rename(target)
            shutil.rmtree(old)
        else:
            tmp.rename(target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    _fsync(target.parent)
    return target


def clean_interrupted_writes(parent: Path) -> None:
    """Remove the `.tmp-*` folders that killed `write_folder_atomically` calls left in `parent` (nothing
    loads them: a checkpoint exists only once renamed into place)."""
    if Path(parent).is_dir():
        for path in Path(parent).glob(".tmp-*"):
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path)


def write_text(path: Path, text: str, mode: str = "w") -> None:
    """Write (mode "w") or append ("a") `text` to `path`; a failed write (a full disk) raises an OSError
    that names the file, which Python's own write errors do not."""
    try:
        with open(path, mode, encoding="utf-8") as handle:
            handle.write(text)
    except OSError as err:
        if err.filename is not None:
            raise
        raise OSError(err.errno, err.strerror or str(err), str(path)) from None


def write_json(path: Path, obj: Any) -> None:
    write_text(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")


def write_text_atomically(path: Path, text: str) -> None:
    """Replace `path` with `text` durably, in one rename (`write_atomically`)."""
    write_atomically(path, lambda tmp: write_text(tmp, text))


def write_json_atomically(path: Path, obj: Any) -> None:
    """Replace `path` with `obj` as JSON durably, in one rename (`write_atomically`)."""
    write_text_atomically(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")


def save_file_checked(tensors: dict[str, torch.Tensor], path: Path, metadata: dict[str, str] | None = None) -> None:
    """safetensors' save_file, with a failed write (full disk, read-only folder) raised as the OSError it
    is, naming the file (safetensors reports it as a SafetensorError holding "os error N")."""
    try:
        save_file(tensors, str(path), metadata=metadata)
    except SafetensorError as err:
        match = re.search(r"os error (\d+)", str(err))
        code = int(match.group(1)) if match else errno.EIO
        raise OSError(code, os.strerror(code), str(path)) from None
    os.chmod(path, 0o666 & ~_umask())  # safetensors creates its files 0600: give the mode open() would


def _unshared(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The tensors, contiguous and detached, each one whose memory another already holds copied (safetensors
    refuses tensors that share memory; copying only those keeps a large shard or checkpoint from being held
    twice)."""
    owned: dict[str, torch.Tensor] = {}
    storages: set[int] = set()
    for name, tensor in tensors.items():
        tensor = tensor.detach().contiguous()
        if tensor.untyped_storage().data_ptr() in storages:
            tensor = tensor.clone()
        storages.add(tensor.untyped_storage().data_ptr())
        owned[name] = tensor
    return owned


def save_tensors(path: Path, tensors: dict[str, torch.Tensor]) -> None:
    """Write `tensors` as the safetensors file `path` (inside a folder `write_folder_atomically` fills)."""
    save_file_checked(_unshared(tensors), path)


def save_tensors_atomically(
    path: Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None = None
) -> None:
    """Replace the safetensors file `path` durably, in one rename (`write_atomically`); `metadata` (strings)
    goes into its header."""
    owned = _unshared(tensors)
    write_atomically(path, lambda tmp: save_file_checked(owned, tmp, metadata))


def load_tensors(path: Path, device: str | torch.device = "cpu") -> dict[str, torch.Tensor]:
    if not path.is_file():
        raise CheckpointError(f"checkpoint file {path} is missing")
    try:
        return load_file(str(path), device=str(device))
    except (SafetensorError, OSError, ValueError) as err:
        raise CheckpointError(f"checkpoint file {path} is corrupt or truncated ({err})") from None


def tensor_shapes(path: Path) -> dict[str, list[int]]:
    """Name -> shape of every tensor in a safetensors file, read from its header (CheckpointError if broken)."""
    try:
        with safe_open(str(path), "pt") as handle:
            return {name: list(handle.get_slice(name).get_shape()) for name in handle.keys()}  # noqa: SIM118
    except (SafetensorError, ValueError) as err:
        raise CheckpointError(f"checkpoint file {path} is corrupt or truncated ({err})") from None


def read_json(path: Path, error: type[SdlkitError] = CheckpointError, fix: str = "", kind: type = dict) -> Any:
    """The JSON value (a `kind`: object or list) in the file at `path`; unreadable JSON or another JSON
    type raises `error` naming the file (and `fix`, e.g. "; re-harvest the store")."""
    try:
        value = json.loads(Path(path).read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise error(f"{path} is corrupt ({err}){fix}") from None
    if not isinstance(value, kind):
        wanted = "a JSON object" if kind is dict else f"a JSON {kind.__name__}"
        raise error(f"{path} must hold {wanted}, got {type(value).__name__}{fix}")
    return value


def read_json_object(path: Path, error: type[SdlkitError] = CheckpointError, fix: str = "") -> dict[str, Any]:
    """The JSON object in the file at `path` (see `read_json`)."""
    return read_json(path, error, fix)


def read_config(folder: Path) -> dict[str, Any]:
    """The folder's config.json, after checking that the weights file matches its recorded hash."""
    folder = Path(folder)
    if not folder.is_dir():
        raise CheckpointError(f"no checkpoint at {folder}: it is not a folder")
    config_path = folder / CONFIG_FILE
    if not config_path.is_file():
        raise CheckpointError(f"{folder} is not a checkpoint: {CONFIG_FILE} is missing")
    config = read_json_object(config_path)
    weights = folder / WEIGHTS_FILE
    if not weights.is_file():
        raise CheckpointError(f"checkpoint file {weights} is missing")
    expected = config.get("weights_sha256")
    if expected is not None and sha256(weights) != expected:
        raise CheckpointError(f"checkpoint file {weights} is corrupt: its SHA-256 does not match config.json")
    return config


# ----- nested state without pickle ----------------------------------------------------------------
def flatten_state(obj: Any, prefix: str = "") -> tuple[Any, dict[str, torch.Tensor]]:
    """Split nested dicts/lists holding tensors into (JSON skeleton, {key: tensor})."""
    tensors: dict[str, torch.Tensor] = {}

    def walk(node: Any, path: str) -> Any:
        if isinstance(node, torch.Tensor):
            tensors[path] = node
            return {"__tensor__": path}
        if isinstance(node, dict):
            if not all(isinstance(k, str | int) for k in node):
                raise TypeError(f"cannot store dict keys of {path!r}: {list(node)[:3]}")
            return {"__dict__": [[k, walk(v, f"{path}.{k}")] for k, v in node.items()]}
        if isinstance(node, list | tuple):
            return [walk(v, f"{path}.{i}") for i, v in enumerate(node)]
        if node is None or isinstance(node, bool | int | float | str):
            return node
        raise TypeError(f"cannot store {type(node).__name__} at {path!r} without pickle")

    return walk(obj, prefix), tensors


def unflatten_state(skeleton: Any, tensors: dict[str, torch.Tensor]) -> Any:
    """Inverse of `flatten_state` (tuples come back as lists, int dict keys stay ints)."""
    if isinstance(skeleton, dict):
        if "__tensor__" in skeleton:
            return tensors[skeleton["__tensor__"]]
        return {k: unflatten_state(v, tensors) for k, v in skeleton["__dict__"]}
    if isinstance(skeleton, list):
        return [unflatten_state(v, tensors) for v in skeleton]
    return skeleton


# ----- dictionaries ---------------------------------------------------------------------------------
def write_dictionary(
    folder: Path,
    model: torch.nn.Module,
    extra: dict[str, Any] | None = None,
    tensors: dict[str, torch.Tensor] | None = None,
) -> None:
    """Write `config.json` + `weights.safetensors` for `model` (or `tensors` in its place: the same
    names and shapes, e.g. weights folded for raw activations) into an existing (temporary) folder."""
    save_tensors(folder / WEIGHTS_FILE, model.named_tensors() if tensors is None else tensors)
    config = {
        "format": DICTIONARY_FORMAT,
        "format_version": FORMAT_VERSION,
        "model": model.config.model_dump(mode="json"),
        **(extra or {}),
        "weights_sha256": sha256(folder / WEIGHTS_FILE),
    }
    write_json(folder / CONFIG_FILE, config)


def save(model: torch.nn.Module, path: str | os.PathLike, extra: dict[str, Any] | None = None) -> Path:
    """Save a dictionary as a checkpoint folder (atomically). `extra` goes into config.json."""
    return write_folder_atomically(Path(path), lambda tmp: write_dictionary(tmp, model, extra))


def resolve_checkpoint(path: str | os.PathLike) -> Path:
    """A checkpoint folder as given, or the latest checkpoint inside a training run's folder."""
    path = Path(path)
    if (path / CONFIG_FILE).is_file() or not (path / "checkpoints").is_dir():
        return path
    steps = sorted(p for p in (path / "checkpoints").iterdir() if p.name.startswith("step-"))
    if not steps:
        raise CheckpointError(f"run folder {path} holds no finished checkpoint in {path / 'checkpoints'}")
    return steps[-1]


def load(path: str | os.PathLike, device: str | torch.device = "cpu"):
    """Load the SparseDictionary saved at `path` (a checkpoint folder, or a run folder: its latest)."""
    from sdlkit.core.model import ModelConfig, SparseDictionary

    folder = resolve_checkpoint(path)
    config = read_config(folder)
    try:
        model_config = ModelConfig.model_validate(config["model"])
    except (KeyError, ValueError) as err:
        raise CheckpointError(f"{folder / CONFIG_FILE} does not describe a dictionary: {err}") from None
    model = SparseDictionary.empty(model_config)
    load_weights(model, load_tensors(folder / WEIGHTS_FILE), folder)
    return model.to(device)


def load_weights(model: torch.nn.Module, tensors: dict[str, torch.Tensor], origin: Path) -> None:
    """Copy `tensors` into `model`, refusing missing, extra or mis-shaped tensors."""
    expected = model.named_tensors()
    missing, extra = sorted(set(expected) - set(tensors)), sorted(set(tensors) - set(expected))
    if missing or extra:
        raise CheckpointError(
            f"{origin / WEIGHTS_FILE} does not match its config: missing {missing}, unexpected {extra}"
        )
    for name, target in expected.items():
        source = tensors[name]
        if source.shape != target.shape or source.dtype != target.dtype:
            raise CheckpointError(
                f"{origin / WEIGHTS_FILE}: {name} is {list(source.shape)} {source.dtype} but the config "
                f"describes {list(target.shape)} {target.dtype}: the files are from different configs"
            )
        with torch.no_grad():
            target.copy_(source)


# ----- folders sdlkit owns --------------------------------------------------------------------------
def mark_folder(folder: Path, kind: str) -> Path:
    """Create `folder` (and its parents) as sdlkit's `kind` folder: its marker says so to `--overwrite`.
    A folder that already holds files is not marked: sdlkit did not create it, so it is not its to delete
    (one it wrote before the marker existed is still recognised by `folder_kind`)."""
    folder = Path(folder)
    fresh = not folder.exists() or not any(folder.iterdir())
    folder.mkdir(parents=True, exist_ok=True)
    if fresh:
        write_json_atomically(folder / MARKER_FILE, {"kind": kind, "written_by": "sdlkit"})
    return folder


def folder_kind(folder: Path) -> str | None:
    """What sdlkit wrote at `folder` ("run", "bench", "theory", "export", "checkpoint", "store", "browser"), from its
    marker, else from its own manifest (folders written before the marker existed); None if not sdlkit's."""
    folder = Path(folder)
    marker = folder / MARKER_FILE
    if marker.is_file():
        kind = _json_or_none(marker)
        return kind.get("kind") if isinstance(kind, dict) and isinstance(kind.get("kind"), str) else None
    if _json_field(folder / "manifest.json", "format") == "sdlkit-activation-store":  # sdlkit.store.format
        return "store"
    if (folder / "bench.json").is_file():
        return "bench"
    if (folder / "data" / "meta.js").is_file():  # sdlkit.browse.site, before the marker
        return "browser"
    if _json_field(folder / CONFIG_FILE, "format") == DICTIONARY_FORMAT:
        return "checkpoint"
    checkpoints = folder / "checkpoints"
    if checkpoints.is_dir() and any(
        _json_field(step / CONFIG_FILE, "format") == DICTIONARY_FORMAT for step in checkpoints.glob("step-*")
    ):
        return "run"
    results = _json_or_none(folder / "results.json")
    if isinstance(results, list) and results and all(isinstance(r, dict) and "claim" in r for r in results):
        return "theory"
    return None


def check_output_folder(folder: Path, kind: str, flag: str = "--out") -> None:
    """Refuse an output path that is a file, or a non-empty folder that is not sdlkit's `kind` folder
    (writing into a store or someone's project folder would mix them)."""
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise SdlkitError(f"{flag} {folder} is a file, not a folder: choose a folder path")
    if folder.is_dir() and any(folder.iterdir()):
        found = folder_kind(folder)
        if found != kind:
            what = f"an sdlkit {found} folder" if found else "files sdlkit did not write"
            raise SdlkitError(f"{flag} {folder} holds {what}, not a {kind} folder: choose another folder")


def check_replaceable(folder: Path, kind: str, flag: str = "--out") -> None:
    """For `--overwrite`: refuse unless `folder` is absent, empty, or sdlkit's own `kind` folder."""
    folder = Path(folder)
    if folder.is_symlink() or (folder.exists() and not folder.is_dir()):
        raise SdlkitError(f"{flag} {folder} is not a folder: refusing to overwrite it; choose a folder path")
    found = folder_kind(folder) if folder.exists() else kind
    if found != kind and any(folder.iterdir()):
        what = f"an sdlkit {found} folder, not a {kind} folder" if found else f"not sdlkit's (no {MARKER_FILE} in it)"
        raise SdlkitError(f"refusing to overwrite {folder}: it is {what}; delete it yourself or choose another {flag}")


def remove_owned_folder(folder: Path, kind: str, flag: str = "--out") -> None:
    """For `--overwrite`: delete `folder` when sdlkit wrote it as a `kind` folder (or it is empty); refuse
    anything else (`check_replaceable`). Nothing sdlkit did not write is ever deleted."""
    check_replaceable(folder, kind, flag)
    if Path(folder).exists():
        try:
            shutil.rmtree(folder)
        except OSError as err:  # rmtree names the file relative to the folder it was in
            raise OSError(err.errno, f"cannot delete it: {err.strerror or err}", str(folder)) from None


def _json_or_none(path: Path) -> Any:
    try:
        return json.loads(path.read_text()) if path.is_file() else None
    except (OSError, ValueError):
        return None


def _json_field(path: Path, key: str) -> Any:
    value = _json_or_none(path)
    return value.get(key) if isinstance(value, dict) else None
