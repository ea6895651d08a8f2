"""EleutherAI sparsify checkpoints: one folder per hook point with `cfg.json` and `sae.safetensors`.

Followed: sparsify's `SparseCoder` (`sparsify/sparse_coder.py`, `sparsify/config.py`,
`sparsify/fused_encoder.py` on the main branch). cfg.json is the `SparseCoderConfig` fields
(activation, expansion_factor, normalize_decoder, num_latents, k, multi_topk, skip_connection,
transcode) plus d_in; num_latents = 0 means d_in · expansion_factor. Tensors encoder.weight
[num_latents, d_in], encoder.bias [num_latents], W_dec [num_latents, d_in], b_dec [d_in], and W_skip
[d_in, d_in] when skip_connection is set. The forward pass is

    x' = x − b_dec (autoencoders; transcoders, `transcode: true`, read x as it is)
    f = TopK_k(ReLU(encoder.weight x' + encoder.bias))          x̂ = W_decᵀ f + b_dec (+ W_skip x)

so sdlkit's W_E = encoder.weight, b_E = encoder.bias − encoder.weight b_dec (autoencoders), W_D = W_decᵀ.
ReLU-then-TopK and TopK-then-ReLU give the same codes. Only per-sample TopK is representable: BatchTopK's
inference threshold has no sparsify form (use the SAELens format), nor do GroupMax, signed TopK or a
non-zero skip connection. sparsify assumes d_out = d_in, so transcoders with n_out ≠ n_in cannot go there.
`multi_topk` and `normalize_decoder` only shape training and are carried as they are. The TopK form
(k and the encoder bias) is declared by TopKConfig in sdlkit/methods/topk.py (`exchange["sparsify"]`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from sdlkit.core.model import SparseDictionary
from sdlkit.errors import CheckpointError, ConfigError
from sdlkit.interop.dictionary import Imported, as_float64, dictionary_kind, torch_dtype_name
from sdlkit.interop.files import find_folder, read_json, take
from sdlkit.interop.forms import Foreign, export_form, readers
from sdlkit.io import load_tensors

CONFIG_FILE = "cfg.json"
WEIGHTS_FILE = "sae.safetensors"

UNSUPPORTED_FLAGS = ("signed", "embed_skip", "gram_lookup", "matching_pursuit")
"""Options of sparsify versions and forks that change the forward pass in ways sdlkit cannot hold."""
DEFAULTS = {"k": 32, "expansion_factor": 32, "num_latents": 0}
"""sparsify's SparseCoderConfig defaults, for fields a cfg.json leaves out."""


# ----- export -------------------------------------------------------------------------------------------
def to_files(
    model: SparseDictionary, config: dict[str, Any], *, hook_name: str | None = None, model_name: str | None = None
) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """(cfg.json, sae.safetensors tensors) for a TopK `model`. sparsify names the hook point by the
    folder, so `hook_name` and `model_name` have no field here."""
    kind = dictionary_kind(model, config)
    if kind == "crosscoder":
        raise ConfigError("a crosscoder cannot be exported to sparsify: it has no crosscoder format")
    inference, form, _ = export_form(model.method, "sparsify")
    if form is None:
        raise ConfigError(
            f"sparsify holds TopK dictionaries only; method {model.method.name!r} cannot be exported to it "
            "(use --format saelens)"
        )
    if model.n_in != model.n_out:
        raise ConfigError(
            f"sparsify assumes d_out = d_in, but this transcoder maps {model.n_in} to {model.n_out} dimensions: "
            "use --format saelens"
        )
    transcode = kind == "transcoder"
    if transcode and form.transcoder is None:
        raise ConfigError(f"sparsify has no {inference.name} transcoder: use --format saelens")
    W_E = model.W_E.detach().to(torch.float64)
    b_D = as_float64(model.b_D, model.n_out)
    bias = as_float64(model.b_E, model.n_latents)
    if not transcode:  # sparsify encodes x − b_dec: W_E(x − b_D) + bias = W_E x + b_E
        bias = bias + W_E @ b_D
    written = form.write(inference, model.activation, bias)
    dtype = model.W_E.dtype
    tensors = {
        "encoder.weight": model.W_E.detach(),
        **{name: tensor.to(dtype) for name, tensor in written.tensors.items()},
        "W_dec": model.W_D.detach().T.to(dtype),
        "b_dec": b_D.to(dtype),
    }
    cfg = {
        "activation": form.architecture,
        "expansion_factor": max(1, model.n_latents // model.n_in),
        "normalize_decoder": model.config.unit_norm_decoder,
        "num_latents": model.n_latents,
        **written.fields,
        "multi_topk": False,
        "skip_connection": False,
        "transcode": transcode,
        "d_in": model.n_in,
    }
    return cfg, tensors


# ----- import -------------------------------------------------------------------------------------------
def _int(cfg: dict[str, Any], name: str, path: Path) -> int:
    value = cfg.get(name, DEFAULTS.get(name))
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise CheckpointError(f"{path}: {name} = {value!r} must be a non-negative integer")
    return value


def _latent_count(cfg: dict[str, Any], name: str, path: Path, n_latents: int) -> int:
    """A config field that counts latents (k): an integer in [1, num_latents]."""
    value = _int(cfg, name, path)
    if not 1 <= value <= n_latents:
        raise CheckpointError(f"{path}: {name} = {value} must be in [1, num_latents = {n_latents}]")
    return value


def _config(folder: Path) -> dict[str, Any]:
    """cfg.json, once the weights file is there and no option changes the forward pass beyond sdlkit's."""
    cfg_path, weights_path = folder / CONFIG_FILE, folder / WEIGHTS_FILE
    cfg = read_json(cfg_path)
    if not weights_path.is_file():
        hint = (
            "; the folder has sae_weights.safetensors: use --format saelens"
            if (folder / "sae_weights.safetensors").is_file()
            else ""
        )
        raise CheckpointError(f"sparsify weights file {weights_path} is missing{hint}")
    activation, supported = cfg.get("activation", "topk"), readers("sparsify")
    if activation not in supported:
        raise CheckpointError(
            f"{cfg_path}: activation = {activation!r} is not supported; sdlkit reads {', '.join(sorted(supported))}"
        )
    flags = [flag for flag in UNSUPPORTED_FLAGS if cfg.get(flag)]
    if flags:
        raise CheckpointError(f"{cfg_path}: {', '.join(flags)} = true changes the forward pass; sdlkit cannot hold it")
    return cfg


def from_files(in_dir: Path) -> Imported:
    """Read a sparsify hook-point folder (or a parent holding exactly one) into an sdlkit dictionary: this
    module reads the layout, b_dec and the input centring; the activation's form (TopK's) reads the rest."""
    folder = find_folder(Path(in_dir), CONFIG_FILE, "sparsify")
    cfg_path, weights_path = folder / CONFIG_FILE, folder / WEIGHTS_FILE
    cfg = _config(folder)
    d_in = _int(cfg, "d_in", cfg_path)
    if d_in < 1:
        raise CheckpointError(f"{cfg_path}: d_in = {d_in} must be >= 1")
    n_latents = _int(cfg, "num_latents", cfg_path) or d_in * _int(cfg, "expansion_factor", cfg_path)
    transcode = bool(cfg.get("transcode", False))

    raw = load_tensors(weights_path)
    why = f"cfg.json (d_in={d_in}, num_latents={n_latents})"
    W_E = take(raw, "encoder.weight", (n_latents, d_in), weights_path, why)
    W_dec = take(raw, "W_dec", (n_latents, d_in), weights_path, why)
    b_dec = take(raw, "b_dec", (d_in,), weights_path, why)
    known = {"encoder.weight", "W_dec", "b_dec"}
    dtype, notes = torch_dtype_name(raw["encoder.weight"].dtype)
    if "W_skip" in raw or cfg.get("skip_connection"):
        known.add("W_skip")
        if take(raw, "W_skip", (d_in, d_in), weights_path, why).abs().max() > 0:
            raise CheckpointError(f"{weights_path}: W_skip is non-zero; sdlkit dictionaries have no skip connection")
        notes.append("all-zero W_skip dropped")
    if transcode:
        shift = torch.zeros(n_latents, dtype=torch.float64)
    else:
        shift = W_E @ b_dec
        notes.append("input centring folded: b_E = encoder.bias − encoder.weight·b_dec (pre-activations unchanged)")
    foreign = Foreign(
        config=cfg,
        config_path=cfg_path,
        weights_path=weights_path,
        tensors=dict(raw),
        why=why,
        integer=lambda name: _latent_count(cfg, name, cfg_path, n_latents),
        W_E=W_E,
        W_D=W_dec.T,
        b_D=b_dec,
        shift=shift,
        notes=notes,
    )
    model = foreign.finish(readers("sparsify")[cfg.get("activation", "topk")], dtype, known)
    return Imported(model=model, kind="transcoder" if transcode else "sae", source=cfg, notes=foreign.notes)
