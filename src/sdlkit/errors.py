"""Errors that describe a problem in what the user gave, with the fix.

The CLI turns every `SdlkitError` into one line on standard error and exit status 2; anything else
is a bug in sdlkit and keeps its traceback.
"""

from __future__ import annotations


class SdlkitError(ValueError):
    """A problem in the user's input (config, tensors, files): the message names it and the fix."""


class ConfigError(SdlkitError):
    """A config field has a value that is not allowed."""


class ShapeError(SdlkitError):
    """A tensor has the wrong shape or dtype."""


class CheckpointError(SdlkitError):
    """A checkpoint is missing, corrupt, or from a different config."""


class TrainingDiverged(SdlkitError):
    """A batch or the loss became NaN or inf: training stopped before it could save bad weights."""
