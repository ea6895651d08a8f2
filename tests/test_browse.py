"""The feature browser's numbers: the streaming scan and the nearest latents against dense computations.
(The whole path and the pages in Chromium: test_browse_site.py.)"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import torch

from sdlkit.browse import LatentScan, ScanOptions, scan_store
from sdlkit.browse import site as site_module
from sdlkit.browse.site import nearest_latents
from sdlkit.core import model as model_module
from sdlkit.core.kernels import SparseCodes
from sdlkit.core.model import ModelConfig, SparseDictionary
from sdlkit.store import ActivationStore, StoreWriter

LABELS = ["a", "b", "c"]


@pytest.fixture(scope="module")
def small(tmp_path_factory) -> tuple[Path, SparseDictionary, dict[str, torch.Tensor]]:
    """A labelled 200-row store of 30 samples (tokens at positions 1..n) and a random TopK dictionary."""
    folder = tmp_path_factory.mktemp("store")
    g = torch.Generator().manual_seed(0)
    lengths = torch.randint(2, 12, (30,), generator=g)
    sample = torch.repeat_interleave(torch.arange(30), lengths)
    position = torch.cat([torch.arange(1, n + 1) for n in lengths.tolist()])
    data = {
        "x": torch.randn(len(sample), 8, generator=g),
        "sample": sample,
        "position": position,
        "token": torch.randint(0, 50, (len(sample),), generator=g),
        "label": (sample % 3),
    }
    writer = StoreWriter.create(folder, {"x": 8}, torch.float32, labels=LABELS, source={}, shard_rows=64)
    for first in range(0, 30, 5):  # five samples per harvest batch, several shards
        part = (sample >= first) & (sample < first + 5)
        writer.append({"x": data["x"][part]}, sample[part], data["label"][part], data["token"][part], position[part])
        writer.end_batch(first + 5)
    writer.close()
    torch.manual_seed(1)
    model = SparseDictionary(ModelConfig(n_in=8, n_latents=24, method={"name": "topk", "k": 3}))
    return folder, model, data


def test_scan_equals_a_dense_computation(small):
    folder, model, data = small
    store = ActivationStore(folder)
    assert store.rows == len(data["sample"])
    scan = scan_store(model, store, ["x"], ScanOptions(top_k=4, window=2, bins=5, batch_size=17, progress=False))
    with torch.no_grad():
        codes = model.eval().encode(data["x"])  # [rows, L], what the scan must never hold at scale
    fired = codes > 0
    assert torch.equal(scan.count, fired.sum(0))
    torch.testing.assert_close(scan.max, codes.max(0).values)
    torch.testing.assert_close(scan.total, codes.double().sum(0))
    want = codes.topk(4, dim=0).values
    torch.testing.assert_close(scan.top_values, want)
    has = scan.top_rows >= 0
    assert torch.equal(has, want > 0)
    torch.testing.assert_close(codes.gather(0, scan.top_rows.clamp(min=0))[has], scan.top_values[has])
    for latent in range(codes.shape[1]):  # histogram: non-zero codes on 5 equal bins over (0, max]
        values = codes[fired[:, latent], latent]
        bins = (values / codes[:, latent].max() * 5).long().clamp(max=4)
        assert torch.equal(scan.hist[latent], torch.bincount(bins, minlength=5)), latent
    label_counts = torch.stack([(fired & (data["label"] == c)[:, None]).sum(0) for c in range(3)], dim=1)
    assert torch.equal(scan.label_counts, label_counts)
    means = torch.stack([data["x"][data["label"] == c].double().mean(0) for c in range(3)])
    torch.testing.assert_close(scan.class_means, means)
    for k, latent in [(0, 0), (1, 5), (3, 11), (2, 23)]:  # contexts: the sample's rows within ±2 of the top row
        row = int(scan.top_rows[k, latent])
        if row < 0:
            continue
        for slot, offset in enumerate(range(-2, 3)):
            other = row + offset
            inside = 0 <= other < len(data["sample"]) and data["sample"][other] == data["sample"][row]
            token = int(data["token"][other]) if inside else -1
            assert int(scan.context_tokens[k, latent, slot]) == token
            act = float(codes[other, latent]) if inside else 0.0
            assert float(scan.context_acts[k, latent, slot]) == pytest.approx(act, abs=1e-6)
        assert int(scan.top_samples[k, latent]) == int(data["sample"][row])
        assert int(scan.top_labels[k, latent]) == int(data["label"][row])


def assert_same_scan(got: LatentScan, want: LatentScan) -> None:
    for field in dataclasses.fields(LatentScan):
        a, b = getattr(got, field.name), getattr(want, field.name)
        if isinstance(a, torch.Tensor) and a.is_floating_point():
            torch.testing.assert_close(a, b, msg=field.name)
        else:
            assert torch.equal(a, b) if isinstance(a, torch.Tensor) else a == b, field.name


@pytest.mark.parametrize("method", [{"name": "topk", "k": 3}, "relu"])
def test_scan_never_builds_a_batch_of_dense_codes(small, monkeypatch, method):
    """TopK: the codes are the sparse kernel's entries (to_dense and encode would fail); any method: the
    forward sees row blocks of at most BLOCK_ENTRIES codes (here 3 rows of 24 latents). The scan is the one a
    dense-kernel copy of the dictionary gives with whole batches."""
    folder, _, _ = small
    store = ActivationStore(folder)
    torch.manual_seed(4)
    model = SparseDictionary(ModelConfig(n_in=8, n_latents=24, method=method))
    dense = SparseDictionary(model.config.model_copy(update={"kernel": "dense"}))
    dense.load_state_dict(model.state_dict())
    options = ScanOptions(top_k=4, window=2, bins=5, batch_size=17, progress=False)
    want = scan_store(dense, store, ["x"], options)
    seen = []
    forward = SparseDictionary.forward

    def spy(self, x_p):
        seen.append(len(x_p))
        return forward(self, x_p)

    def refuse(*args):
        raise AssertionError("dense codes were built")

    monkeypatch.setattr(model_module, "BLOCK_ENTRIES", 3 * 24)
    monkeypatch.setattr(SparseDictionary, "forward", spy)
    monkeypatch.setattr(SparseDictionary, "encode", refuse)
    monkeypatch.setattr(SparseCodes, "to_dense", refuse)
    assert_same_scan(scan_store(model, store, ["x"], options), want)
    assert max(seen) == (17 if model.config.sparse_kernel else 3)


def test_pages_are_the_same_written_in_blocks(small, tmp_path, monkeypatch):
    """The site's latent pages, converted PAGE_BLOCK latents at a time, do not depend on PAGE_BLOCK."""
    from sdlkit.browse import build_browser
    from sdlkit.io import save

    folder, model, _ = small
    save(model, tmp_path / "ckpt")
    options = ScanOptions(top_k=3, window=2, progress=False)
    build_browser(tmp_path / "ckpt", folder, tmp_path / "whole", options=options)
    monkeypatch.setattr(site_module, "PAGE_BLOCK", 5)
    summary = build_browser(tmp_path / "ckpt", folder, tmp_path / "blocks", options=options)
    assert summary["pages"] > 10
    for name in ("index.js", *(f"latents/{i}.js" for i in range(24))):
        whole, blocks = tmp_path / "whole" / "data" / name, tmp_path / "blocks" / "data" / name
        assert whole.exists() == blocks.exists()
        assert not whole.exists() or whole.read_text() == blocks.read_text(), name


def test_nearest_latents_by_decoder_cosine():
    W = torch.nn.functional.normalize(torch.randn(6, 40), dim=0)
    ids, cos = nearest_latents(W, k=3, chunk=7)
    sims = W.T @ W
    sims.fill_diagonal_(-2)
    best = sims.topk(3, dim=1)
    assert torch.equal(ids, best.indices)
    torch.testing.assert_close(cos, best.values)


def test_a_store_without_labels_or_provenance_still_browses(tmp_path):
    """A version-1 store (no token ids) of an unlabelled source: pages show values and samples, no text."""
    from sdlkit.browse import build_browser
    from sdlkit.io import save

    writer = StoreWriter.create(tmp_path / "store", {"x": 8}, torch.float32, labels=None, source={}, shard_rows=64)
    writer.manifest.version = 1
    x = torch.randn(40, 8, generator=torch.Generator().manual_seed(0))
    writer.append({"x": x}, torch.arange(40))
    writer.close()
    torch.manual_seed(2)
    save(SparseDictionary(ModelConfig(n_in=8, n_latents=16, method={"name": "topk", "k": 2})), tmp_path / "ckpt")
    summary = build_browser(
        tmp_path / "ckpt", tmp_path / "store", tmp_path / "site", options=ScanOptions(progress=False)
    )
    assert summary["rows"] == 40 and summary["pages"] == int((summary["scan"].count > 0).sum())
    page = next((tmp_path / "site" / "data" / "latents").glob("*.js")).read_text()
    data = json.loads(page[page.index("=") + 1 : page.rstrip().rindex(";")])
    assert "labels" not in data and "classes" not in data
    assert all(example["t"] == [""] and "l" not in example for example in data["examples"])
