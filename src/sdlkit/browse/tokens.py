"""Token ids as the text a reader sees: "unbelievable", "co" "rou" "tine" joined, spaces where words start.

Each token becomes a display string that carries its own leading space when it starts a word, so a
context is the concatenation of its tokens: WordPiece (BERT) continuation pieces lose their "##" and
everything else but closing punctuation gets a space; byte-level BPE (GPT-2) and SentencePiece tokens are
decoded one by one (their "Ġ" / "▁" becomes the space). Without a tokenizer, ids show as "#id".
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sdlkit.errors import ConfigError

CLOSING = {".", ",", ";", ":", "!", "?", ")", "]", "}", "%"}
"""WordPiece tokens shown without a space before them."""


def load_tokenizer(name: str | None) -> Any:
    """The tokenizer at `name` (a model folder or hub name), or None when `name` is None."""
    if name is None:
        return None
    try:
        from transformers import AutoTokenizer
    except ImportError:
        raise ConfigError("showing tokens needs Hugging Face transformers: pip install 'sdlkit[models]'") from None
    try:
        return AutoTokenizer.from_pretrained(name)
    except (OSError, ValueError, KeyError) as err:
        first = (str(err).strip().splitlines() or [type(err).__name__])[0]
        hint = "" if Path(name).exists() else " (the folder does not exist)"
        raise ConfigError(f"cannot load the tokenizer {name!r}{hint}: {first}; pass --tokenizer PATH") from None


def display_strings(tokenizer: Any, ids: list[int]) -> dict[int, str]:
    """token id -> display string (with its leading space when it starts a word) for each of `ids`."""
    if tokenizer is None:
        return {i: f" #{i}" for i in ids}
    pieces = tokenizer.convert_ids_to_tokens(list(ids))
    backend = getattr(tokenizer, "backend_tokenizer", None)
    model = getattr(backend, "model", None)
    if type(model).__name__ == "WordPiece":  # BERT split punctuation off words: closing marks get no space
        prefix = getattr(model, "continuing_subword_prefix", None) or "##"
        return {
            i: p[len(prefix) :] if p.startswith(prefix) else p if p in CLOSING else " " + p
            for i, p in zip(ids, pieces, strict=True)
        }
    out = {}
    for i, piece in zip(ids, pieces, strict=True):
        if piece.startswith("▁"):  # SentencePiece: its decoder drops a sequence's first space, so map it here
            out[i] = " " + piece[1:]
        else:
            out[i] = tokenizer.convert_tokens_to_string([piece])
    return out
