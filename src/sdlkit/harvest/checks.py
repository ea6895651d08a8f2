"""Checks that models fit the data and the store: input kinds, context size, a shared tokenizer, module widths.

Run before anything is written (a harvest) or evaluated (a store read back with its model); each refusal is a
ConfigError that says what to give instead.
"""

from __future__ import annotations

from torch import nn

from sdlkit.errors import ConfigError
from sdlkit.harvest.datasets import Dataset
from sdlkit.harvest.forward import probe_dims
from sdlkit.harvest.models import LoadedModel, check_context_size, parse_modules
from sdlkit.harvest.prepare import dummy_batch
from sdlkit.store import StoreManifest


def check_store_matches_model(store_manifest: StoreManifest, model: nn.Module, modules: list[str] | str) -> None:
    """ConfigError unless every module of `modules` is in the store with the width the model gives it."""
    if isinstance(modules, str):
        modules = [modules]
    specs = parse_modules(modules, [model])
    stored = store_manifest.dims
    for spec in specs:
        if spec.key not in stored:
            raise ConfigError(f"module {spec.key!r} is not in the store; it holds {', '.join(stored)}")
    device = next(model.parameters()).device
    dims = probe_dims([LoadedModel("model", model, "text")], specs, dummy_batch(model), device)
    for key, dim in dims.items():
        if stored[key] != dim:
            raise ConfigError(
                f"module {key!r} has dim {stored[key]} in the store but {dim} in the model; "
                "evaluate with the model the store was harvested from"
            )


def check_models(loaded: list[LoadedModel], dataset: Dataset, context_size: int) -> None:
    """ConfigError unless every model takes the dataset's kind of sample (and `context_size` tokens), and
    several text models share one tokenizer vocabulary (so their token rows align)."""
    for item in loaded:
        if item.kind == "text":
            check_context_size(item.model, context_size, item.name)
        if item.kind != dataset.kind:
            raise ConfigError(
                f"model {item.name} takes {'images' if item.kind == 'image' else 'text'} but {dataset.path} "
                f"holds {dataset.kind} samples; give {'an image folder' if item.kind == 'image' else 'a text file'}"
            )
    if dataset.kind == "text" and len(loaded) > 1:
        vocab = loaded[0].tokenizer.get_vocab()
        for item in loaded[1:]:
            other = item.tokenizer.get_vocab()
            if other != vocab:
                raise ConfigError(
                    f"models {loaded[0].name} and {item.name} have different tokenizer vocabularies "
                    f"({len(vocab)} vs {len(other)} tokens); a crosscoder harvest needs one shared tokenizer "
                    "so that token rows align"
                )
