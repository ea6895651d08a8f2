"""A harvest's settings, HarvestOptions: how `harvest` reads, runs and writes (the fields mirror `sdlkit harvest`'s
flags), checked."""

from __future__ import annotations

from dataclasses import dataclass

from sdlkit.errors import ConfigError


@dataclass(frozen=True)
class HarvestOptions:
    """How `harvest` reads, runs and writes; the fields mirror `sdlkit harvest`'s options."""

    context_size: int = 128
    """Tokens per text (longer texts are truncated)."""
    batch_size: int = 32
    """Samples per forward pass."""
    sort_window: int = 8
    """Text: a step of sort_window × batch_size samples runs as length-sorted passes (1: file order)."""
    max_rows: int | None = None
    """Stop at the first step boundary where at least this many rows are stored."""
    max_samples: int | None = None
    """Harvest only the first that many samples."""
    device: str = "auto"
    """cpu, cuda[:N] or auto."""
    model_dtype: str = "float32"
    """float32, bfloat16 or float16: the models' dtype."""
    store_dtype: str = "float32"
    """float32, bfloat16 or float16: the stored rows' dtype."""
    include_special: bool = False
    """Also record special tokens (BOS, EOS, ...)."""
    text_column: str = "text"
    """The text column of .jsonl / .parquet data."""
    label_column: str | None = None
    """A column with a label per sample (for class-mean anchors)."""
    split: str = "train"
    """The split of a hub dataset."""
    shuffle_seed: int | None = 0
    """Visit the samples in this seeded order (None: file order)."""
    resume: bool = False
    """Continue the incomplete store at `out` (the same options are required)."""
    overwrite: bool = False
    """Replace an existing store at `out` (only one that sdlkit wrote)."""
    trust_remote_code: bool = False
    """Run the model repository's own code."""
    shard_rows: int = 65536
    """Rows per shard file."""
    progress: bool = True
    """Show a progress bar."""

    def __post_init__(self) -> None:
        for name in ("context_size", "batch_size", "sort_window", "max_rows", "max_samples"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 1):
                raise ConfigError(
                    f"--{name.replace('_', '-')} = {value!r} is not allowed: it must be a positive integer"
                )
