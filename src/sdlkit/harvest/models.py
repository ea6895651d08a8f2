"""Hugging Face models for a harvest: loading (hub name or local folder) and naming their modules.

A model is loaded with the class its config names (`architectures`, e.g. GPT2LMHeadModel, CLIPModel), so
module names are the dotted names users see in `model.named_modules()` of that class ("transformer.h.1",
"model.layers.12", "vision_model.post_layernorm"). Remote code runs only when asked. Image models get
their image processor with the PIL backend: torchvision is never imported.

A module spec is `[i:]NAME[:input|:mean|:unit-mean]`: `NAME` records the module's output (the first element
of a tuple), `NAME:input` its first positional input; `NAME:mean` the mean of a per-token output over the
sample's attended tokens (a row per sample: sentence-transformers' mean pooling), `NAME:unit-mean` that mean
scaled to unit length (its Normalize step; `encoder:unit-mean` of a BERT sentence encoder is its sentence
embedding); `i:` picks the i-th model when several are harvested (crosscoders). `clip:pooled` and
`clip:projected` name CLIP's pooled and projected image embeddings.
"""

from __future__ import annotations

import contextlib
import difflib
import functools
import re
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn

from sdlkit.devices import resolve_device
from sdlkit.errors import ConfigError

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
CLIP_ALIASES = {"clip:pooled": "vision_model.post_layernorm", "clip:projected": "visual_projection"}
INPUT_SUFFIX = ":input"
POOLED_SUFFIXES = {":mean": "mean", ":unit-mean": "unit-mean"}
"""Spec suffix -> role of the per-sample poolings of a per-token output (see sdlkit.harvest.pooling)."""
Role = Literal["output", "input", "mean", "unit-mean"]


def parse_dtype(name: str, option: str = "dtype") -> torch.dtype:
    if name not in DTYPES:
        raise ConfigError(f"{option} = {name!r} is not allowed: use one of {', '.join(DTYPES)}")
    return DTYPES[name]


@dataclass
class LoadedModel:
    """A model ready for a harvest, with what prepares its inputs (a tokenizer or an image processor)."""

    name: str  # as the user gave it
    model: nn.Module
    kind: Literal["text", "image"]
    tokenizer: Any = None
    image_processor: Any = None


def load_model(
    name_or_path: str,
    *,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
    trust_remote_code: bool = False,
) -> LoadedModel:
    """The model at `name_or_path` in eval mode on `device`, with its tokenizer or image processor."""
    try:
        import transformers
    except ImportError:
        raise ConfigError("harvesting needs Hugging Face transformers: pip install 'sdlkit[models]'") from None

    _check_local_path(name_or_path)
    config = _hf_call(transformers.AutoConfig.from_pretrained, name_or_path, trust_remote_code=trust_remote_code)
    model_class = _model_class(config, transformers)
    with _loading_bar(transformers):
        model = _hf_call(model_class.from_pretrained, name_or_path, dtype=dtype, trust_remote_code=trust_remote_code)
    model.eval().requires_grad_(False).to(resolve_device(device))
    if hasattr(model.config, "use_cache"):
        model.config.use_cache = False
    kind = model_kind(model)
    if kind == "image":
        processor = _hf_call(
            transformers.AutoImageProcessor.from_pretrained,
            name_or_path,
            backend="pil",
            trust_remote_code=trust_remote_code,
        )
        return LoadedModel(name_or_path, model, kind, image_processor=processor)
    tokenizer = _hf_call(transformers.AutoTokenizer.from_pretrained, name_or_path, trust_remote_code=trust_remote_code)
    prepare_tokenizer(tokenizer, name_or_path)
    return LoadedModel(name_or_path, model, kind, tokenizer=tokenizer)


@contextlib.contextmanager
def _loading_bar(transformers: Any) -> Iterator[None]:
    """transformers' weight-loading bar on a terminal only: a log file or a captured stderr gets none."""
    hf_logging = transformers.utils.logging
    quiet = not sys.stderr.isatty() and hf_logging.is_progress_bar_enabled()
    if quiet:
        hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if quiet:
            hf_logging.enable_progress_bar()


@functools.lru_cache(maxsize=2)
def loaded_models(names: tuple[str, ...], device: str, dtype: str, trust: bool) -> tuple[LoadedModel, ...]:
    """The models, loaded once per process for each (names, device, dtype): the config's shape probe and the
    source share them."""
    torch_dtype = parse_dtype(dtype, "data.model_dtype")
    return tuple(load_model(n, device=device, dtype=torch_dtype, trust_remote_code=trust) for n in names)


def _check_local_path(name: str) -> None:
    """A name that can only be a local path (./x, /x, ~/x, a/b/c, or a/b where the folder a exists) must
    exist: it is never sent to the hub (which would retry for long and then talk about the hub)."""
    path = Path(name).expanduser()
    local = name.startswith((".", "/", "~")) or name.count("/") > 1 or "\\" in name
    local = local or ("/" in name and path.parent.is_dir())
    if local and not path.exists():
        raise ConfigError(f"model folder {name} does not exist (a hub model is named ORG/NAME or NAME)")


def prepare_tokenizer(tokenizer: Any, name: str = "the model") -> None:
    """Right padding (positions of real tokens then never depend on the batch) and a pad token to pad with."""
    tokenizer.padding_side = "right"
    if tokenizer.pad_token is None:
        fallback = tokenizer.eos_token or tokenizer.bos_token or tokenizer.unk_token
        if fallback is None:
            raise ConfigError(f"the tokenizer of {name} has no pad, eos, bos or unk token to pad batches with")
        tokenizer.pad_token = fallback  # padded positions are masked out, so any token will do


def model_kind(model: nn.Module) -> Literal["text", "image"]:
    """`image` for models called with pixel_values (CLIP, ViT, ...), else `text`."""
    if type(model).__name__ == "CLIPModel" or getattr(model, "main_input_name", "input_ids") == "pixel_values":
        return "image"
    return "text"


def max_positions(model: nn.Module) -> int | None:
    """The longest sequence the model has position embeddings for, when its config says."""
    config = getattr(model, "config", None)
    limit = getattr(config, "n_positions", None) or getattr(config, "max_position_embeddings", None)
    return limit if isinstance(limit, int) else None


def check_context_size(model: nn.Module, context_size: int, name: str = "the model") -> None:
    """ConfigError when `context_size` tokens exceed the positions the model has embeddings for."""
    limit = max_positions(model)
    if limit is not None and context_size > limit:
        raise ConfigError(
            f"--context-size = {context_size} exceeds the {limit} positions of {name}; use --context-size {limit} "
            "or less"
        )


def _model_class(config: Any, transformers: Any) -> Any:
    """The class named in the config's `architectures` when transformers has it, else an Auto class."""
    for name in getattr(config, "architectures", None) or []:
        found = getattr(transformers, name, None)
        if isinstance(found, type) and hasattr(found, "from_pretrained"):
            return found
    if config.model_type == "clip":
        return transformers.CLIPModel
    for auto in (transformers.AutoModelForCausalLM, transformers.AutoModel):
        if type(config) in auto._model_mapping:
            return auto
    return transformers.AutoModel


def _hf_call(loader: Any, name: str, **kwargs: Any) -> Any:
    """Call a transformers loader; a missing or unreadable model becomes one ConfigError line."""
    try:
        return loader(name, **kwargs)
    except (OSError, ValueError, KeyError) as err:
        if isinstance(err, ConfigError):
            raise
        first = (str(err).strip().splitlines() or [type(err).__name__])[0]
        raise ConfigError(
            f"cannot load {name!r}: {first} (give a local model folder, or a hub name when a hub is reachable)"
        ) from None


# ----- module names ------------------------------------------------------------------------------------
def list_modules(model: nn.Module) -> list[str]:
    """Every dotted module name a harvest can record (the root module excluded)."""
    return [name for name, _ in model.named_modules() if name]


def module_table(model: nn.Module) -> str:
    """`name  ClassName` per module, one per line, for `sdlkit harvest --list-modules`."""
    names = [(name, type(module).__name__) for name, module in model.named_modules() if name]
    width = max((len(name) for name, _ in names), default=0)
    return "\n".join(f"{name:<{width}}  {cls}" for name, cls in names)


@dataclass(frozen=True)
class ModuleSpec:
    """One recorded tensor: `key` is its name in the store; `module` the dotted name inside model `model_index`."""

    key: str
    model_index: int
    module: str
    role: Role


def parse_modules(
    names: list[str] | str, models: list[nn.Module], model_names: list[str] | None = None
) -> list[ModuleSpec]:
    """Resolve `[i:]NAME[:input]` specs against the models; unknown names raise with close matches."""
    if isinstance(names, str):
        names = [n.strip() for n in names.split(",")]
    names = [n for n in names if n]
    if not names:
        raise ConfigError("no modules given: name at least one, e.g. --modules transformer.h.1")
    model_names = model_names or [f"model {i}" for i in range(len(models))]
    specs = [_parse_one(name, models, model_names) for name in names]
    keys = [spec.key for spec in specs]
    duplicates = sorted({key for key in keys if keys.count(key) > 1})
    if duplicates:
        raise ConfigError(f"module {duplicates[0]!r} is given more than once; list each module once")
    return specs


def _parse_one(spec: str, models: list[nn.Module], model_names: list[str]) -> ModuleSpec:
    index, rest = 0, spec
    match = re.fullmatch(r"(\d+):(.+)", spec)
    if match:
        index, rest = int(match.group(1)), match.group(2)
        if index >= len(models):
            raise ConfigError(f"module {spec!r} names model {index}, but only {len(models)} model(s) are given")
    elif len(models) > 1:
        raise ConfigError(f"module {spec!r} needs a model prefix with several models: 0:{spec} or 1:{spec}")
    role: Role = "output"
    if rest.endswith(INPUT_SUFFIX):
        role, rest = "input", rest.removesuffix(INPUT_SUFFIX)
    for suffix, pooled in POOLED_SUFFIXES.items():
        if rest.endswith(suffix):
            role, rest = pooled, rest.removesuffix(suffix)
    module = CLIP_ALIASES.get(rest, rest)
    names = list_modules(models[index])
    if module not in names:
        if rest in CLIP_ALIASES:
            raise ConfigError(
                f"{rest} needs a CLIP model with module {module!r} (CLIPModel, CLIPVisionModel or "
                f"CLIPVisionModelWithProjection; the projected embedding needs one with a projection)"
            )
        close = difflib.get_close_matches(module, names, n=5, cutoff=0.5)
        hint = f" (did you mean: {', '.join(close)}?)" if close else ""
        raise ConfigError(
            f"module {module!r} is not in {model_names[index]}{hint}; list all modules with "
            f"`sdlkit harvest --model {model_names[index]} --list-modules`"
        )
    prefix = f"{index}:" if match else ""
    key = f"{prefix}{module}{'' if role == 'output' else ':' + role}"
    return ModuleSpec(key, index, module, role)
