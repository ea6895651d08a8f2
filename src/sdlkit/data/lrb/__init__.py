"""The Linear Representation Bench (paper App. C): exact ground-truth features, codes drawn per sample.

config.py validates the settings (LRBConfig, the presets), features.py builds the frames W_p / W_r (gaussian or
tight), hierarchy.py the parent/child forest, codes.py draws the sparse codes, and source.py is the random-access
data source that maps them to (x_p, x_r) batches.
"""

from sdlkit.data.lrb.config import LRB_PRESETS, LRBConfig, lrb_preset
from sdlkit.data.lrb.source import LRBSource

__all__ = ["LRB_PRESETS", "LRBConfig", "LRBSource", "lrb_preset"]
