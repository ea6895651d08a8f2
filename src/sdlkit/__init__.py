"""sdlkit: sparse dictionary learning (SAEs, transcoders, crosscoders) under one objective.

import sdlkit
model = sdlkit.load("runs/topk/")            # a checkpoint folder, or a run folder (its latest)
x_q = model.encode(x_p)                      # codes [batch, n_latents]
"""

from sdlkit.core.model import ModelConfig, SparseDictionary
from sdlkit.errors import CheckpointError, ConfigError, SdlkitError, ShapeError, TrainingDiverged
from sdlkit.io import load, save
from sdlkit.methods import METHODS, method_config  # importing sdlkit.methods registers the built-in methods

__version__ = "0.1.0"

__all__ = [
    "METHODS",
    "CheckpointError",
    "ConfigError",
    "ModelConfig",
    "SdlkitError",
    "ShapeError",
    "SparseDictionary",
    "TrainingDiverged",
    "__version__",
    "load",
    "method_config",
    "save",
]
