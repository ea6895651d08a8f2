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

Mapping of sdlkit methods: relu → standard; jumprelu → jumprelu (threshold = exp(log_threshold));
topk → topk; gated → gated (b_gate = b_E, b_mag = exp(r_mag)·b_E + b_mag); batchtopk → jumprelu with
its learned inference threshold on every latent (SAELens saves its own BatchTopK SAEs that way);
matryoshka → as its selection (topk or batchtopk). Transcoders: transcoder / jumprelu_transcoder
(SAELens has no TopK or Gated transcoder); crosscoders have no SAELens format.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from sdlkit.core.model import SparseDictionary
from sdlkit.errors import CheckpointError, ConfigError
from sdlkit.interop import (
    Imported,
    as_float64,
    build_dictionary,
    dictionary_kind,
    find_folder,
    read_json,
    refuse_extra,
    selection,
    take,
    torch_dtype_name,
)
from sdlkit.io import load_tensors

CONFIG_FILE = "cfg.json"
WEIGHTS_FILE = "sae_weights.safetensors"
LAYOUT_VERSION = "6.0.0"
"""Written as metadata.sae_lens_version: tells SAELens the config uses the 6.x layout."""

RELU = {"standard", "transcoder", "skip_transcoder"}
JUMPRELU = {"jumprelu", "jumprelu_transcoder", "jumprelu_skip_transcoder"}
TRANSCODERS = {"transcoder", "skip_transcoder", "jumprelu_transcoder", "jumprelu_skip_transcoder"}
ARCHITECTURES = sorted(RELU | JUMPRELU | {"topk", "gated"})
DTYPES = {"float32": torch.float32, "float64": torch.float64, "float16": torch.float16, "bfloat16": torch.bfloat16}


# ----- export -------------------------------------------------------------------------------------------
def to_files(
    model: SparseDictionary, config: dict[str, Any], *, hook_name: str | None = None, model_name: str | None = None
) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """(cfg.json, sae_weights tensors) for `model`; `config` is its checkpoint's config.json."""
    kind = dictionary_kind(model, config)
    if kind == "crosscoder":
        raise ConfigError("a crosscoder cannot be exported to SAELens: it has no crosscoder format")
    transcoder = kind == "transcoder"
    sigma = selection(model.method)
    n_latents = model.n_latents
    b_E = as_float64(model.b_E, n_latents)
    tensors: dict[str, torch.Tensor] = {
        "W_enc": model.W_E.detach().T,
        "W_dec": model.W_D.detach().T,
        "b_dec": as_float64(model.b_D, model.n_out),
    }
    fields: dict[str, Any] = {}
    notes: list[str] = []
    if sigma == "relu":
        architecture = "transcoder" if transcoder else "standard"
        tensors["b_enc"] = b_E
    elif sigma in ("jumprelu", "batchtopk"):
        architecture = "jumprelu_transcoder" if transcoder else "jumprelu"
        tensors["b_enc"] = b_E
        threshold = model.activation.threshold.detach().to(torch.float64)
        if sigma == "batchtopk":
            threshold = threshold.clamp_min(0).expand(n_latents)
            notes.append(
                f"BatchTopK exported in its inference form: JumpReLU with the learned global threshold "
                f"{threshold[0].item():.6g} on every latent (codes no longer depend on the batch)"
            )
        tensors["threshold"] = threshold
    elif sigma in ("topk", "gated") and transcoder:
        raise ConfigError(
            f"SAELens has no {sigma} transcoder (only transcoder and jumprelu_transcoder): this "
            f"{model.method.name} transcoder cannot be exported to it"
        )
    elif sigma == "topk":
        architecture = "topk"
        tensors["b_enc"] = b_E
        fields = {"k": model.method.k, "rescale_acts_by_decoder_norm": False}
    elif sigma == "gated":
        architecture = "gated"
        r_mag = model.activation.r_mag.detach().to(torch.float64)
        tensors["b_gate"] = b_E
        tensors["r_mag"] = r_mag
        tensors["b_mag"] = r_mag.exp() * b_E + model.activation.b_mag.detach().to(torch.float64)
    else:
        raise ConfigError(f"method {model.method.name!r} has no SAELens equivalent")
    if model.method.name == "matryoshka":
        notes.append("Matryoshka prefixes only shape training; exported as its inference σ, " + sigma)
    dtype = model.W_E.dtype
    cfg: dict[str, Any] = {
        "architecture": architecture,
        "d_in": model.n_in,
        "d_sae": n_latents,
        **({"d_out": model.n_out} if transcoder else {}),
        "dtype": model.config.dtype,
        "device": "cpu",
        "apply_b_dec_to_input": False,
        "normalize_activations": "none",
        "reshape_activations": "none",
        **fields,
        "metadata": {
            "sae_lens_version": LAYOUT_VERSION,
            "sae_lens_training_version": None,
            "model_name": model_name,
            "hook_name": hook_name,
            "hook_head_index": None,
            **({"hook_name_out": None} if transcoder else {}),
            "sdlkit": {"method": model.method.model_dump(mode="json"), "notes": notes},
        },
    }
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


def from_files(in_dir: Path) -> Imported:
    """Read a SAELens folder (or a parent folder holding exactly one) into an sdlkit dictionary."""
    folder = find_folder(Path(in_dir), CONFIG_FILE, "SAELens")
    cfg_path, weights_path = folder / CONFIG_FILE, folder / WEIGHTS_FILE
    raw = read_json(cfg_path)
    if not weights_path.is_file():
        sparsify = (folder / "sae.safetensors").is_file()
        hint = "; the folder has sae.safetensors: use --format sparsify" if sparsify else ""
        raise CheckpointError(f"SAELens weights file {weights_path} is missing{hint}")
    cfg = _layout_6(raw, cfg_path)
    architecture = cfg.get("architecture")
    if architecture not in ARCHITECTURES:
        raise CheckpointError(
            f"{cfg_path}: architecture {architecture!r} cannot be imported; supported: {', '.join(ARCHITECTURES)}"
        )
    normalize = cfg.get("normalize_activations") or "none"
    if normalize != "none":
        raise CheckpointError(
            f"{cfg_path}: normalize_activations = {normalize!r} rescales inputs at run time, which sdlkit's linear "
            "encoder cannot hold: fold it into the weights first (SAELens: sae.fold_activation_norm_scaling_factor, "
            "then save_model) or use an SAE saved with 'none'"
        )
    if architecture == "gated" and cfg.get("normalize_decoder"):
        raise CheckpointError(f"{cfg_path}: gated SAEs with normalize_decoder = true are not supported")
    transcoder = architecture in TRANSCODERS
    d_in, d_sae = _int_field(cfg, "d_in", cfg_path), _int_field(cfg, "d_sae", cfg_path)
    d_out = _int_field(cfg, "d_out", cfg_path) if transcoder else d_in
    dtype, notes = _dtype(cfg, cfg_path)
    why = f"cfg.json (d_in={d_in}, d_sae={d_sae}" + (f", d_out={d_out})" if transcoder else ")")

    tensors = dict(load_tensors(weights_path))
    if architecture in JUMPRELU and "threshold" not in tensors and "log_threshold" in tensors:
        tensors["threshold"] = tensors.pop("log_threshold").exp()
        notes.append("log_threshold (older SAELens) read as threshold = exp(log_threshold)")
    W_enc = take(tensors, "W_enc", (d_in, d_sae), weights_path, why)
    W_dec = take(tensors, "W_dec", (d_sae, d_out), weights_path, why)
    b_dec = take(tensors, "b_dec", (d_out,), weights_path, why)
    known = {"W_enc", "W_dec", "b_dec", "scaling_factor"}
    if "scaling_factor" in tensors:  # pre-6.0 finetuning scale: x̂ = (f ⊙ s) W_dec + b_dec
        scale = take(tensors, "scaling_factor", (d_sae,), weights_path, why)
        if not torch.equal(scale, torch.ones_like(scale)):
            W_dec = W_dec * scale[:, None]
            notes.append("finetuning scaling_factor folded into the decoder columns")
    if architecture.endswith("skip_transcoder"):
        known.add("W_skip")
        if take(tensors, "W_skip", (d_out, d_in), weights_path, why).abs().max() > 0:
            raise CheckpointError(
                f"{weights_path}: W_skip is non-zero; sdlkit dictionaries have no linear skip connection"
            )

    applies = bool(cfg.get("apply_b_dec_to_input", True)) and not transcoder  # SAELens transcoders never apply it
    shift = b_dec @ W_enc if applies else torch.zeros(d_sae, dtype=torch.float64)
    if applies:
        notes.append("apply_b_dec_to_input folded: b_E = b_enc − b_dec·W_enc (pre-activations unchanged)")
    extras: dict[str, torch.Tensor] = {}
    if architecture == "gated":
        known |= {"b_gate", "r_mag", "b_mag"}
        b_gate = take(tensors, "b_gate", (d_sae,), weights_path, why)
        r_mag = take(tensors, "r_mag", (d_sae,), weights_path, why)
        b_mag = take(tensors, "b_mag", (d_sae,), weights_path, why)
        b_E = b_gate - shift
        # magnitude path: xc W_enc e^r + b_mag = e^r (x W_enc + b_E) + (b_mag − e^r b_gate); the shift cancels
        extras = {"r_mag": r_mag, "b_mag": b_mag - r_mag.exp() * b_gate}
        method: dict[str, Any] = {"name": "gated"}
    else:
        known.add("b_enc")
        b_E = take(tensors, "b_enc", (d_sae,), weights_path, why) - shift
        if architecture in RELU:
            method = {"name": "relu"}
        elif architecture in JUMPRELU:
            known.add("threshold")
            threshold = take(tensors, "threshold", (d_sae,), weights_path, why)
            bad = int((threshold <= 0).sum())
            if bad:
                raise CheckpointError(
                    f"{weights_path}: {bad} of {d_sae} JumpReLU thresholds are <= 0 (smallest "
                    f"{threshold.min().item():.3g}); sdlkit stores log(threshold) and needs every threshold > 0"
                )
            extras = {"log_threshold": threshold.log()}
            method = {"name": "jumprelu"}
        else:  # topk
            method = {"name": "topk", "k": _int_field(cfg, "k", cfg_path, high=d_sae)}
            if cfg.get("rescale_acts_by_decoder_norm"):
                # TopK ranks h·‖W_dec row‖ and decodes f/‖W_dec row‖: fold both scalings into the weights
                norms = W_dec.norm(dim=1)
                W_enc, b_E = W_enc * norms, b_E * norms
                W_dec = W_dec / torch.where(norms > 0, norms, 1.0)[:, None]  # zero rows stay zero
                notes.append("rescale_acts_by_decoder_norm folded into W_E, b_E and unit-norm decoder columns")
    refuse_extra(tensors, known, weights_path)
    if cfg.get("reshape_activations") == "hook_z":
        notes.append("reshape_activations = hook_z: feed the flattened [n_heads · d_head] vectors")
    model = build_dictionary(W_enc.T, b_E, W_dec.T, b_dec, method, dtype, extras)
    return Imported(model=model, kind="transcoder" if transcoder else "sae", source=raw, notes=notes)
