"""SAELens checkpoints: a folder with `cfg.json` and `sae_weights.safetensors`.

Followed: SAELens 6.x (`sae_lens/saes/*.py`, `sae_lens/loading/pretrained_sae_loaders.py`, version
6.49 read for this module). Tensors W_enc [d_in, d_sae], b_enc [d_sae], W_dec [d_sae, d_out],
b_dec [d_out]; the forward pass of every inference architecture is

    h = (x − b_dec·apply_b_dec_to_input) W_enc + b_enc          x̂ = f W_dec + b_dec
    standard, transcoder:  f = ReLU(h)
    jumprelu(_transcoder): f = ReLU(h) · 1[h > ReLU(threshold)]
    topk:                  f = ReLU(TopK_k(h))    (h · ‖W_dec rows‖ first if rescale_acts_by_decoder_norm)
    gated:                 f = 1[xc W_enc + b_gate > 0] · ReLU(xc (W_enc ⊙ exp(r_mag)) + b_mag)

so sdlkit's W_E = W_encᵀ, W_D = W_decᵀ, and a subtracted b_dec folds into b_E = b_enc − b_dec W_enc.
Exports write `apply_b_dec_to_input: false` and the 6.x layout (hook and model names under
`metadata`); imports also read pre-6.0 configs (top-level `hook_point`, `activation_fn`: topk with
`activation_fn_kwargs.k`, boolean `normalize_activations`, `apply_b_dec_to_input` defaulting to true).

Each method declares its SAELens form in its own file (`exchange["saelens"]`, sdlkit.core.exchange):
relu → standard; jumprelu → jumprelu (threshold = exp(log_threshold)); topk → topk; gated → gated
(b_gate = b_E, b_mag = exp(r_mag)·b_E + b_mag); batchtopk → jumprelu with its learned inference threshold
on every latent (SAELens saves its own BatchTopK SAEs that way); matryoshka → as its selection.
Transcoders: transcoder / jumprelu_transcoder (SAELens has no TopK or Gated transcoder); crosscoders have
no SAELens format. This module does what every architecture shares: files, layout, b_dec, dtypes.
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
WEIGHTS_FILE = "sae_weights.safetensors"
LAYOUT_VERSION = "6.0.0"
"""Written as metadata.sae_lens_version: tells SAELens the config uses the 6.x layout."""

DTYPES = {"float32": torch.float32, "float64": torch.float64, "float16": torch.float16, "bfloat16": torch.bfloat16}


def _skip_free(architecture: str) -> str:
    """A skip transcoder is read as the transcoder it is once its W_skip is checked to be zero."""
    return architecture.replace("skip_transcoder", "transcoder")


def architectures() -> list[str]:
    """Every SAELens architecture sdlkit reads: the methods' forms, and their skip transcoders."""
    names = set(readers("saelens"))
    return sorted(names | {name.replace("transcoder", "skip_transcoder") for name in names if "transcoder" in name})


# ----- export -------------------------------------------------------------------------------------------
def to_files(
    model: SparseDictionary, config: dict[str, Any], *, hook_name: str | None = None, model_name: str | None = None
) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """(cfg.json, sae_weights tensors) for `model`; `config` is its checkpoint's config.json."""
    kind = dictionary_kind(model, config)
    if kind == "crosscoder":
        raise ConfigError("a crosscoder cannot be exported to SAELens: it has no crosscoder format")
    transcoder = kind == "transcoder"
    inference, form, notes = export_form(model.method, "saelens")
    if form is None:
        raise ConfigError(f"method {model.method.name!r} has no SAELens equivalent")
    if transcoder and form.transcoder is None:
        known = " and ".join(sorted({f.transcoder for f in readers("saelens").values() if f.transcoder}, key=len))
        raise ConfigError(
            f"SAELens has no {inference.name} transcoder (only {known}): this "
            f"{model.method.name} transcoder cannot be exported to it"
        )
    written = form.write(inference, model.activation, as_float64(model.b_E, model.n_latents))
    tensors = {
        "W_enc": model.W_E.detach().T,
        "W_dec": model.W_D.detach().T,
        "b_dec": as_float64(model.b_D, model.n_out),
        **written.tensors,
    }
    cfg: dict[str, Any] = {
        "architecture": form.transcoder if transcoder else form.architecture,
        "d_in": model.n_in,
        "d_sae": model.n_latents,
        **({"d_out": model.n_out} if transcoder else {}),
        "dtype": model.config.dtype,
        "device": "cpu",
        "apply_b_dec_to_input": False,
        "normalize_activations": "none",
        "reshape_activations": "none",
        **written.fields,
        "metadata": {
            "sae_lens_version": LAYOUT_VERSION,
            "sae_lens_training_version": None,
            "model_name": model_name,
            "hook_name": hook_name,
            "hook_head_index": None,
            **({"hook_name_out": None} if transcoder else {}),
            "sdlkit": {"method": model.method.model_dump(mode="json"), "notes": written.notes + notes},
        },
    }
    dtype = model.W_E.dtype
    return cfg, {name: tensor.to(dtype) for name, tensor in tensors.items()}


# ----- import -------------------------------------------------------------------------------------------
def _major(version: Any) -> int:
    try:
        return int(str(version).split(".")[0])
    except ValueError:
        return 0


def _layout_6(raw: dict[str, Any], path: Path) -> dict[str, Any]:
    """The config in SAELens 6.x terms: older configs get the renames and defaults SAELens applies."""
    metadata = raw.get("metadata") if isinstance(raw.get("metadata"), dict) else {}
    version = metadata.get("sae_lens_version") or raw.get("sae_lens_version")
    if version is not None and _major(version) >= 6:
        return dict(raw)
    renames = {"hook_point": "hook_name", "activation_fn_str": "activation_fn"}
    cfg = {renames.get(key, key): value for key, value in raw.items()}
    cfg.setdefault("architecture", "standard")
    activation = cfg.get("activation_fn") or "relu"
    if activation == "topk":
        cfg["architecture"] = "topk"
        cfg["k"] = (cfg.get("activation_fn_kwargs") or {}).get("k")
    elif activation != "relu" and cfg["architecture"] == "standard":
        raise CheckpointError(f"{path}: activation_fn = {activation!r} is not supported; sdlkit reads relu and topk")
    if isinstance(cfg.get("normalize_activations"), bool):
        cfg["normalize_activations"] = "expected_average_only_in" if cfg["normalize_activations"] else "none"
    return cfg


def _int_field(cfg: dict[str, Any], name: str, path: Path, high: int | None = None) -> int:
    value = cfg.get(name)
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if not isinstance(value, int) or isinstance(value, bool) or value < 1 or (high is not None and value > high):
        limit = f" in [1, {high}]" if high is not None else " >= 1"
        raise CheckpointError(f"{path}: {name} = {value!r} must be an integer{limit}")
    return value


def _dtype(cfg: dict[str, Any], path: Path) -> tuple[str, list[str]]:
    name = str(cfg.get("dtype") or "float32").removeprefix("torch.")
    if name not in DTYPES:
        raise CheckpointError(f"{path}: dtype = {cfg.get('dtype')!r} is not one of {', '.join(DTYPES)}")
    return torch_dtype_name(DTYPES[name])


def _config(folder: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """(cfg.json as read, the same in the 6.x layout), once its architecture and normalisation are ones
    sdlkit can hold and the weights file is there."""
    cfg_path, weights_path = folder / CONFIG_FILE, folder / WEIGHTS_FILE
    raw = read_json(cfg_path)
    if not weights_path.is_file():
        sparsify = (folder / "sae.safetensors").is_file()
        hint = "; the folder has sae.safetensors: use --format sparsify" if sparsify else ""
        raise CheckpointError(f"SAELens weights file {weights_path} is missing{hint}")
    cfg = _layout_6(raw, cfg_path)
    architecture, supported = cfg.get("architecture"), architectures()
    if architecture not in supported:
        raise CheckpointError(
            f"{cfg_path}: architecture {architecture!r} cannot be imported; supported: {', '.join(supported)}"
        )
    normalize = cfg.get("normalize_activations") or "none"
    if normalize != "none":
        raise CheckpointError(
            f"{cfg_path}: normalize_activations = {normalize!r} rescales inputs at run time, which sdlkit's linear "
            "encoder cannot hold: fold it into the weights first (SAELens: sae.fold_activation_norm_scaling_factor, "
            "then save_model) or use an SAE saved with 'none'"
        )
    return raw, cfg


def _fold_scaling(
    tensors: dict[str, torch.Tensor], W_dec: torch.Tensor, path: Path, why: str
) -> tuple[torch.Tensor, list[str]]:
    """W_dec [d_sae, d_out] with a pre-6.0 finetuning scale folded in: x̂ = (f ⊙ s) W_dec + b_dec."""
    if "scaling_factor" not in tensors:
        return W_dec, []
    scale = take(tensors, "scaling_factor", (W_dec.shape[0],), path, why)
    if torch.equal(scale, torch.ones_like(scale)):
        return W_dec, []
    return W_dec * scale[:, None], ["finetuning scaling_factor folded into the decoder columns"]


def from_files(in_dir: Path) -> Imported:
    """Read a SAELens folder (or a parent folder holding exactly one) into an sdlkit dictionary: this
    module reads the layout, b_dec and its input centring; the architecture's form (declared by a method)
    reads the rest."""
    folder = find_folder(Path(in_dir), CONFIG_FILE, "SAELens")
    cfg_path, weights_path = folder / CONFIG_FILE, folder / WEIGHTS_FILE
    raw, cfg = _config(folder)
    architecture = _skip_free(cfg["architecture"])
    form = readers("saelens")[architecture]
    transcoder = architecture == form.transcoder
    d_in, d_sae = _int_field(cfg, "d_in", cfg_path), _int_field(cfg, "d_sae", cfg_path)
    d_out = _int_field(cfg, "d_out", cfg_path) if transcoder else d_in
    dtype, notes = _dtype(cfg, cfg_path)
    why = f"cfg.json (d_in={d_in}, d_sae={d_sae}" + (f", d_out={d_out})" if transcoder else ")")

    tensors = dict(load_tensors(weights_path))
    W_enc = take(tensors, "W_enc", (d_in, d_sae), weights_path, why)
    W_dec = take(tensors, "W_dec", (d_sae, d_out), weights_path, why)
    b_dec = take(tensors, "b_dec", (d_out,), weights_path, why)
    W_dec, scaled = _fold_scaling(tensors, W_dec, weights_path, why)
    known = {"W_enc", "W_dec", "b_dec", "scaling_factor"}
    if cfg["architecture"] != architecture:  # a skip transcoder
        known.add("W_skip")
        if take(tensors, "W_skip", (d_out, d_in), weights_path, why).abs().max() > 0:
            raise CheckpointError(
                f"{weights_path}: W_skip is non-zero; sdlkit dictionaries have no linear skip connection"
            )
    applies = bool(cfg.get("apply_b_dec_to_input", True)) and not transcoder  # SAELens transcoders never apply it
    shift = b_dec @ W_enc if applies else torch.zeros(d_sae, dtype=torch.float64)
    notes += scaled
    if applies:
        notes.append("apply_b_dec_to_input folded: b_E = b_enc − b_dec·W_enc (pre-activations unchanged)")
    foreign = Foreign(
        config=cfg,
        config_path=cfg_path,
        weights_path=weights_path,
        tensors=tensors,
        why=why,
        integer=lambda name: _int_field(cfg, name, cfg_path, high=d_sae),
        W_E=W_enc.T,
        W_D=W_dec.T,
        b_D=b_dec,
        shift=shift,
        notes=notes,
    )
    model = foreign.finish(form, dtype, known)
    if cfg.get("reshape_activations") == "hook_z":
        foreign.notes.append("reshape_activations = hook_z: feed the flattened [n_heads · d_head] vectors")
    return Imported(model=model, kind="transcoder" if transcoder else "sae", source=raw, notes=foreign.notes)
