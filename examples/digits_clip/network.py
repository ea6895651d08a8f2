"""A real network that can be had offline: a small CLIP vision transformer trained on scikit-learn's
bundled handwritten digits, saved as a Hugging Face model folder that `sdlkit harvest` reads like any
other (`--model FOLDER`).

The 1,797 8×8 digits ship inside scikit-learn. Each is written as several 32×32 PNGs (shifted by up to
one pixel and lightly noised, so the dictionary has more than 1,797 embeddings to learn from) into an
image folder with one subfolder per class: exactly the layout of ImageNet's training folder, so the
harvest reads labels from folder names as it would there. The network is CLIPVisionModelWithProjection
(hidden 64, 2 layers, projection 32) with a linear head on the pooled embedding, trained to classify;
the head is dropped when the vision model is saved.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

IMAGE_SIZE = 32
COPIES = 5  # augmented copies per digit: 8,985 images


def write_image_folder(out: Path, seed: int = 0) -> dict[str, int]:
    """Write the digits as `out/<digit>/<index>-<copy>.png`; return images per class."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    rng = np.random.default_rng(seed)
    counts: dict[str, int] = {}
    for index, (image, label) in enumerate(zip(digits.images, digits.target, strict=True)):
        folder = out / str(label)
        folder.mkdir(parents=True, exist_ok=True)
        for copy in range(COPIES):
            shifted = np.roll(image, shift=tuple(rng.integers(-1, 2, size=2)), axis=(0, 1)) if copy else image
            noisy = np.clip(shifted / 16.0 + rng.normal(0, 0.05, shifted.shape) * (copy > 0), 0, 1)
            pixels = Image.fromarray((noisy * 255).astype(np.uint8)).resize((IMAGE_SIZE, IMAGE_SIZE), Image.BILINEAR)
            pixels.convert("RGB").save(folder / f"{index:04d}-{copy}.png")
        counts[str(label)] = counts.get(str(label), 0) + COPIES
    return counts


def _load_folder(folder: Path, processor) -> tuple[torch.Tensor, torch.Tensor]:
    paths = sorted(folder.glob("*/*.png"))
    labels = torch.tensor([int(p.parent.name) for p in paths])
    pixels = processor(images=[Image.open(p).convert("RGB") for p in paths], return_tensors="pt")["pixel_values"]
    return pixels, labels


def train_network(images: Path, out: Path, epochs: int = 10, seed: int = 0) -> dict[str, float]:
    """Train the vision transformer to classify the digits; save it (and its image processor) to `out`."""
    from transformers import CLIPImageProcessorPil, CLIPVisionConfig, CLIPVisionModelWithProjection

    torch.manual_seed(seed)
    processor = CLIPImageProcessorPil(
        size={"shortest_edge": IMAGE_SIZE},
        crop_size={"height": IMAGE_SIZE, "width": IMAGE_SIZE},
        image_mean=[0.2, 0.2, 0.2],
        image_std=[0.35, 0.35, 0.35],
    )
    config = CLIPVisionConfig(
        image_size=IMAGE_SIZE,
        patch_size=8,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        projection_dim=32,
    )
    model = CLIPVisionModelWithProjection(config)
    head = torch.nn.Linear(config.hidden_size, 10)
    pixels, labels = _load_folder(images, processor)
    order = torch.randperm(len(labels))
    n_test = len(labels) // 5
    test, train = order[:n_test], order[n_test:]
    params = [*model.parameters(), *head.parameters()]
    optimizer = torch.optim.AdamW(params, lr=2e-3, weight_decay=0.01)
    start = time.perf_counter()
    for _ in range(epochs):
        model.train()
        for batch in train[torch.randperm(len(train))].split(128):
            pooled = model.vision_model(pixel_values=pixels[batch]).pooler_output
            loss = torch.nn.functional.cross_entropy(head(pooled), labels[batch])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    model.eval()
    with torch.no_grad():
        logits = head(model.vision_model(pixel_values=pixels[test]).pooler_output)
    accuracy = (logits.argmax(-1) == labels[test]).float().mean().item()
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    processor.save_pretrained(out)
    stats = {"test_accuracy": accuracy, "train_seconds": time.perf_counter() - start, "images": len(labels)}
    (out / "training.json").write_text(json.dumps(stats, indent=2))
    return stats
