"""The known directions a data source offers: what anchors pin latents to and what recovery is scored
against.

- Linear Representation Bench data: the ground-truth features themselves (W_p, W_r).
- A labelled activation store: the class means, the paper's proxy ground truth on real data (eq. 23–24,
  Table 2: normalised class-mean CLIP embeddings of ImageNet). Means are not centred, as in the paper.

Each source declares them with `DataSource.known_directions`, which returns None when it has none;
`require_directions` asks for them where they are needed and raises, saying what data would do.
"""

from __future__ import annotations

from sdlkit.data.source import DataSource, DirectionKind, KnownDirections
from sdlkit.errors import ConfigError

__all__ = ["DirectionKind", "KnownDirections", "require_directions"]


def require_directions(source: DataSource, kind: DirectionKind = "auto") -> KnownDirections:
    """The directions of `source`: its ground truth, or its labelled class means (`kind` picks; 'auto'
    takes whichever the source has). A source with neither gets a ConfigError naming what would do."""
    found = source.known_directions(kind)
    if found is not None:
        return found
    if kind == "ground_truth":
        raise ConfigError(
            "anchors from ground truth need Linear Representation Bench data; on an activation store use labels "
            "(train.anchors.source=labels, harvested from an image folder or with --label-column)"
        )
    raise ConfigError(
        "this data has no known directions: anchors and recovery need bench data (ground truth) or a labelled "
        "activation store (harvest an image folder, or text with --label-column)"
    )
