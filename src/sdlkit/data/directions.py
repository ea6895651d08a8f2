"""The known directions a data source offers: what anchors pin latents to and what recovery is scored
against.

- Linear Representation Bench data: the ground-truth features themselves (W_p, W_r).
- A labelled activation store: the class means, the paper's proxy ground truth on real data (eq. 23–24,
  Table 2: normalised class-mean CLIP embeddings of ImageNet). Means are not centred, as in the paper.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch

from sdlkit.errors import ConfigError

DirectionKind = Literal["auto", "ground_truth", "labels"]


@dataclass
class KnownDirections:
    """W_p [n_in, n]: input directions as columns; W_r [n_out, n]: output directions; names [n]."""

    W_p: torch.Tensor
    W_r: torch.Tensor
    names: list[str]
    kind: Literal["ground_truth", "labels"]


def has_known_directions(source: object) -> bool:
    """Whether `source` has ground truth or labels (so anchors and recovery are possible)."""
    return hasattr(source, "ground_truth") or getattr(source, "labels", None) is not None


def known_directions(source: object, kind: DirectionKind = "auto") -> KnownDirections:
    """The directions of `source`: its ground truth, or its labelled class means (`kind` picks; 'auto'
    takes whichever the source has). A source with neither gets a ConfigError naming what would do."""
    if kind in ("auto", "ground_truth") and hasattr(source, "ground_truth"):
        truth = source.ground_truth()
        return KnownDirections(
            truth["W_p"], truth["W_r"], [str(i) for i in range(truth["W_p"].shape[1])], "ground_truth"
        )
    if kind == "ground_truth":
        raise ConfigError(
            "anchors from ground truth need Linear Representation Bench data; on an activation store use labels "
            "(train.anchors.source=labels, harvested from an image folder or with --label-column)"
        )
    if getattr(source, "labels", None) is None:
        raise ConfigError(
            "this data has no known directions: anchors and recovery need bench data (ground truth) or a labelled "
            "activation store (harvest an image folder, or text with --label-column)"
        )
    mean_p, _, ids = source.class_means(source.inputs)
    mean_r = mean_p if source.targets == source.inputs else source.class_means(source.targets, classes=ids)[0]
    names = [source.labels[i] for i in ids]
    return KnownDirections(mean_p.T.contiguous(), mean_r.T.contiguous(), names, "labels")
