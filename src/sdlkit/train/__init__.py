"""Training: the loop, dead-latent resampling, checkpoints with exact resume."""

from sdlkit.train.trainer import Trainer, TrainResult

__all__ = ["TrainResult", "Trainer"]
