"""Store format v2 and the harvest's length-sorted passes: each row's token id and position equal the
tokenizer's own, sorted passes give the rows of file-order batches, pooled embeddings equal the masked mean
of the model's last hidden state, and a version-1 store still reads and resumes as version 1."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

pytest.importorskip("transformers")

from transformers import AutoTokenizer, BertModel

from hf_tiny import TEXTS, one_thread, tiny_bert  # noqa: F401 (autouse fixture)
from sdlkit.harvest import harvest
from sdlkit.harvest.batching import pad_ids, sorted_passes
from sdlkit.store import ActivationStore, StoreDataConfig, StoreSource, StoreWriter, read_manifest

OPTS = dict(context_size=12, device="cpu", progress=False, shuffle_seed=None, label_column="label")


@pytest.fixture(scope="module")
def bert(tmp_path_factory) -> Path:
    return tiny_bert(tmp_path_factory.mktemp("bert"))


@pytest.fixture(scope="module")
def texts(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("data") / "texts.jsonl"
    path.write_text("".join(json.dumps({"text": t, "label": "ab"[i % 2]}) + "\n" for i, t in enumerate(TEXTS)))
    return path


def rows(path: Path) -> dict[str, torch.Tensor]:
    store = ActivationStore(path)
    return store.read_rows(0, store.rows)


def test_rows_carry_their_token_id_and_position(bert, texts, tmp_path):
    harvest(str(bert), "encoder.layer.0", str(texts), str(tmp_path / "s"), batch_size=4, sort_window=3, **OPTS)
    stored = rows(tmp_path / "s")
    tokenizer = AutoTokenizer.from_pretrained(bert)
    special = set(tokenizer.all_special_ids)
    want_token, want_position, want_sample = [], [], []
    for index, text in enumerate(TEXTS):  # independently: each text alone, its non-special tokens in order
        ids = tokenizer(text, truncation=True, max_length=12)["input_ids"]
        for position, token in enumerate(ids):
            if token not in special:
                want_token.append(token), want_position.append(position), want_sample.append(index)
    assert stored["token"].tolist() == want_token
    assert stored["position"].tolist() == want_position and stored["position"].min() >= 1  # [CLS] at 0 excluded
    assert stored["sample"].tolist() == want_sample


def test_sorted_passes_give_the_rows_of_file_order_batches(bert, texts, tmp_path):
    harvest(str(bert), "encoder.layer.1", str(texts), str(tmp_path / "plain"), batch_size=4, sort_window=1, **OPTS)
    harvest(str(bert), "encoder.layer.1", str(texts), str(tmp_path / "sorted"), batch_size=4, sort_window=4, **OPTS)
    plain, ordered = rows(tmp_path / "plain"), rows(tmp_path / "sorted")
    for key in ("sample", "token", "position", "label"):
        assert torch.equal(plain[key], ordered[key]), key
    torch.testing.assert_close(plain["encoder.layer.1"], ordered["encoder.layer.1"], atol=1e-5, rtol=1e-5)
    manifest = read_manifest(tmp_path / "sorted")
    assert manifest.source["sort_window"] == 4 and manifest.version == 2


def test_sorted_passes_and_padding_helpers():
    lengths = torch.tensor([5, 2, 9, 2, 7])
    passes = sorted_passes(lengths, 2)
    assert [p.tolist() for p in passes] == [[1, 3], [0, 4], [2]]  # stable: equal lengths keep their order
    ids, attention = pad_ids([[7, 8, 9], [4]], pad_id=0)
    assert ids.tolist() == [[7, 8, 9], [4, 0, 0]] and attention.tolist() == [[1, 1, 1], [1, 0, 0]]


def test_pooled_rows_are_the_masked_mean_of_the_last_hidden_state(bert, texts, tmp_path):
    manifest = harvest(
        str(bert), "encoder:mean,encoder:unit-mean", str(texts), str(tmp_path / "s"), batch_size=5, **OPTS
    )
    assert list(manifest.modules) == ["encoder:mean", "encoder:unit-mean"]
    stored = rows(tmp_path / "s")
    model = BertModel.from_pretrained(bert).eval()
    tokenizer = AutoTokenizer.from_pretrained(bert)
    with torch.no_grad():  # each text alone, no padding: the mean over all its tokens, [CLS] and [SEP] included
        means = torch.stack(
            [
                model(**tokenizer(t, truncation=True, max_length=12, return_tensors="pt")).last_hidden_state[0].mean(0)
                for t in TEXTS
            ]
        )
    torch.testing.assert_close(stored["encoder:mean"], means, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(
        stored["encoder:unit-mean"], means / means.norm(dim=1, keepdim=True), atol=1e-5, rtol=1e-5
    )
    assert stored["sample"].tolist() == list(range(len(TEXTS)))  # one row per sample, in sample order
    assert (stored["token"] == -1).all() and (stored["position"] == -1).all()


def test_a_version_1_store_reads_and_resumes_as_version_1(tmp_path):
    writer = StoreWriter.create(tmp_path / "v1", {"x": 3}, torch.float32, labels=None, source={}, shard_rows=4)
    writer.manifest.version = 1  # what sdlkit wrote before row provenance
    x = torch.arange(30, dtype=torch.float32).view(10, 3)
    writer.append({"x": x[:6]}, torch.arange(6), token=torch.arange(6))  # provenance has no place in v1
    writer.end_batch(6)
    writer.close(complete=False)
    raw = json.loads((tmp_path / "v1" / "manifest.json").read_text())
    assert raw["version"] == 1
    resumed = StoreWriter.resume(tmp_path / "v1", modules={"x": 3}, source={})
    resumed.append({"x": x[6:]}, torch.arange(6, 10))
    resumed.end_batch(10)
    resumed.close()
    store = ActivationStore(tmp_path / "v1")
    data = store.read_rows(0, store.rows)
    assert store.manifest.version == 1 and set(data) == {"x", "sample"}
    assert torch.equal(data["x"], x) and torch.equal(data["sample"], torch.arange(10))
    source = StoreSource(StoreDataConfig(store=str(tmp_path / "v1"), eval_rows=2), prefetch=False)
    assert torch.equal(source.eval_batch().x_p, x[8:])
