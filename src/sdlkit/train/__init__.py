"""Training: the loop, dead-latent resampling, checkpoints with exact resume, batched ensembles."""

from sdlkit.train.ensemble import EnsembleTrainer
from sdlkit.train.fit import fit
from sdlkit.train.trainer import Trainer, TrainResult

__all__ = ["EnsembleTrainer", "TrainResult", "Trainer", "fit"]
