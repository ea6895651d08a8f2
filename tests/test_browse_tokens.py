"""Token ids as display strings for the three tokenizer families a store can come from: WordPiece (BERT),
byte-level BPE (GPT-2) and SentencePiece-style Metaspace (Llama, T5). Each tokenizer is trained here on a
few sentences (nothing downloaded); a context's display strings joined must read as the text itself, also
where a character is several bytes split over several byte pieces."""

from __future__ import annotations

import pytest

pytest.importorskip("transformers")
from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

from sdlkit.browse.tokens import token_text

CORPUS = [
    "the cat sat on the mat.",
    "a dog ran under the tree, then stopped!",
    "unbelievable: the bird flew (far) away",
    "print(value) returns 42; the end",
]


def wordpiece() -> PreTrainedTokenizerFast:
    tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.decoder = decoders.WordPiece()
    tok.train_from_iterator(CORPUS, trainers.WordPieceTrainer(vocab_size=60, special_tokens=["[UNK]", "[PAD]"]))
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", pad_token="[PAD]")


def byte_level() -> PreTrainedTokenizerFast:
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    alphabet = pre_tokenizers.ByteLevel.alphabet()
    tok.train_from_iterator(CORPUS, trainers.BpeTrainer(vocab_size=300, initial_alphabet=alphabet))
    return PreTrainedTokenizerFast(tokenizer_object=tok)


def metaspace() -> PreTrainedTokenizerFast:
    """Llama's layout: "▁" marks a word's start; characters outside the vocabulary become byte pieces."""
    tok = Tokenizer(models.BPE(unk_token="<unk>", byte_fallback=True))
    tok.pre_tokenizer = pre_tokenizers.Metaspace()
    tok.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse()])
    byte_pieces = [f"<0x{b:02X}>" for b in range(256)]
    tok.train_from_iterator(CORPUS, trainers.BpeTrainer(vocab_size=400, special_tokens=["<unk>", *byte_pieces]))
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>")


def joined(tokenizer, text: str) -> str:
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    shown = token_text(tokenizer, sorted(set(ids))).context(ids)
    assert len(shown) == len(ids) > len(text.split())  # some words are split, so the test sees continuations
    return "".join(shown)


@pytest.mark.parametrize("text", ["the unbelievable cat sat under the tree.", "print(the dog) ran far"])
def test_wordpiece_pieces_join_to_the_text(text):
    # BERT's pre-tokenizer splits punctuation off words and keeps no trace of the spaces, so each piece gets
    # one unless it is a "##" continuation or a closing mark: "print(the dog)" reads "print ( the dog)"
    # (BERT's own decode gives "print ( the dog ) ran far")
    expected = " " + text.replace("(", " ( ")
    assert joined(wordpiece(), text) == expected


NON_ASCII = "the café — naïve 日本 cat"  # 2-, 3- and 3-byte characters, each split over byte pieces


@pytest.mark.parametrize("text", ["the unbelievable cat sat under the tree.", "print(value) flew away; 42", NON_ASCII])
def test_byte_level_pieces_join_to_the_text(text):
    assert joined(byte_level(), text) == text  # "Ġ" becomes the word's leading space; the first word has none


@pytest.mark.parametrize("text", ["the unbelievable cat sat under the tree.", "print(value) flew away; 42", NON_ASCII])
def test_metaspace_pieces_join_to_the_text(text):
    assert joined(metaspace(), text) == " " + text  # every word, the first included, starts with "▁"


def test_a_split_character_shows_with_the_token_that_completes_it():
    tokenizer = byte_level()
    ids = tokenizer("café", add_special_tokens=False)["input_ids"]
    pieces = tokenizer.convert_ids_to_tokens(ids)
    assert pieces[-2:] == ["Ã", "©"]  # "é" is the two bytes C3 A9, two pieces here
    reading = token_text(tokenizer, ids)
    assert reading.context(ids)[-2:] == ["", "é"]
    assert reading.get(ids[-1]) == "�"  # alone, a piece that only ends a character cannot show it
    assert reading.context(ids[-1:]) == ["�"]  # nor can a context that starts inside a character


def test_without_a_tokenizer_ids_show_as_ids():
    reading = token_text(None, [5, 17])
    assert reading.strings == {5: " #5", 17: " #17"} and reading.context([17, 5]) == [" #17", " #5"]
