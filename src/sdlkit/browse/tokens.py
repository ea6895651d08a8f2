"""Token ids as the text a reader sees: "unbelievable", "co" "rou" "tine" joined, spaces where words start.

Each token becomes a display string that carries its own leading space when it starts a word, so a
context is the concatenation of its tokens: WordPiece (BERT) continuation pieces lose their "##" and
everything else but closing punctuation gets a space; byte-level BPE (GPT-2) pieces are bytes ("Ġ" is the
space byte) and SentencePiece pieces are text ("▁" becomes the space) or bytes (`<0xE2>`, byte fallback).
Byte pieces can split a character ("é" is two bytes, "—" three), so a context is decoded as one byte
stream and each character is shown with the token that completes it (TokenText.context); a byte piece
alone shows "�" for what it cannot complete. Without a tokenizer, ids show as "#id".
"""

from __future__ import annotations

import codecs
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sdlkit.errors import ConfigError

CLOSING = {".", ",", ";", ":", "!", "?", ")", "]", "}", "%"}
"""WordPiece tokens shown without a space before them."""
BYTE_PIECE = re.compile(r"<0x([0-9A-Fa-f]{2})>")
"""A SentencePiece byte-fallback token: one raw byte."""


@dataclass
class TokenText:
    """How the token ids of a store read as text. `strings`: id -> display string of the token alone (its
    leading space included); `raw`: id -> the bytes of a token that is a byte piece."""

    strings: dict[int, str]
    raw: dict[int, bytes] = field(default_factory=dict)

    def get(self, token: int, default: str = "") -> str:
        """The display string of `token` on its own."""
        return self.strings.get(token, default)

    def context(self, ids: list[int]) -> list[str]:
        """The display strings of consecutive tokens `ids`, one per token: byte pieces are decoded as one
        stream, so a character split over several tokens appears whole with the last of them."""
        if not self.raw:
            return [self.strings.get(i, "") for i in ids]
        stream = codecs.getincrementaldecoder("utf-8")("replace")
        out = []
        for i in ids:
            if i in self.raw:
                out.append(stream.decode(self.raw[i]))
            else:  # text between byte pieces ends any character they left open
                out.append(stream.decode(b"", final=True) + self.strings.get(i, ""))
                stream.reset()
        if out:
            out[-1] += stream.decode(b"", final=True)
        return out


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


def token_text(tokenizer: Any, ids: list[int]) -> TokenText:
    """How each of `ids` reads (see the module docstring) under `tokenizer` (None: as "#id")."""
    if tokenizer is None:
        return TokenText({i: f" #{i}" for i in ids})
    pieces = tokenizer.convert_ids_to_tokens(list(ids))
    backend = getattr(tokenizer, "backend_tokenizer", None)
    model = getattr(backend, "model", None)
    if type(model).__name__ == "WordPiece":  # BERT split punctuation off words: closing marks get no space
        prefix = getattr(model, "continuing_subword_prefix", None) or "##"
        return TokenText(
            {
                i: p[len(prefix) :] if p.startswith(prefix) else p if p in CLOSING else " " + p
                for i, p in zip(ids, pieces, strict=True)
            }
        )
    if _byte_level(backend):
        table = _byte_table()
        raw = {i: bytes(table[c] for c in p) for i, p in zip(ids, pieces, strict=True) if all(c in table for c in p)}
    else:
        raw = {i: bytes([int(m[1], 16)]) for i, p in zip(ids, pieces, strict=True) if (m := BYTE_PIECE.fullmatch(p))}
    strings = {i: raw[i].decode("utf-8", "replace") for i in raw}
    for i, piece in zip(ids, pieces, strict=True):
        if i in raw:
            continue
        if piece.startswith("▁"):  # SentencePiece: its decoder drops a sequence's first space, so map it here
            strings[i] = " " + piece[1:].replace("▁", " ")
        else:
            strings[i] = tokenizer.convert_tokens_to_string([piece])
    return TokenText(strings, raw)


def _byte_level(backend: Any) -> bool:
    """Whether the fast tokenizer's pre-tokenizer (or decoder) is byte-level BPE, as GPT-2's."""
    parts = [getattr(backend, "pre_tokenizer", None), getattr(backend, "decoder", None)]
    return any("ByteLevel" in repr(part) for part in parts if part is not None)


def _byte_table() -> dict[str, int]:
    """Byte-level BPE's alphabet, character -> byte: the printable Latin-1 bytes stand for themselves, the
    other 68 bytes (controls, space, soft hyphen) for the characters from U+0100 on, in byte order."""
    kept = [*range(0x21, 0x7F), *range(0xA1, 0xAD), *range(0xAE, 0x100)]
    shifted = sorted(set(range(256)) - set(kept))
    return {**{chr(b): b for b in kept}, **{chr(0x100 + n): b for n, b in enumerate(shifted)}}
