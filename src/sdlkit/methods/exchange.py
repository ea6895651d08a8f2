"""The exchange declarations' vocabulary lives in sdlkit.core.exchange, beside MethodConfig (the core must not
import the methods); sdlkit.interop and the tests still import it from here."""

from sdlkit.core.exchange import Exchange, Reading, Written

__all__ = ["Exchange", "Reading", "Written"]
