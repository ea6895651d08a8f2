"""The built-in methods, one file each. Importing this package registers them in the core's registry
(sdlkit.core.method), whose API it re-exports."""

from sdlkit.core.method import METHODS, Activation, AuxKConfig, MethodConfig, method_config, register_method
from sdlkit.methods import gated, jumprelu, matryoshka, relu, topk  # noqa: F401  (registration)

__all__ = ["METHODS", "Activation", "AuxKConfig", "MethodConfig", "method_config", "register_method"]
