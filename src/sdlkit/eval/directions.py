"""Known directions from a file (probes, class means, a synthetic ground truth), scored against a dictionary.

A directions file holds one matrix, [n_directions, width] (a direction per row) or [width, n_directions]
(a direction per column), in `.npy`, `.safetensors` (a `key` when it holds several tensors) or `.pt`.
The layout is read off the shape: the side equal to the dictionary's width is the direction's; a square
matrix is read as rows unless the layout is given. The encoder's directions W_p [n_in, n] come from one
file; the decoder's W_r [n_out, n] from a second one, or are W_p when n_out = n_in.

The scores are the bench's (`sdlkit.eval.recovery.dictionary_recovery`): M_GT and M_IP of encoder rows
against W_p and of decoder columns against W_r, by best match and, optionally, one-to-one matching.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Literal

import torch

from sdlkit.core.model import SparseDictionary
from sdlkit.data.array.files import open_array
from sdlkit.errors import ConfigError, ShapeError
from sdlkit.eval.recovery import dictionary_recovery

Layout = Literal["rows", "columns"]
LAYOUTS: tuple[Layout, ...] = ("rows", "columns")
"""How a directions file is laid out: a direction per row ([n_directions, width]) or per column."""


@dataclass(frozen=True)
class Directions:
    """Known directions as the recovery code takes them: W_p [n_in, n] and W_r [n_out, n], one per column."""

    W_p: torch.Tensor
    W_r: torch.Tensor
    source: str
    """The file(s) they came from."""
    layout: str
    """How the file was read ("rows", "columns"), with a note when a square matrix was taken as rows."""

    @property
    def n(self) -> int:
        return self.W_p.shape[1]


def read_directions(
    path: str | os.PathLike,
    width: int,
    key: str | None = None,
    layout: Layout | None = None,
    what: str = "--directions",
) -> tuple[torch.Tensor, str, str]:
    """The directions in `path` as columns of a [width, n] matrix, how the file was read, and its absolute
    path. `layout`
    (None: from the shape) says whether the file holds them as rows or columns; `what` names the option
    in errors. ShapeError for a shape that fits neither layout, a NaN/inf or a zero direction."""
    if layout is not None and layout not in LAYOUTS:
        raise ConfigError(f"directions layout {layout!r} is not allowed: use one of {', '.join(LAYOUTS)}")
    file = open_array(path, key, what)
    matrix = file.rows(0, file.n_rows)
    matrix = matrix if matrix.dtype == torch.float64 else matrix.float()
    chosen, note = _layout(tuple(file.shape), width, layout, f"{what}: {file.path}")
    W = matrix.T if chosen == "rows" else matrix  # [width, n]
    _check_values(W, chosen, f"{what}: {file.path}")
    return W.contiguous(), chosen + note, str(file.path)


def _layout(shape: tuple[int, int], width: int, layout: Layout | None, where: str) -> tuple[Layout, str]:
    """(layout, note): the given layout if the shape fits it, else the one the shape fits (rows if both)."""
    fits = {"rows": shape[1] == width, "columns": shape[0] == width}
    expected = f"[n_directions, {width}] (rows) or [{width}, n_directions] (columns)"
    if layout is not None:
        if not fits[layout]:
            raise ShapeError(f"{where} has shape {list(shape)}, which is not {layout} of width {width}: {expected}")
        return layout, ""
    if fits["rows"] and fits["columns"]:
        return "rows", " (square: assumed a direction per row; --directions-layout columns reads columns)"
    if not any(fits.values()):
        raise ShapeError(f"{where} has shape {list(shape)}, but this dictionary's width is {width}: give {expected}")
    return ("rows" if fits["rows"] else "columns"), ""


def _check_values(W: torch.Tensor, layout: Layout, where: str) -> None:
    """ShapeError naming the first direction (W's column; the file's row or column) that holds NaN/inf, or is 0."""
    finite = torch.isfinite(W).all(dim=0)
    if not bool(finite.all()):
        index = int((~finite).nonzero()[0])
        raise ShapeError(f"{where}: {layout[:-1]} {index} holds NaN or inf; directions must be finite")
    zero = W.abs().sum(dim=0) == 0
    if bool(zero.any()):
        index = int(zero.nonzero()[0])
        raise ShapeError(f"{where}: {layout[:-1]} {index} is zero; a direction must have a non-zero length")


@dataclass(frozen=True)
class DirectionFiles:
    """Where the known directions are: `path` (W_p, the encoder side) and, for a dictionary whose n_out differs
    from n_in, `decoder_path` (W_r); each with its safetensors/.pt `key`, and one `layout` for both."""

    path: str | os.PathLike
    key: str | None = None
    decoder_path: str | os.PathLike | None = None
    decoder_key: str | None = None
    layout: Layout | None = None


def load_directions(model: SparseDictionary, files: DirectionFiles) -> Directions:
    """W_p (width n_in) and W_r (width n_out) for `model` from `files`; W_r = W_p when no decoder file is given
    and n_out = n_in. ConfigError when a transcoder needs the decoder file; ShapeError when the counts differ."""
    W_p, layout, source = read_directions(files.path, model.n_in, files.key, files.layout)
    if files.decoder_path is None:
        if model.n_out != model.n_in:
            raise ConfigError(
                f"this dictionary writes n_out={model.n_out} but reads n_in={model.n_in}: give the decoder's "
                "directions (width n_out) with --decoder-directions"
            )
        return Directions(W_p, W_p, source, layout)
    W_r, decoder_layout, decoder_source = read_directions(
        files.decoder_path, model.n_out, files.decoder_key, files.layout, "--decoder-directions"
    )
    if W_r.shape[1] != W_p.shape[1]:
        raise ShapeError(
            f"--directions holds {W_p.shape[1]} directions but --decoder-directions holds {W_r.shape[1]}: "
            "direction i of one file must be direction i of the other"
        )
    return Directions(W_p, W_r, f"{source}, {decoder_source}", f"{layout}, {decoder_layout}")


def score_directions(
    model: SparseDictionary, directions: Directions, tau: float = 0.95, matched: bool = True
) -> dict[str, Any]:
    """The bench's recovery record of `model` against `directions` (see `dictionary_recovery`:
    gt_recovery, max_inner_product, their `_decoder` versions and, with `matched`, the `matched_` ones),
    with what was scored: directions, directions_layout, n_directions, tau."""
    record = dictionary_recovery(model, directions.W_p, directions.W_r, tau=tau, matched=matched)
    return {
        "directions": directions.source,
        "directions_layout": directions.layout,
        "n_directions": directions.n,
        "tau": tau,
        **record,
    }
