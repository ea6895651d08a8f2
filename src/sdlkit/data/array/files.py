"""Arrays a user already has, read by row ranges without loading them whole: `.npy`, `.safetensors`, `.pt`.

An array of shape [..., d] is a table of rows of width d (a [batch, seq, d] activation dump is batch·seq
rows). `.npy` files are memory-mapped; a `.safetensors` tensor is read slice by slice; a `.pt` file is
loaded with `weights_only=True` and memory-mapped, and must hold a tensor (or a dict of tensors and a
`key`). Anything else is refused with one line naming the file and what would do.
"""

from __future__ import annotations

import hashlib
import math
import os
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from sdlkit.errors import ShapeError, StoreError

FORMATS = (".npy", ".safetensors", ".pt")
"""File suffixes `open_array` reads."""

_FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
_FINGERPRINT_BLOCKS = 64
_FINGERPRINT_BLOCK = 1 << 16


class ArrayFile:
    """One array on disk as rows: `shape` (rows, width), `dtype`, `rows(start, stop)` (a float tensor on the
    CPU, in the file's dtype) and `fingerprint()` (what a resume checks)."""

    def __init__(self, path: Path, key: str | None, rows: int, width: int, dtype: torch.dtype, read: Callable):
        self.path, self.key = path, key
        self.shape = (rows, width)
        self.dtype = dtype
        self._read = read  # (start, stop) -> tensor [stop - start, width]

    @property
    def n_rows(self) -> int:
        return self.shape[0]

    @property
    def width(self) -> int:
        return self.shape[1]

    def rows(self, start: int, stop: int) -> torch.Tensor:
        """Rows [start, stop) as a tensor [stop - start, width] (a copy: never a view of the file)."""
        start, stop = max(0, start), min(stop, self.n_rows)
        if stop <= start:
            return torch.empty(0, self.width, dtype=self.dtype)
        return self._read(start, stop)

    def fingerprint(self) -> str:
        """SHA-256 of the file's size, shape, dtype and 64 blocks of 64 KiB spread over the file: cheap for a
        file of any size, and different for any file rewritten, resized, or changed in a sampled block."""
        digest = hashlib.sha256(f"{self.shape}|{self.dtype}|{self.key}|{os.path.getsize(self.path)}".encode())
        size = os.path.getsize(self.path)
        with open(self.path, "rb") as handle:
            for i in range(_FINGERPRINT_BLOCKS):
                handle.seek(size * i // _FINGERPRINT_BLOCKS)
                digest.update(handle.read(_FINGERPRINT_BLOCK))
        return digest.hexdigest()


def open_array(path: str | os.PathLike, key: str | None = None, what: str = "data.path") -> ArrayFile:
    """The array in `path` (`.npy`, `.safetensors` with `key` when it holds several tensors, `.pt`); `what`
    names the option in errors. StoreError for a missing or unreadable file, ShapeError for a bad shape."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise StoreError(f"{what}: {path} is not a file (give a {', '.join(FORMATS)} file of activations)")
    suffix = path.suffix.lower()
    if suffix not in FORMATS:
        raise StoreError(f"{what}: {path} is not a {', '.join(FORMATS)} file; save your array as one of those")
    opener = {".npy": _open_npy, ".safetensors": _open_safetensors, ".pt": _open_pt}[suffix]
    return opener(path.resolve(), key, what)


def _open_npy(path: Path, key: str | None, what: str) -> ArrayFile:
    if key is not None:
        raise StoreError(f"{what}: {path} is a .npy file, which holds one array: leave out the key")
    with open(path, "rb") as handle:
        if handle.read(6) != b"\x93NUMPY":
            raise StoreError(f"{what}: {path} is not a .npy file (no NumPy header); save it with numpy.save")
    try:
        array = np.load(path, mmap_mode="r", allow_pickle=False)
    except (ValueError, OSError, EOFError) as err:
        raise StoreError(f"{what}: {path} is not a readable .npy array ({err})") from None
    if not isinstance(array, np.ndarray):
        raise StoreError(f"{what}: {path} holds no array")
    dtype = _torch_dtype(array.dtype, path, what)
    rows, width = rows_and_width(tuple(array.shape), path, what)
    flat = array.reshape(rows, width)  # a view of the mapping (a C-order file) or a lazy copy (Fortran order)

    def read(start: int, stop: int) -> torch.Tensor:
        return torch.from_numpy(np.array(flat[start:stop]))

    return ArrayFile(path, None, rows, width, dtype, read)


def _open_safetensors(path: Path, key: str | None, what: str) -> ArrayFile:
    from safetensors import SafetensorError, safe_open

    try:
        handle = safe_open(str(path), "pt")
        keys = list(handle.keys())
    except (SafetensorError, OSError, ValueError) as err:
        raise StoreError(f"{what}: {path} is not a readable safetensors file ({err})") from None
    key = _pick_key(key, keys, path, what)
    tensor_slice = handle.get_slice(key)
    shape = tuple(tensor_slice.get_shape())
    dtype = float_dtype(tensor_slice.get_dtype(), path, what)
    rows, width = rows_and_width(shape, path, what)
    inner = math.prod(shape[1:-1]) if len(shape) > 2 else 1

    def read(start: int, stop: int) -> torch.Tensor:
        first, last = start // inner, -(-stop // inner)
        block = tensor_slice[first:last].reshape(-1, width)
        return block[start - first * inner : stop - first * inner].clone()

    return ArrayFile(path, key, rows, width, dtype, read)


def _open_pt(path: Path, key: str | None, what: str) -> ArrayFile:
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception as err:  # torch.load raises many types for files it cannot read safely
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise StoreError(
            f"{what}: {path} is not a tensor saved with torch.save that loads with weights_only=True ({first})"
        ) from None
    if isinstance(obj, dict):
        keys = [k for k, v in obj.items() if isinstance(v, torch.Tensor)]
        obj = obj[_pick_key(key, keys, path, what)]
    elif key is not None:
        raise StoreError(f"{what}: {path} holds one tensor, not a dict: leave out the key")
    if not isinstance(obj, torch.Tensor):
        raise StoreError(f"{what}: {path} holds a {type(obj).__name__}, not a tensor: torch.save the tensor itself")
    dtype = float_dtype(obj.dtype, path, what)
    rows, width = rows_and_width(tuple(obj.shape), path, what)
    flat = obj.reshape(rows, width)

    def read(start: int, stop: int) -> torch.Tensor:
        return flat[start:stop].clone()

    return ArrayFile(path, key, rows, width, dtype, read)


def _pick_key(key: str | None, keys: list[str], path: Path, what: str) -> str:
    if not keys:
        raise StoreError(f"{what}: {path} holds no tensors")
    if key is None:
        if len(keys) == 1:
            return keys[0]
        raise StoreError(f"{what}: {path} holds several tensors ({', '.join(keys[:8])}): say which with key")
    if key not in keys:
        raise StoreError(f"{what}: {path} has no tensor {key!r}; it holds: {', '.join(keys[:8])}")
    return key


def _torch_dtype(dtype: np.dtype, path: Path, what: str) -> torch.dtype:
    mapping = {
        np.dtype("float16"): torch.float16,
        np.dtype("float32"): torch.float32,
        np.dtype("float64"): torch.float64,
    }
    if dtype not in mapping:
        raise StoreError(f"{what}: {path} has dtype {dtype}; activations must be float16, float32 or float64")
    return mapping[dtype]


def float_dtype(dtype: object, path: Path, what: str) -> torch.dtype:
    """`dtype` (a torch dtype or a safetensors name such as "F32") as a floating torch dtype, else StoreError."""
    names = {"F16": torch.float16, "BF16": torch.bfloat16, "F32": torch.float32, "F64": torch.float64}
    found = names.get(dtype, dtype) if isinstance(dtype, str) else dtype
    if found not in _FLOAT_DTYPES:
        raise StoreError(f"{what}: {path} has dtype {dtype}; activations must be a floating-point tensor")
    return found


def rows_and_width(shape: tuple[int, ...], path: Path, what: str) -> tuple[int, int]:
    """An array shape [..., d] as (rows, d); ShapeError for fewer than 2 dimensions or no rows."""
    if len(shape) < 2:
        raise ShapeError(f"{what}: {path} has shape {list(shape)}; activations are [rows, width] (or [..., width])")
    rows, width = math.prod(shape[:-1]), shape[-1]
    if rows == 0 or width == 0:
        raise ShapeError(f"{what}: {path} has shape {list(shape)}: it holds no rows")
    return rows, width


def check_finite(x: torch.Tensor, first_row: int, file: ArrayFile) -> torch.Tensor:
    """`x` (rows first_row, first_row + 1, ... of `file`) unchanged, or StoreError naming the first row
    that holds NaN or inf."""
    bad = ~torch.isfinite(x).all(dim=1)
    if bool(bad.any()):
        row = first_row + int(bad.nonzero()[0])
        raise StoreError(f"{file.path}: row {row} holds NaN or inf; clean or drop it before training")
    return x
