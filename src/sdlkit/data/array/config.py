"""The `data:` sections of rows a user already has: `kind: array` (a `.npy`, `.safetensors` or `.pt` file), and
`kind: tensor` (a tensor in memory, trained on from Python with sdlkit.train.fit).

Each records where its rows came from: an array file by absolute path plus a fingerprint taken when the
config is built, a tensor by its shape, dtype and a SHA-256 of its content. A run resumed or used on rows
whose fingerprint differs is refused.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator, model_validator

from sdlkit.data.array.files import open_array
from sdlkit.data.source import DataConfig, DataShape

NORM_SAMPLE_ROWS = 65536
"""Rows that estimate E‖x‖² for `normalize`: every training row up to this many, else 64 evenly spaced blocks."""


class RowsDataConfig(DataConfig):
    """What every table of rows shares: normalisation, the shuffle buffer, held-out rows and the shuffle seed."""

    normalize: bool = Field(
        False,
        description="Scale x_p (and x_r) by 1/sqrt(E‖x‖²) so that E‖x‖² = 1, estimated on up to "
        f"{NORM_SAMPLE_ROWS:,} training rows; the saved weights are folded back to read raw rows.",
    )
    shuffle_buffer: int = Field(
        262144,
        ge=1,
        description="Rows held in memory for shuffling: rows are permuted within windows of about this size.",
    )
    eval_rows: int = Field(4096, ge=1, description="Held-out rows for evaluation, never trained on: the last rows.")
    seed: int = Field(0, description="Seeds the window and row order of every epoch.")


class ArrayDataConfig(RowsDataConfig):
    """An array file of rows (x_p), and for a transcoder a second file of the rows it must reconstruct (x_r)."""

    kind: Literal["array"] = Field("array", description="Data kind tag: an array file (.npy, .safetensors, .pt).")
    path: str = Field(
        description="The file of x_p rows: .npy (memory-mapped), .safetensors, or .pt holding a tensor; an array "
        "[..., width] is read as rows of that width. Recorded as an absolute path."
    )
    key: str | None = Field(None, description="Which tensor of a .safetensors or .pt file holding several.")
    targets: str | None = Field(
        None,
        description="The file of x_r rows for a transcoder, row for row with `path`; default: x_r = x_p (an SAE).",
    )
    targets_key: str | None = Field(None, description="Which tensor of the targets file, when it holds several.")
    fingerprint: str | None = Field(
        None,
        description="The fingerprint of `path` (size, shape, dtype and 64 sampled blocks; taken when the config is "
        "built if left out); a run on a file whose fingerprint differs is refused.",
    )
    targets_fingerprint: str | None = Field(None, description="The fingerprint of `targets`, as `fingerprint`.")

    @field_validator("path", "targets")
    @classmethod
    def _absolute(cls, value: str | None) -> str | None:
        if value is None:
            return value
        if not value:
            raise ValueError("give the path of an array file (.npy, .safetensors or .pt)")
        return str(Path(value).expanduser().resolve())

    @model_validator(mode="after")
    def _record(self) -> ArrayDataConfig:
        if self.targets is None and (self.targets_key is not None or self.targets_fingerprint is not None):
            raise ValueError("targets_key and targets_fingerprint need targets (the file of x_r rows)")
        if self.fingerprint is None:
            self.fingerprint = open_array(self.path, self.key, "data.path").fingerprint()
        if self.targets is not None and self.targets_fingerprint is None:
            self.targets_fingerprint = open_array(self.targets, self.targets_key, "data.targets").fingerprint()
        return self

    def shape(self) -> DataShape:
        """The widths of `path` and `targets`, from the files' headers."""
        n_in = open_array(self.path, self.key, "data.path").width
        n_out = open_array(self.targets, self.targets_key, "data.targets").width if self.targets else n_in
        return DataShape(n_in, n_out, [n_in], [n_out])


class TensorDataConfig(RowsDataConfig):
    """A tensor of rows held in memory (x_p), and optionally one of targets (x_r), as sdlkit.train.fit records them.
    No file backs it: building this kind's source needs the tensors themselves."""

    kind: Literal["tensor"] = Field("tensor", description="Data kind tag: a tensor in memory, from Python.")
    rows: int = Field(gt=0, description="Rows of the tensor.")
    width: int = Field(gt=0, description="Width of each row: n_in.")
    dtype: str = Field(description="The tensor's dtype, e.g. 'float32'.")
    fingerprint: str = Field(description="SHA-256 of the tensor's shape, dtype and content.")
    targets_width: int | None = Field(None, gt=0, description="Width of the targets' rows (n_out); None: an SAE.")
    targets_fingerprint: str | None = Field(None, description="SHA-256 of the targets tensor, as `fingerprint`.")

    def shape(self) -> DataShape:
        """The recorded widths."""
        n_out = self.targets_width or self.width
        return DataShape(self.width, n_out, [self.width], [n_out])
