"""The activation store: writer, checked reader, shuffled random-access source, normalisation folding."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from sdlkit.core.model import ModelConfig, SparseDictionary
from sdlkit.data.source import DataSource
from sdlkit.errors import ConfigError, StoreError
from sdlkit.store import (
    ActivationStore,
    StoreDataConfig,
    StoreSource,
    StoreWriter,
    fold_scales,
    read_manifest,
    truncate_store,
)

MODULES = {"blocks.0": 5, "blocks.1.mlp:output": 3}
A, B = MODULES
LABELS = ["cat", "dog", "emu"]
SOURCE = {"model": "tiny", "context_size": 4}


def make_data(n_samples: int = 120, seed: int = 0) -> dict[str, torch.Tensor]:
    """Rows of 1–4 per dataset sample; column 0 of module A is the row id (exact in float32)."""
    gen = torch.Generator().manual_seed(seed)
    per_sample = torch.randint(1, 5, (n_samples,), generator=gen)
    sample = torch.repeat_interleave(torch.arange(n_samples), per_sample)
    rows = len(sample)
    a = torch.randn(rows, MODULES[A], generator=gen) * 3 + 1
    a[:, 0] = torch.arange(rows, dtype=torch.float32)
    b = torch.randn(rows, MODULES[B], generator=gen) * 0.5
    label = torch.randint(0, len(LABELS), (n_samples,), generator=gen)[sample]
    return {A: a, B: b, "sample": sample, "label": label}


def harvest(writer: StoreWriter, data: dict[str, torch.Tensor], start: int, stop: int, per_batch: int = 8) -> None:
    """Feed samples [start, stop) to the writer in harvest batches of `per_batch` samples."""
    for lo in range(start, stop, per_batch):
        hi = min(lo + per_batch, stop)
        rows = (data["sample"] >= lo) & (data["sample"] < hi)
        writer.append({A: data[A][rows], B: data[B][rows]}, data["sample"][rows], data["label"][rows])
        writer.end_batch(hi, {"too_short": 1})


def write_store(path: Path, data: dict[str, torch.Tensor], shard_rows: int = 40, labels=LABELS) -> Path:
    writer = StoreWriter.create(path, MODULES, torch.float32, labels=labels, source=SOURCE, shard_rows=shard_rows)
    n_samples = int(data["sample"].max()) + 1
    if labels is None:
        for lo in range(0, n_samples, 8):
            rows = (data["sample"] >= lo) & (data["sample"] < lo + 8)
            writer.append({A: data[A][rows], B: data[B][rows]}, data["sample"][rows])
            writer.end_batch(min(lo + 8, n_samples))
    else:
        harvest(writer, data, 0, n_samples)
    writer.close()
    return path


@pytest.fixture
def data() -> dict[str, torch.Tensor]:
    return make_data()


@pytest.fixture
def store(tmp_path: Path, data) -> Path:
    return write_store(tmp_path / "store", data)


def source(path: Path, **options) -> StoreSource:
    values = {"store": str(path), "shuffle_buffer": 50, "eval_rows": 30, **options}
    prefetch = values.pop("prefetch", True)
    return StoreSource(StoreDataConfig(**values), prefetch=prefetch)


def stream_rows(src: StoreSource, start: int, stop: int, batch_size: int) -> torch.Tensor:
    """x_p of stream positions [start, stop), collected from whole batches."""
    first, last = start // batch_size, -(-stop // batch_size)
    x = torch.cat([src.batch(i, batch_size).x_p for i in range(first, last)])
    return x[start - first * batch_size : stop - first * batch_size]


# ----- writer and reader --------------------------------------------------------------------------
def test_rows_read_back_exactly_in_order(store: Path, data) -> None:
    reader = ActivationStore(store)
    manifest = reader.manifest
    assert reader.rows == len(data["sample"]) and reader.n_shards >= 4
    assert list(reader.modules.items()) == list(MODULES.items()) and reader.labels == LABELS
    assert manifest.progress.complete and manifest.progress.next_sample == 120
    assert manifest.progress.skipped == {"too_short": 15}
    ends = [0] + [info.end_sample for info in manifest.shards]
    assert [info.first_sample for info in manifest.shards] == ends[:-1]  # shards tile the samples
    parts = list(reader.iter_rows(None, 7))
    assert all(len(p["sample"]) == 7 for p in parts[:-1])
    for key in (A, B, "sample", "label"):
        assert torch.equal(torch.cat([p[key] for p in parts]), data[key])
    lo = reader.offsets[2]
    shard = reader.shard(2, [B])
    assert set(shard) == {B, "sample", "label", "token", "position"}
    assert torch.equal(shard["token"], torch.full_like(shard["sample"], -1))  # not given: whole-sample rows
    assert torch.equal(shard[B], data[B][lo : reader.offsets[3]])
    middle = reader.read_rows(33, 97, [A])
    assert torch.equal(middle[A], data[A][33:97]) and torch.equal(middle["label"], data["label"][33:97])


def test_stats_match_an_independent_float64_computation(store: Path, data) -> None:
    manifest = read_manifest(store)
    stats = load_file(str(store / "stats.safetensors"))
    for name in MODULES:
        x = data[name].double()
        torch.testing.assert_close(stats[f"{name}.sum"], x.sum(0), rtol=1e-12, atol=1e-9)
        torch.testing.assert_close(stats[f"{name}.sum_sq_norm"], x.square().sum(), rtol=1e-12, atol=1e-9)
        assert manifest.stats[name].mean_sq_norm == pytest.approx(float(x.square().sum(1).mean()), rel=1e-12)
        assert ActivationStore(store).mean_sq_norm(name) == manifest.stats[name].mean_sq_norm


def test_resumed_write_equals_uninterrupted(tmp_path: Path, data) -> None:
    full = write_store(tmp_path / "full", data)
    writer = StoreWriter.create(tmp_path / "part", MODULES, torch.float32, labels=LABELS, source=SOURCE, shard_rows=40)
    harvest(writer, data, 0, 56)
    rows = data["sample"] == 56  # a batch cut short: appended but never ended, so dropped
    writer.append({A: data[A][rows], B: data[B][rows]}, data["sample"][rows], data["label"][rows])
    manifest = writer.close(complete=False)
    assert manifest.progress.next_sample == 56 and not manifest.progress.complete
    (tmp_path / "part" / "shard-000099.safetensors").write_bytes(b"junk from a crash")  # unlisted: ignored

    with pytest.raises(StoreError, match="modules"):
        StoreWriter.resume(tmp_path / "part", modules={A: 5}, source=SOURCE)
    with pytest.raises(StoreError, match=r"context_size: store has 4, this harvest has 8"):
        StoreWriter.resume(tmp_path / "part", modules=MODULES, source={**SOURCE, "context_size": 8})
    writer = StoreWriter.resume(tmp_path / "part", modules=MODULES, source=SOURCE)
    assert writer.next_sample == 56 and writer.rows == int((data["sample"] < 56).sum())
    harvest(writer, data, writer.next_sample, 120)
    writer.close()

    a, b = ActivationStore(tmp_path / "part"), ActivationStore(full)
    for key in (A, B, "sample", "label"):
        assert torch.equal(a.read_rows(0, a.rows)[key], b.read_rows(0, b.rows)[key])
    assert a.manifest.progress == b.manifest.progress
    stats_a, stats_b = (
        load_file(str(tmp_path / "part" / "stats.safetensors")),
        load_file(str(full / "stats.safetensors")),
    )
    assert stats_a.keys() == stats_b.keys()
    assert all(torch.equal(stats_a[key], stats_b[key]) for key in stats_b)  # same batches: the same sums exactly
    with pytest.raises(StoreError, match="already complete"):
        StoreWriter.resume(full, modules=MODULES, source=SOURCE)
    with pytest.raises(StoreError, match="manifest.json is missing"):
        StoreWriter.resume(tmp_path / "nothing", modules=MODULES, source=SOURCE)


def test_stats_recomputed_when_a_crash_left_them_ahead(tmp_path: Path, data) -> None:
    writer = StoreWriter.create(tmp_path / "s", MODULES, torch.float32, labels=LABELS, source=SOURCE, shard_rows=40)
    harvest(writer, data, 0, 48)
    writer.close(complete=False)
    manifest = json.loads((tmp_path / "s" / "manifest.json").read_text())
    (tmp_path / "s" / "manifest.json").write_text(
        json.dumps(
            {
                **manifest,
                "shards": manifest["shards"][:-1],
                "rows": manifest["rows"] - manifest["shards"][-1]["rows"],
                "progress": {**manifest["progress"], "next_sample": manifest["shards"][-2]["end_sample"]},
            }
        )
    )
    writer = StoreWriter.resume(tmp_path / "s", modules=MODULES, source=SOURCE)
    harvest(writer, data, writer.next_sample, 120)
    writer.close()
    stats = load_file(str(tmp_path / "s" / "stats.safetensors"))
    torch.testing.assert_close(stats[f"{A}.sum"], data[A].double().sum(0), rtol=1e-12, atol=1e-9)


def test_create_refuses_an_existing_store_unless_overwrite(tmp_path: Path, store: Path) -> None:
    with pytest.raises(StoreError, match="already exists"):
        StoreWriter.create(store, MODULES, torch.float32, labels=None, source=SOURCE)
    StoreWriter.create(store, {A: 5}, torch.float16, labels=None, source=SOURCE, overwrite=True).close()
    assert read_manifest(store).rows == 0 and not (store / "shard-000000.safetensors").exists()
    other = tmp_path / "not-a-store"
    other.mkdir()
    (other / "notes.txt").write_text("keep me")
    with pytest.raises(StoreError, match="not an activation store"):
        StoreWriter.create(other, MODULES, torch.float32, labels=None, source=SOURCE, overwrite=True)
    assert (other / "notes.txt").exists()


def test_append_refuses_bad_rows(tmp_path: Path) -> None:
    writer = StoreWriter.create(tmp_path / "s", MODULES, torch.float16, labels=LABELS, source=SOURCE)
    good = {A: torch.ones(3, 5), B: torch.ones(3, 3)}
    sample, label = torch.tensor([0, 0, 1]), torch.tensor([0, 0, 2])
    bad = {A: torch.ones(3, 5), B: torch.tensor([[1.0, 0, 0], [0, 7e4, 0], [0, 0, 0]])}  # 7e4 overflows float16
    with pytest.raises(StoreError, match=rf"module '{B}' has NaN or inf .* dataset sample 0"):
        writer.append(bad, sample, label)
    with pytest.raises(StoreError, match=r"shape \(3, 4\)"):
        writer.append({**good, A: torch.ones(3, 4)}, sample, label)
    with pytest.raises(StoreError, match="missing"):
        writer.append({A: good[A]}, sample, label)
    with pytest.raises(StoreError, match="no labels but the store is labelled"):
        writer.append(good, sample)
    with pytest.raises(StoreError, match="label ids"):
        writer.append(good, sample, torch.tensor([0, 0, 3]))
    writer.append(good, sample, label)
    with pytest.raises(StoreError, match="next_sample must be past"):
        writer.end_batch(1)
    writer.end_batch(2)
    with pytest.raises(StoreError, match="duplicated"):
        writer.append(good, sample, label)


# ----- damage -------------------------------------------------------------------------------------
def test_truncated_missing_and_flipped_shards_are_named(store: Path) -> None:
    shard = store / "shard-000001.safetensors"
    raw = shard.read_bytes()
    shard.write_bytes(raw[:-10])
    with pytest.raises(StoreError, match=r"shard-000001\.safetensors is truncated.*--resume"):
        ActivationStore(store)
    flipped = bytearray(raw)
    flipped[-5] ^= 0x01  # a data byte: size and header still fine
    shard.write_bytes(bytes(flipped))
    reader = ActivationStore(store)  # the header is fine; the hash is checked on load
    reader.shard(0)
    with pytest.raises(StoreError, match=r"shard-000001\.safetensors is corrupt: its SHA-256"):
        reader.shard(1)
    with pytest.raises(StoreError, match=r"shard-000001\.safetensors is corrupt"):
        list(reader.iter_rows(None, 16))
    assert len(ActivationStore(store, verify=False).shard(1)["sample"]) > 0
    header = bytearray(raw)
    header[10] = ord("!")
    shard.write_bytes(bytes(header))
    with pytest.raises(StoreError, match=r"shard-000001\.safetensors (is corrupt|does not match)"):
        ActivationStore(store, verify=False)
    shard.unlink()
    with pytest.raises(StoreError, match=r"shard-000001\.safetensors is missing"):
        ActivationStore(store)
    manifest = truncate_store(store, 1)  # the suggested fix: drop it and later shards, then resume
    assert len(manifest.shards) == 1 and manifest.progress.next_sample == manifest.shards[0].end_sample
    writer = StoreWriter.resume(store, modules=MODULES, source=SOURCE)
    assert writer.next_sample == manifest.shards[0].end_sample


def test_unknown_modules_and_bad_eval_rows_are_config_errors(store: Path) -> None:
    with pytest.raises(ConfigError, match=rf"'nope'.*available modules: {A}, {B}"):
        source(store, inputs=[A, "nope"])
    with pytest.raises(ConfigError, match="data.targets"):
        source(store, targets=["nope"])
    with pytest.raises(ConfigError, match="eval_rows"):
        source(store, eval_rows=ActivationStore(store).rows)
    with pytest.raises(ConfigError, match="unknown option 'data.shuffle'"):
        StoreDataConfig.from_dict({"store": str(store), "shuffle": 3})


# ----- the training stream ------------------------------------------------------------------------
def test_every_training_row_once_per_epoch_and_eval_held_out(store: Path, data) -> None:
    src = source(store)
    assert isinstance(src, DataSource)
    rows = len(data["sample"])
    n_train = src.n_train
    assert rows - n_train >= 30 and data["sample"][n_train - 1] != data["sample"][n_train]  # whole samples held out
    assert src.n_in == src.n_out == sum(MODULES.values()) and src.in_blocks == [5, 3]
    x = stream_rows(src, 0, 2 * n_train, batch_size=16)
    expected = torch.cat([data[A], data[B]], dim=1)
    for epoch in range(2):
        part = x[epoch * n_train : (epoch + 1) * n_train]
        ids = part[:, 0].long()
        assert torch.equal(ids.sort().values, torch.arange(n_train))  # each training row exactly once
        assert torch.equal(part, expected[ids])
    assert not torch.equal(x[:n_train, 0], x[n_train:, 0]) and not torch.equal(
        x[:n_train, 0].long(), torch.arange(n_train)
    )
    eval_batch = src.eval_batch()
    assert torch.equal(eval_batch.x_p, expected[n_train:]) and eval_batch.x_r is eval_batch.x_p
    batch = src.batch(3, 16)
    assert batch.x_r is batch.x_p and batch.x_p.dtype == torch.float32


def test_batches_are_pure_functions_of_seed_index_and_size(store: Path) -> None:
    src = source(store)
    in_order = [src.batch(i, 24) for i in range(30)]  # 720 rows: several epochs, straddling boundaries
    shuffled = list(range(30))
    random.Random(0).shuffle(shuffled)
    out_of_order = {i: src.batch(i, 24) for i in shuffled}
    fresh = source(store, prefetch=False)
    for i in reversed(range(30)):
        assert torch.equal(in_order[i].x_p, out_of_order[i].x_p)
        assert torch.equal(in_order[i].x_p, fresh.batch(i, 24).x_p)
    other = source(store, seed=1)
    assert not torch.equal(
        torch.cat([b.x_p for b in in_order[:5]]), torch.cat([other.batch(i, 24).x_p for i in range(5)])
    )
    in_order[0].x_p.zero_()  # a caller writing into a batch must not change the stream
    assert torch.equal(src.batch(0, 24).x_p, fresh.batch(0, 24).x_p)


def test_transcoder_targets_follow_their_inputs(store: Path, data) -> None:
    src = source(store, inputs=[A], targets=[B])
    assert (src.n_in, src.n_out, src.in_blocks, src.out_blocks) == (5, 3, [5], [3])
    batch = src.batch(5, 32)
    ids = batch.x_p[:, 0].long()
    assert torch.equal(batch.x_p, data[A][ids]) and torch.equal(batch.x_r, data[B][ids])
    assert torch.equal(src.eval_batch().x_r, data[B][src.n_train :])


# ----- normalisation ------------------------------------------------------------------------------
def test_normalized_rows_have_unit_mean_squared_norm(store: Path, data) -> None:
    src = source(store, normalize=True)
    for name, scale in zip([A, B], src.in_scales, strict=True):
        assert scale == pytest.approx(float(data[name].double().square().sum(1).mean()) ** -0.5, rel=1e-9)
    x = torch.cat([stream_rows(src, 0, src.n_train, 16), src.eval_batch().x_p])  # every row once
    for block in x.split(src.in_blocks, dim=1):
        assert float(block.double().square().sum(1).mean()) == pytest.approx(1.0, rel=1e-5)
    assert source(store).in_scales == [1.0, 1.0]


@pytest.mark.parametrize("method", [{"name": "topk", "k": 3}, {"name": "jumprelu"}, {"name": "gated"}])
def test_fold_scales_gives_the_same_model_on_raw_data(method) -> None:
    in_blocks, out_blocks, in_scales, out_scales = [5, 3], [3], [0.2, 3.0], [0.5]
    config = ModelConfig(
        n_latents=12, n_in=8, n_out=3, in_blocks=in_blocks, out_blocks=out_blocks, dtype="float64", method=method
    )
    model = SparseDictionary(config, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        for tensor in model.named_tensors().values():
            if tensor.is_floating_point():
                tensor.add_(torch.randn(tensor.shape, dtype=tensor.dtype) * 0.1)
    x = torch.randn(64, 8, dtype=torch.float64) * 4
    s_in = torch.tensor([0.2] * 5 + [3.0] * 3, dtype=torch.float64)
    trained_on_scaled = model(x * s_in)
    folded = SparseDictionary(config)
    state = fold_scales(model.named_tensors(), in_blocks, out_blocks, in_scales, out_scales)
    assert set(state) == set(model.named_tensors())
    with torch.no_grad():
        for name, tensor in folded.named_tensors().items():
            tensor.copy_(state[name])
    raw = folded(x)
    assert (trained_on_scaled.x_q != 0).any()
    torch.testing.assert_close(raw.x_q, trained_on_scaled.x_q, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(raw.x_hat, trained_on_scaled.x_hat / 0.5, rtol=1e-10, atol=1e-12)


# ----- class means --------------------------------------------------------------------------------
def test_class_means_equal_an_independent_computation(store: Path, data) -> None:
    src = source(store, normalize=True)
    means, counts, ids = src.class_means()
    n = src.n_train
    x = torch.cat([data[A].double() * src.in_scales[0], data[B].double() * src.in_scales[1]], dim=1)[:n]
    labels = data["label"][:n]
    assert ids == sorted(set(labels.tolist()))
    for row, c in enumerate(ids):
        assert counts[row] == int((labels == c).sum())
        torch.testing.assert_close(means[row], x[labels == c].mean(0).float(), rtol=1e-6, atol=1e-6)
    sub_means, sub_counts, sub_ids = src.class_means([B], classes=["emu", 0])
    assert sub_ids == [2, 0] and sub_means.shape == (2, 3)
    assert sub_counts.tolist() == [int((labels == 2).sum()), int((labels == 0).sum())]
    torch.testing.assert_close(sub_means[0], x[labels == 2][:, 5:].mean(0).float(), rtol=1e-6, atol=1e-6)


def test_class_means_of_an_unlabelled_store_explain_the_fix(tmp_path: Path, data) -> None:
    path = write_store(tmp_path / "plain", data, labels=None)
    assert ActivationStore(path).labels is None and "label" not in ActivationStore(path).shard(0)
    with pytest.raises(StoreError, match="no labels.*--label-column"):
        source(path).class_means()
