"""Batch preparation: a dataset's sample range as model inputs, ready for the forward passes.

Text is tokenized once per step (shared by all models), sorted by length and cut into right-padded passes
(sdlkit.harvest.batching), with a mask of the tokens that give rows; images become each model's own
processed pixels. Also the tiny inputs a shape probe runs on.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from sdlkit.harvest.batching import pad_ids, sorted_passes
from sdlkit.harvest.datasets import Dataset
from sdlkit.harvest.models import LoadedModel, model_kind


@dataclass
class Prepared:
    """One forward pass ready for the models: inputs per model (CPU), which samples it holds, and the token mask."""

    inputs: list[dict[str, torch.Tensor]]
    index: torch.Tensor  # int64 [B]: dataset index of each sample in the batch
    mask: torch.Tensor | None  # bool [B, T]: the tokens that give rows (text only)
    skipped: int  # samples of the range that could not be decoded


@dataclass
class Step:
    """One harvest step (the unit of resume): its forward passes and how many samples could not be decoded."""

    passes: list[Prepared]
    skipped: int


class Preparer:
    """Turns a sample range into model inputs: tokens (shared by all models) or processed pixels (per model)."""

    def __init__(
        self, loaded: list[LoadedModel], dataset: Dataset, context_size: int, include_special: bool, batch_size: int
    ):
        self.loaded, self.dataset, self.context_size, self.batch_size = loaded, dataset, context_size, batch_size
        tokenizer = loaded[0].tokenizer
        special = [] if include_special or tokenizer is None else sorted(set(tokenizer.all_special_ids))
        self.special = torch.tensor(special, dtype=torch.int64)

    def __call__(self, start: int, stop: int) -> Step:
        samples = self.dataset.load(start, stop)
        if not samples.items:
            return Step([], samples.skipped)
        if self.dataset.kind == "text":
            return Step(self._text(samples.items, samples.index), 0)
        inputs = [{"pixel_values": _pixels(m, samples.items)} for m in self.loaded]
        return Step([Prepared(inputs, samples.index, None, samples.skipped)], samples.skipped)

    def probe(self) -> Prepared:
        """A one-sample batch to learn the modules' shapes: the first text, or a blank image."""
        if self.dataset.kind == "text":
            return self._text(self.dataset.load(0, 1).items, torch.zeros(1, dtype=torch.int64))[0]
        from PIL import Image

        blank = [Image.new("RGB", (64, 64))]
        return Prepared(
            [{"pixel_values": _pixels(m, blank)} for m in self.loaded], torch.zeros(1, dtype=torch.int64), None, 0
        )

    def _text(self, texts: list[str], index: torch.Tensor) -> list[Prepared]:
        """The texts tokenized once, sorted by length and cut into right-padded passes of batch_size."""
        tokenizer = self.loaded[0].tokenizer
        encoded = tokenizer(texts, truncation=True, max_length=self.context_size)["input_ids"]
        lengths = torch.tensor([len(ids) for ids in encoded], dtype=torch.int64)
        passes = []
        for chosen in sorted_passes(lengths, self.batch_size):
            ids, attention = pad_ids([encoded[i] for i in chosen.tolist()], tokenizer.pad_token_id)
            mask = attention.bool() & ~torch.isin(ids, self.special)
            inputs = {"input_ids": ids, "attention_mask": attention}
            passes.append(Prepared([inputs] * len(self.loaded), index[chosen], mask, 0))
        return passes


def _pixels(loaded: LoadedModel, images: list[Any]) -> torch.Tensor:
    return loaded.image_processor(images=images, return_tensors="pt")["pixel_values"]


def dummy_batch(model: nn.Module, copies: int = 1) -> Prepared:
    """A tiny input for a shape probe: two tokens, or a blank image of the model's size; `copies` models read
    the same input (several text models sharing a tokenizer)."""
    one = torch.zeros(1, dtype=torch.int64)
    if model_kind(model) == "text":
        ids = torch.zeros(1, 2, dtype=torch.int64)
        inputs = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
        return Prepared([inputs] * copies, one, torch.ones(1, 2).bool(), 0)
    config = getattr(model.config, "vision_config", model.config)
    size, channels = config.image_size, getattr(config, "num_channels", 3)
    return Prepared([{"pixel_values": torch.zeros(1, channels, size, size)}] * copies, one, None, 0)
