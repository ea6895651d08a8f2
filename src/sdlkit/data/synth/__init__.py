"""SynthSAEBench (Chanin & Garriga-Alonso, arXiv 2602.14687): synthetic SAE data with Zipfian firing, a feature
forest with mutually exclusive children, a low-rank Gaussian-copula correlation, folded-normal magnitude spreads,
an orthogonalised dictionary and a hidden bias, implemented from SAELens's `sae_lens.synthetic` specification.

config.py (SynthConfig, presets), features.py (the model's fixed parts), forest.py (the trees and their rules),
sampler.py (codes drawn as active entries), source.py (the random-access data source).
"""

from sdlkit.data.synth.config import SYNTH_PRESETS, SynthConfig, synth_preset
from sdlkit.data.synth.features import SynthModel, build_model
from sdlkit.data.synth.source import SynthSource

__all__ = ["SYNTH_PRESETS", "SynthConfig", "SynthModel", "SynthSource", "build_model", "synth_preset"]
