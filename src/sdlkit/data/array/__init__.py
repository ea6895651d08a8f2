"""Rows a user already has as training data: an array file (kind `array`: `.npy`, `.safetensors`, `.pt`), and from
Python a tensor in memory (kind `tensor`) or batches (kind `batches`). Importing the package registers the three."""

from sdlkit.data.array import batches, source  # noqa: F401  (register kinds "array", "tensor", "batches")
from sdlkit.data.array.batches import BatchesDataConfig, BatchesSource, batches_config
from sdlkit.data.array.config import ArrayDataConfig, TensorDataConfig
from sdlkit.data.array.files import open_array
from sdlkit.data.array.source import ArraySource, RowsSource, TensorSource, tensor_config

__all__ = [
    "ArrayDataConfig",
    "ArraySource",
    "BatchesDataConfig",
    "BatchesSource",
    "RowsSource",
    "TensorDataConfig",
    "TensorSource",
    "batches_config",
    "open_array",
    "tensor_config",
]
