"""Checkpoint folders: `config.json` + `weights.safetensors`, written atomically, read back strictly.

A checkpoint is written into a temporary sibling folder, every file fsynced, then renamed into place:
a run killed mid-write leaves only a `.tmp-*` folder that nothing loads. `config.json` records the
SHA-256 of the weights file, so a truncated or altered file is named as corrupt instead of loading
wrong numbers. No pickle anywhere: nested state (optimiser, scheduler) is split into tensors for
safetensors and a JSON skeleton that points at them.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from sdlkit.errors import CheckpointError, SdlkitError

FORMAT_VERSION = 1
CONFIG_FILE = "config.json"
WEIGHTS_FILE = "weights.safetensors"


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 22), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _fsync(path: Path) -> None:
    with open(path, "rb") as handle:
        os.fsync(handle.fileno())


def write_folder_atomically(target: Path, write: Callable[[Path], None]) -> Path:
    """Call `write(tmp_dir)` to fill a temporary folder, then rename it to `target` (replacing it)."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{target.name}-", dir=target.parent))
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
    return target


def write_json(path: Path, obj: Any) -> None:
    path.write_text(json.dumps(obj, indent=2, sort_keys=False) + "\n")


def write_json_atomically(path: Path, obj: Any) -> None:
    """Replace `path` with `obj` as JSON in one rename: readers see the old file or the new, never half."""
    tmp = path.with_name(f".{path.name}.tmp")
    write_json(tmp, obj)
    os.replace(tmp, path)


def save_tensors(path: Path, tensors: dict[str, torch.Tensor]) -> None:
    """safetensors needs contiguous tensors that share no memory."""
    save_file({k: v.detach().contiguous().clone() for k, v in tensors.items()}, str(path))


def load_tensors(path: Path, device: str | torch.device = "cpu") -> dict[str, torch.Tensor]:
    if not path.is_file():
        raise CheckpointError(f"checkpoint file {path} is missing")
    try:
        return load_file(str(path), device=str(device))
    except (SafetensorError, OSError, ValueError) as err:
        raise CheckpointError(f"checkpoint file {path} is corrupt or truncated ({err})") from None


def read_json_object(path: Path, error: type[SdlkitError] = CheckpointError, fix: str = "") -> dict[str, Any]:
    """The JSON object in the file at `path`; unreadable JSON or another JSON type raises `error`
    naming the file (and `fix`, e.g. "; re-harvest the store")."""
    try:
        value = json.loads(Path(path).read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise error(f"{path} is corrupt ({err}){fix}") from None
    if not isinstance(value, dict):
        raise error(f"{path} must hold a JSON object, got {type(value).__name__}{fix}")
    return value


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
        "format": "sdlkit-dictionary",
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
    from sdlkit.model import ModelConfig, SparseDictionary

    folder = resolve_checkpoint(path)
    config = read_config(folder)
    try:
        model_config = ModelConfig.model_validate(config["model"])
    except (KeyError, ValueError) as err:
        raise CheckpointError(f"{folder / CONFIG_FILE} does not describe a dictionary: {err}") from None
    model = SparseDictionary(model_config)
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
