"""Checkpoint exchange with other SAE libraries: SAELens and EleutherAI sparsify.

    export_checkpoint("runs/topk", "out/saelens", "saelens")      # cfg.json + sae_weights.safetensors
    import_checkpoint("their/sae", "ckpt", "sparsify")           # a normal sdlkit checkpoint

Every conversion is exact: the other library's forward pass on the written files gives the codes and
reconstructions of the sdlkit model (and back), up to float rounding. Where the other format cannot
express a dictionary (a crosscoder, a Gated transcoder, an input normalisation that is not linear),
the conversion refuses with one line that says so, instead of writing different numbers.

Each format is one module (`saelens`, `sparsify`) with `to_files(model, config) -> (cfg, tensors)` and
`from_files(folder) -> Imported`; this file holds what they share and the two entry points.
"""

from __future__ import annotations

import importlib
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from sdlkit.core.model import ModelConfig, SparseDictionary
from sdlkit.errors import CheckpointError, ConfigError
from sdlkit.io import (
    check_replaceable,
    load,
    load_weights,
    mark_folder,
    read_config,
    read_json_object,
    resolve_checkpoint,
    save,
    save_tensors,
    write_folder_atomically,
    write_json,
)
from sdlkit.methods import MethodConfig, method_config

FORMATS = ("saelens", "sparsify")

SDLKIT_DTYPES = {"float32": torch.float32, "float64": torch.float64, "bfloat16": torch.bfloat16}
"""The dtypes an sdlkit checkpoint may hold; float16 weights are widened to float32 on import (exact)."""


@dataclass
class Imported:
    """A dictionary read from another library's files, with what the conversion needs to record."""

    model: SparseDictionary
    kind: str
    """'sae' or 'transcoder': kept in config.json so a later export writes the same kind back."""
    source: dict[str, Any]
    """The original config file, as read."""
    notes: list[str] = field(default_factory=list)
    """Every transformation applied on the way in (folded biases, rescalings), in words."""


# ----- entry points -----------------------------------------------------------------------------------
def _format_module(fmt: str):
    if fmt not in FORMATS:
        raise ConfigError(f"unknown checkpoint format {fmt!r}; known formats: {', '.join(FORMATS)}")
    return importlib.import_module(f"sdlkit.interop.{fmt}")


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


# ----- shared by the format modules -------------------------------------------------------------------
def dictionary_kind(model: SparseDictionary, config: dict[str, Any]) -> str:
    """'sae', 'transcoder' or 'crosscoder', from the model's shape and what its config.json says about
    the data (a transcoder may have n_in = n_out)."""
    if len(model.config.in_blocks or [0]) > 1 or len(model.config.out_blocks or [0]) > 1:
        return "crosscoder"
    run = config.get("run")
    data = run.get("data") if isinstance(run, dict) else None
    mode = data.get("mode") if isinstance(data, dict) else None
    imported = config.get("imported")
    if mode is None and isinstance(imported, dict):
        mode = imported.get("kind")
    if mode == "crosscoder":
        return "crosscoder"
    if model.n_in != model.n_out or mode == "transcoder":
        return "transcoder"
    return "sae"


def selection(method: MethodConfig) -> str:
    """The σ a method uses at inference: Matryoshka's nested prefixes only shape training, so a
    Matryoshka dictionary is a TopK or BatchTopK one once trained."""
    return getattr(method, "selection", method.name) if method.name == "matryoshka" else method.name


def read_json(path: Path) -> dict[str, Any]:
    """A JSON object from `path`, or a CheckpointError naming the file."""
    if not path.is_file():
        raise CheckpointError(f"{path} is missing")
    return read_json_object(path)


def find_folder(in_dir: Path, config_file: str, fmt: str) -> Path:
    """The folder holding `config_file`: `in_dir` itself, or its only sub-folder that has one (libraries
    save one folder per hook point); several such sub-folders are listed for the user to choose."""
    if not in_dir.is_dir():
        raise CheckpointError(f"no {fmt} checkpoint at {in_dir}: it is not a folder")
    if (in_dir / config_file).is_file():
        return in_dir
    found = sorted(p for p in in_dir.iterdir() if p.is_dir() and (p / config_file).is_file())
    if len(found) == 1:
        return found[0]
    if not found:
        raise CheckpointError(f"{in_dir} is not a {fmt} checkpoint: {config_file} is missing")
    names = ", ".join(p.name for p in found)
    raise CheckpointError(f"{in_dir} holds {len(found)} {fmt} dictionaries ({names}): give one of these sub-folders")


def take(tensors: dict[str, torch.Tensor], name: str, shape: tuple[int, ...], path: Path, why: str) -> torch.Tensor:
    """tensors[name] as float64 after checking it exists with `shape` (`why` names the config fields)."""
    if name not in tensors:
        raise CheckpointError(f"{path} has no tensor {name!r} (it holds {sorted(tensors)})")
    tensor = tensors[name]
    if tuple(tensor.shape) != shape:
        raise CheckpointError(f"{path}: tensor {name} has shape {list(tensor.shape)} but {why} needs {list(shape)}")
    if not tensor.is_floating_point():
        raise CheckpointError(f"{path}: tensor {name} has dtype {tensor.dtype}; a floating-point tensor is needed")
    if not torch.isfinite(tensor).all():
        raise CheckpointError(f"{path}: tensor {name} holds NaN or inf values")
    return tensor.to(torch.float64)


def refuse_extra(tensors: dict[str, torch.Tensor], known: set[str], path: Path) -> None:
    """Tensors the format does not define would be silently dropped: refuse them instead."""
    extra = sorted(set(tensors) - known)
    if extra:
        raise CheckpointError(f"{path} holds tensors {extra} that this conversion does not know ({sorted(known)})")


def torch_dtype_name(dtype: torch.dtype) -> tuple[str, list[str]]:
    """The sdlkit dtype name for weights stored as `dtype`, and a note when it has to widen them."""
    for name, candidate in SDLKIT_DTYPES.items():
        if candidate == dtype:
            return name, []
    if dtype == torch.float16:
        return "float32", ["float16 weights widened to float32 (exact)"]
    raise CheckpointError(f"weights of dtype {dtype} cannot be imported; sdlkit holds {', '.join(SDLKIT_DTYPES)}")


def build_dictionary(
    W_E: torch.Tensor,
    b_E: torch.Tensor,
    W_D: torch.Tensor,
    b_D: torch.Tensor,
    method: dict[str, Any],
    dtype: str,
    extras: dict[str, torch.Tensor] | None = None,
) -> SparseDictionary:
    """A SparseDictionary holding these weights (W_E [n_latents, n_in], W_D [n_out, n_latents]) in
    `dtype`. `unit_norm_decoder` is set only when every decoder column already has unit norm, so that
    training an imported dictionary further does not rescale its columns (and change its function)."""
    n_latents, n_in = W_E.shape
    unit = bool(torch.allclose(W_D.norm(dim=0), torch.ones((), dtype=W_D.dtype), atol=1e-3))
    config = ModelConfig(
        n_latents=n_latents,
        n_in=n_in,
        n_out=W_D.shape[0],
        bias=True,
        unit_norm_decoder=unit,
        dtype=dtype,
        method=method_config(method),
    )
    model = SparseDictionary(config)
    target = SDLKIT_DTYPES[dtype]
    tensors = {"W_E": W_E, "b_E": b_E, "W_D": W_D, "b_D": b_D, **(extras or {})}
    load_weights(model, {k: v.to(target).contiguous() for k, v in tensors.items()}, Path("<converted>"))
    return model.eval()


def as_float64(tensor: torch.Tensor | None, size: int) -> torch.Tensor:
    """A bias as float64, or zeros of `size` for a dictionary trained without biases."""
    if tensor is None:
        return torch.zeros(size, dtype=torch.float64)
    return tensor.detach().to(torch.float64)


__all__ = ["FORMATS", "export_checkpoint", "import_checkpoint"]
