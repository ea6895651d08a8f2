"""The Linear Representation Bench (paper App. C): exact ground-truth features, codes drawn per sample.

features.py builds the frames W_p / W_r (gaussian or tight), hierarchy.py the parent/child forest,
source.py the random-access data source that draws (x_p, x_r) batches from them.
"""

from sdlkit.data.lrb.source import LRB_PRESETS, LRBConfig, LRBSource, lrb_preset

__all__ = ["LRB_PRESETS", "LRBConfig", "LRBSource", "lrb_preset"]
