"""Training checkpoints: the dictionary plus everything exact resume needs.

`RUN/checkpoints/step-XXXXXXXX/` holds `config.json` and `weights.safetensors` (loadable by
`sdlkit.load`), and `trainer_state.json` + `trainer_state.safetensors`: optimiser and scheduler state,
torch RNG states, the data-stream position, dead-latent counters and log accumulators. A run resumed
from it on CPU ends with the same weights, bit for bit, as one that never stopped.

config.json records the SHA-256 of both state files beside the weights' and the step: a state file
copied from another checkpoint, altered or truncated is refused instead of resuming on the wrong
weights.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from sdlkit.errors import CheckpointError
from sdlkit.io import (
    flatten_state,
    load_tensors,
    load_weights,
    read_config,
    save_tensors,
    sha256,
    unflatten_state,
    write_dictionary,
    write_folder_atomically,
    write_json,
)

STATE_JSON = "trainer_state.json"
STATE_TENSORS = "trainer_state.safetensors"
STATE_HASHES = "trainer_state_sha256"
"""config.json key: {file name: SHA-256} of the two state files."""

# Run-config fields that may change between a checkpoint and its resumption.
RESUMABLE_CHANGES = {
    "train.steps",
    "train.log_every",
    "train.eval_every",
    "train.tensorboard",
    "train.checkpoint_every",
    "train.keep_checkpoints",
    "train.progress",
    "device",
    "model.kernel",  # dense and sparse kernels compute the same function
}


def checkpoint_dir(run_dir: Path, step: int) -> Path:
    return Path(run_dir) / "checkpoints" / f"step-{step:08d}"


def list_checkpoints(run_dir: Path) -> list[Path]:
    """Finished checkpoints of a run, oldest first (temporary folders of interrupted writes excluded)."""
    folder = Path(run_dir) / "checkpoints"
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir() if p.is_dir() and p.name.startswith("step-"))


def save_training_checkpoint(
    run_dir: Path,
    step: int,
    model: torch.nn.Module,
    run_config: dict[str, Any],
    state: dict[str, Any],
    keep: int,
    weights: dict[str, torch.Tensor] | None = None,
    extra: dict[str, Any] | None = None,
) -> Path:
    """Write the checkpoint of `step` atomically, then delete all but the newest `keep`. `weights`
    replaces the model's own tensors in weights.safetensors; `extra` goes into config.json."""
    skeleton, tensors = flatten_state(state, "state")

    def write(tmp: Path) -> None:
        save_tensors(tmp / STATE_TENSORS, tensors)
        write_json(tmp / STATE_JSON, skeleton)
        hashes = {name: sha256(tmp / name) for name in (STATE_JSON, STATE_TENSORS)}
        record = {"step": step, "run": run_config, **(extra or {}), STATE_HASHES: hashes}
        write_dictionary(tmp, model, record, tensors=weights)

    path = write_folder_atomically(checkpoint_dir(run_dir, step), write)
    for old in list_checkpoints(run_dir)[:-keep]:
        for file in old.iterdir():
            file.unlink()
        old.rmdir()
    return path


def load_training_checkpoint(folder: Path, model: torch.nn.Module, device: torch.device) -> tuple[dict, dict]:
    """Load weights into `model`; return (the checkpoint's config.json, the trainer state), after checking
    that the state files are the ones written with these weights (their hashes and step)."""
    config = read_config(folder)
    load_weights(model, load_tensors(folder / "weights.safetensors", device), folder)
    state_json = folder / STATE_JSON
    if not state_json.is_file():
        raise CheckpointError(f"{folder} holds a dictionary but no trainer state ({STATE_JSON}): it cannot resume")
    for name, expected in (config.get(STATE_HASHES) or {}).items():  # absent in checkpoints written before
        if not (folder / name).is_file() or sha256(folder / name) != expected:
            raise CheckpointError(
                f"{folder / name} is not the trainer state written with these weights (its SHA-256 does not "
                "match config.json): resume from an intact checkpoint or start the run again"
            )
    tensors = load_tensors(folder / STATE_TENSORS, "cpu")
    try:
        state = unflatten_state(json.loads(state_json.read_text()), tensors)
    except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError, ValueError) as err:
        raise CheckpointError(f"{state_json} does not hold a trainer state ({type(err).__name__}: {err})") from None
    if not isinstance(state, dict) or state.get("step") != config.get("step"):
        found = state.get("step") if isinstance(state, dict) else None
        raise CheckpointError(
            f"{state_json} is the trainer state of step {found}, but the weights are of step {config.get('step')}: "
            "resume from an intact checkpoint or start the run again"
        )
    return config, state


def config_differences(saved: dict[str, Any], current: dict[str, Any], prefix: str = "") -> list[str]:
    """Dotted keys whose values differ between two nested config dicts."""
    keys = sorted(set(saved) | set(current))
    out = []
    for key in keys:
        path = f"{prefix}{key}"
        a, b = saved.get(key), current.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            out += config_differences(a, b, f"{path}.")
        elif a != b:
            out.append(path)
    return out
