"""σ registry. Importing this package registers every built-in method."""

from sdlkit.methods import gated, jumprelu, matryoshka, relu, topk  # noqa: F401  (registration)
from sdlkit.methods.base import METHODS, Activation, AuxKConfig, MethodConfig, method_config, register_method

__all__ = ["METHODS", "Activation", "AuxKConfig", "MethodConfig", "method_config", "register_method"]
