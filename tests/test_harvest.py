"""Harvest: rows equal the models' own hidden states at the real tokens, resume is exact, CLIP embeddings,
labels, budgets, and clear errors. Tiny models with random weights are built from configs (no download)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch

pytest.importorskip("transformers")

from transformers import AutoTokenizer, CLIPImageProcessorPil

import sdlkit.harvest.forward as forward_module
from hf_tiny import TEXTS, WORDS, one_thread, save_tokenizer, tiny_clip, tiny_lm  # noqa: F401 (autouse fixture)
from sdlkit.errors import ConfigError, SdlkitError
from sdlkit.harvest import check_store_matches_model, harvest, list_modules, load_model, open_dataset
from sdlkit.store.reader import ActivationStore


@pytest.fixture(scope="module")
def gpt2(tmp_path_factory) -> Path:
    return tiny_lm(tmp_path_factory.mktemp("gpt2"))


@pytest.fixture(scope="module")
def text_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("data") / "texts.txt"
    path.write_text("\n".join(TEXTS[:8]) + "\n\n   \n" + "\n".join(TEXTS[8:]) + "\n")  # blank lines are skipped
    return path


def read_store(path: Path) -> dict[str, torch.Tensor]:
    store = ActivationStore(path)
    return store.read_rows(0, store.rows)


def expected_rows(folder: Path, texts: list[str], layers: list[int], context: int, include_special=False):
    """Independently: each text alone (no padding), hidden_states[i+1] at its non-special tokens."""
    model = load_model(str(folder)).model
    tokenizer = AutoTokenizer.from_pretrained(folder)
    rows: dict[int, list[torch.Tensor]] = {i: [] for i in layers}
    samples = []
    for index, text in enumerate(texts):
        ids = tokenizer(text, truncation=True, max_length=context, return_tensors="pt")["input_ids"]
        keep = torch.ones_like(ids[0], dtype=torch.bool)
        if not include_special:
            keep = ~torch.isin(ids[0], torch.tensor(tokenizer.all_special_ids))
        with torch.no_grad():
            hidden = model(input_ids=ids, output_hidden_states=True).hidden_states
        for i in layers:
            rows[i].append(hidden[i + 1][0][keep])
        samples += [index] * int(keep.sum())
    return {i: torch.cat(r) for i, r in rows.items()}, torch.tensor(samples)


# ----- text models ------------------------------------------------------------------------------------
@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_rows_equal_hidden_states_at_real_tokens(arch, tmp_path, text_file):
    folder = tiny_lm(tmp_path / "model", arch)
    block = "transformer.h" if arch == "gpt2" else "model.layers"
    mlp = f"{block}.1.mlp"
    manifest = harvest(
        str(folder),
        f"{block}.0,{block}.1,{mlp}:input,{mlp}",
        str(text_file),
        str(tmp_path / "s"),
        batch_size=5,
        sort_window=2,  # steps of 10 samples, each run as two length-sorted passes
        context_size=9,
        device="cpu",
        progress=False,
        shuffle_seed=None,
        shard_rows=16,
    )
    assert manifest.progress.complete and list(manifest.modules) == [f"{block}.0", f"{block}.1", f"{mlp}:input", mlp]
    assert len(manifest.shards) > 1  # several shards, read back in order
    stored = read_store(tmp_path / "s")
    want, samples = expected_rows(folder, TEXTS, [0, 1], context=9)
    assert torch.equal(stored["sample"], samples)  # sample order, tokens in order; BOS/EOS/padding excluded
    torch.testing.assert_close(stored[f"{block}.0"], want[0], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(stored[f"{block}.1"], want[1], atol=1e-5, rtol=1e-5)
    model = load_model(str(folder)).model
    with torch.no_grad():  # the recorded MLP output is the MLP applied to the recorded MLP input
        torch.testing.assert_close(model.get_submodule(mlp)(stored[f"{mlp}:input"]), stored[mlp], atol=1e-5, rtol=1e-5)
    assert not torch.allclose(stored[f"{mlp}:input"], stored[f"{block}.0"])  # the input is normed, not the stream
    assert manifest.source["include_special"] is False and manifest.source["context_size"] == 9


def test_special_tokens_kept_on_request(gpt2, tmp_path, text_file):
    harvest(
        str(gpt2),
        "transformer.h.0",
        str(text_file),
        str(tmp_path / "s"),
        batch_size=4,
        context_size=9,
        include_special=True,
        device="cpu",
        progress=False,
        shuffle_seed=None,
    )
    want, samples = expected_rows(gpt2, TEXTS, [0], context=9, include_special=True)
    stored = read_store(tmp_path / "s")
    assert torch.equal(stored["sample"], samples)
    torch.testing.assert_close(stored["transformer.h.0"], want[0], atol=1e-5, rtol=1e-5)


def test_resume_after_interrupt_gives_the_uninterrupted_rows(gpt2, tmp_path, text_file, monkeypatch):
    options = dict(batch_size=3, sort_window=2, context_size=12, device="cpu", progress=False, shard_rows=20)
    modules = "transformer.h.1,transformer.h.2.mlp:input"
    whole = harvest(str(gpt2), modules, str(text_file), str(tmp_path / "whole"), **options)

    real, calls = forward_module.record_batch, []

    def interrupted(*args, **kwargs):
        calls.append(1)
        if len(calls) == 5:  # the shape probe, two passes (step 1), then step 2's second pass
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(forward_module, "record_batch", interrupted)
    with pytest.raises(KeyboardInterrupt):
        harvest(str(gpt2), modules, str(text_file), str(tmp_path / "cut"), **options)
    monkeypatch.setattr(forward_module, "record_batch", real)
    cut = json.loads((tmp_path / "cut" / "manifest.json").read_text())
    assert not cut["progress"]["complete"] and cut["progress"]["next_sample"] == 6  # step 1's 2 × 3 samples
    with pytest.raises(SdlkitError, match="context_size"):  # other settings: refused
        harvest(
            str(gpt2), modules, str(text_file), str(tmp_path / "cut"), resume=True, **{**options, "context_size": 8}
        )
    resumed = harvest(str(gpt2), modules, str(text_file), str(tmp_path / "cut"), resume=True, **options)
    assert resumed.progress.complete and resumed.rows == whole.rows
    a, b = read_store(tmp_path / "whole"), read_store(tmp_path / "cut")
    for key in ("sample", "transformer.h.1", "transformer.h.2.mlp:input"):
        assert torch.equal(a[key], b[key]), key  # bit for bit
    with pytest.raises(SdlkitError, match="already complete"):
        harvest(str(gpt2), modules, str(text_file), str(tmp_path / "cut"), resume=True, **options)


def test_labels_from_jsonl_and_parquet_columns(gpt2, tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    animals = ["dog", "cat", "bird"]
    jsonl = tmp_path / "d.jsonl"
    jsonl.write_text("".join(json.dumps({"body": t, "kind": animals[i % 3]}) + "\n" for i, t in enumerate(TEXTS)))
    parquet = tmp_path / "d.parquet"
    pq.write_table(pa.table({"text": TEXTS, "y": [i % 4 for i in range(len(TEXTS))]}), parquet)
    opts = dict(batch_size=8, context_size=10, device="cpu", progress=False, shuffle_seed=None)
    m1 = harvest(
        str(gpt2), "transformer.h.0", str(jsonl), str(tmp_path / "s1"), text_column="body", label_column="kind", **opts
    )
    m2 = harvest(str(gpt2), "transformer.h.0", str(parquet), str(tmp_path / "s2"), label_column="y", **opts)
    assert m1.labels == ["bird", "cat", "dog"] and m2.labels == ["0", "1", "2", "3"]
    s1, s2 = read_store(tmp_path / "s1"), read_store(tmp_path / "s2")
    ids1 = torch.tensor([m1.labels.index(animals[i % 3]) for i in range(len(TEXTS))])
    assert torch.equal(s1["label"], ids1[s1["sample"]])
    assert torch.equal(s2["label"], s2["sample"] % 4)
    torch.testing.assert_close(s1["transformer.h.0"], s2["transformer.h.0"])  # same texts, same rows
    with pytest.raises(ConfigError, match=r"column 'label' is not in .*columns present: text, y"):
        harvest(str(gpt2), "transformer.h.0", str(parquet), str(tmp_path / "s3"), label_column="label", **opts)
    with pytest.raises(ConfigError, match=r"column 'text' is not in .*line 1; columns present: body, kind"):
        harvest(str(gpt2), "transformer.h.0", str(jsonl), str(tmp_path / "s4"), **opts)


def test_budgets_stop_at_batch_boundaries(gpt2, tmp_path, text_file):
    opts = dict(batch_size=4, sort_window=1, context_size=12, device="cpu", progress=False)
    harvest(str(gpt2), "transformer.h.0", str(text_file), str(tmp_path / "all"), **opts)
    full = read_store(tmp_path / "all")
    m = harvest(str(gpt2), "transformer.h.0", str(text_file), str(tmp_path / "r"), max_rows=30, **opts)
    per_sample = torch.bincount(full["sample"])
    batch_rows = per_sample[: (len(per_sample) // 4) * 4].view(-1, 4).sum(1).cumsum(0)
    expected = int(batch_rows[(batch_rows >= 30).nonzero()[0, 0]])  # the first batch boundary past 30 rows
    assert m.progress.complete and m.rows == expected
    assert torch.equal(read_store(tmp_path / "r")["transformer.h.0"], full["transformer.h.0"][:expected])
    m = harvest(str(gpt2), "transformer.h.0", str(text_file), str(tmp_path / "n"), max_samples=6, **opts)
    assert m.rows == int(per_sample[:6].sum()) and m.progress.next_sample == 6


def test_two_models_for_a_crosscoder(tmp_path, text_file):
    a, b = tiny_lm(tmp_path / "a", seed=1), tiny_lm(tmp_path / "b", seed=2)
    harvest(
        [str(a), str(b)],
        "0:transformer.h.1,1:transformer.h.1",
        str(text_file),
        str(tmp_path / "s"),
        batch_size=6,
        context_size=10,
        device="cpu",
        progress=False,
        shuffle_seed=None,
    )
    stored = read_store(tmp_path / "s")
    for key, folder in (("0:transformer.h.1", a), ("1:transformer.h.1", b)):
        want, samples = expected_rows(folder, TEXTS, [1], context=10)
        assert torch.equal(stored["sample"], samples)
        torch.testing.assert_close(stored[key], want[1], atol=1e-5, rtol=1e-5)
    assert not torch.allclose(stored["0:transformer.h.1"], stored["1:transformer.h.1"])
    with pytest.raises(ConfigError, match="needs a model prefix"):
        harvest(
            [str(a), str(b)],
            "transformer.h.1",
            str(text_file),
            str(tmp_path / "t"),
            device="cpu",
            progress=False,
            shuffle_seed=None,
        )
    other = tiny_lm(tmp_path / "c", vocab_words=[*WORDS, "zebra"])
    with pytest.raises(ConfigError, match="different tokenizer vocabularies"):
        harvest(
            [str(a), str(other)],
            "0:transformer.h.1,1:transformer.h.1",
            str(text_file),
            str(tmp_path / "u"),
            device="cpu",
            progress=False,
            shuffle_seed=None,
        )


# ----- images -------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def image_folder(tmp_path_factory) -> Path:
    from PIL import Image

    root = tmp_path_factory.mktemp("images")
    generator = torch.Generator().manual_seed(0)
    for label in ("dog", "cat"):
        (root / label).mkdir()
        for i in range(4):
            pixels = torch.randint(0, 256, (20 + 4 * i, 24, 3), generator=generator, dtype=torch.uint8).numpy()
            Image.fromarray(pixels).save(root / label / f"{i}.png")
    (root / "cat" / "2b.png").write_bytes(b"not a png at all")  # sorts between 2.png and 3.png
    return root


@pytest.mark.parametrize("kind", ["with_projection", "full"])
def test_clip_pooled_and_projected_embeddings(kind, tmp_path, image_folder):
    from PIL import Image

    folder = tiny_clip(tmp_path / "clip", kind)
    manifest = harvest(
        str(folder),
        "clip:pooled,clip:projected",
        str(image_folder),
        str(tmp_path / "s"),
        batch_size=3,
        device="cpu",
        progress=False,
        shuffle_seed=None,
    )
    assert list(manifest.modules) == ["vision_model.post_layernorm", "visual_projection"]
    assert manifest.modules["visual_projection"].dim == 16 and manifest.labels == ["cat", "dog"]
    assert manifest.progress.skipped == {"undecodable_images": 1} and manifest.rows == 8
    stored = read_store(tmp_path / "s")
    files = [*sorted((image_folder / "cat").glob("?.png")), *sorted((image_folder / "dog").glob("*.png"))]
    images = [Image.open(f).convert("RGB") for f in files]
    pixels = CLIPImageProcessorPil.from_pretrained(folder)(images=images, return_tensors="pt")["pixel_values"]
    model = load_model(str(folder)).model
    with torch.no_grad():
        if kind == "full":
            pooled = model.vision_model(pixel_values=pixels).pooler_output
            projected = model.get_image_features(pixel_values=pixels).pooler_output
        else:
            out = model(pixel_values=pixels, output_hidden_states=True)
            pooled, projected = model.vision_model(pixel_values=pixels).pooler_output, out.image_embeds
    torch.testing.assert_close(stored["vision_model.post_layernorm"], pooled, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(stored["visual_projection"], projected, atol=1e-5, rtol=1e-5)
    assert stored["sample"].tolist() == [0, 1, 2, 4, 5, 6, 7, 8]  # sample 3 (the corrupt file) skipped
    assert stored["label"].tolist() == [0, 0, 0, 0, 1, 1, 1, 1]
    assert "torchvision" not in sys.modules
    with pytest.raises(ConfigError, match="one per token .* one per sample"):
        harvest(
            str(folder),
            "vision_model.encoder.layers.0,clip:pooled",
            str(image_folder),
            str(tmp_path / "t"),
            device="cpu",
            progress=False,
            shuffle_seed=None,
        )


# ----- bad input ----------------------------------------------------------------------------------------
def test_bad_input_gets_one_line_errors(gpt2, tmp_path, text_file, image_folder):
    opts = dict(device="cpu", progress=False)
    out = str(tmp_path / "s")
    with pytest.raises(
        ConfigError, match=r"'transformer.h.9' is not in .*did you mean: .*transformer.h.0.*--list-modules"
    ):
        harvest(str(gpt2), "transformer.h.9", str(text_file), out, **opts)
    with pytest.raises(ConfigError, match="data file .*missing.txt does not exist"):
        harvest(str(gpt2), "transformer.h.0", str(tmp_path / "missing.txt"), out, **opts)
    (tmp_path / "d.csv").write_text("text\nhello\n")
    with pytest.raises(ConfigError, match=r"unknown data format '.csv'.*\.jsonl"):
        harvest(str(gpt2), "transformer.h.0", str(tmp_path / "d.csv"), out, **opts)
    with pytest.raises(ConfigError, match="pip install datasets"):
        harvest(str(gpt2), "transformer.h.0", "someone/some-dataset", out, **opts)
    with pytest.raises(ConfigError, match="takes text but .* holds image samples"):
        harvest(str(gpt2), "transformer.h.0", str(image_folder), out, **opts)
    with pytest.raises(ConfigError, match="model folder .*no-model does not exist"):
        harvest(str(tmp_path / "no-model"), "transformer.h.0", str(text_file), out, **opts)
    with pytest.raises(ConfigError, match="clip:pooled needs a CLIP model"):
        harvest(str(gpt2), "clip:pooled", str(text_file), out, **opts)
    with pytest.raises(ConfigError, match="context-size = 129 exceeds the 128 positions"):
        harvest(str(gpt2), "transformer.h.0", str(text_file), out, context_size=129, **opts)
    with pytest.raises(ConfigError, match="batch-size = 0"):
        harvest(str(gpt2), "transformer.h.0", str(text_file), out, batch_size=0, **opts)
    assert not (tmp_path / "s").exists()  # nothing was written by a refused harvest
    (tmp_path / "s").mkdir()
    (tmp_path / "s" / "keep.txt").write_text("mine")
    with pytest.raises(SdlkitError, match="already exists and is not empty"):
        harvest(str(gpt2), "transformer.h.0", str(text_file), out, **opts)
    with pytest.raises(SdlkitError, match="cannot resume"):
        harvest(str(gpt2), "transformer.h.0", str(text_file), out, resume=True, **opts)


def test_list_modules_and_store_dims_check(gpt2, tmp_path, text_file):
    model = load_model(str(gpt2)).model
    names = list_modules(model)
    assert "transformer.h.1.mlp" in names and "lm_head" in names and "" not in names
    manifest = harvest(
        str(gpt2),
        "transformer.h.1,transformer.h.1.mlp.c_fc",
        str(text_file),
        str(tmp_path / "s"),
        max_samples=2,
        device="cpu",
        progress=False,
    )
    assert manifest.modules["transformer.h.1.mlp.c_fc"].dim == 128
    check_store_matches_model(manifest, model, ["transformer.h.1", "transformer.h.1.mlp.c_fc"])  # matches: silent
    wider = load_model(str(tiny_lm(tmp_path / "wide", width=48))).model
    with pytest.raises(ConfigError, match=r"'transformer.h.1' has dim 32 in the store but 48 in the model"):
        check_store_matches_model(manifest, wider, ["transformer.h.1"])
    with pytest.raises(ConfigError, match="is not in the store"):
        check_store_matches_model(manifest, model, ["transformer.h.0"])


def test_shuffled_visit_is_a_seeded_permutation_of_file_order(gpt2, tmp_path, text_file):
    opts = dict(batch_size=4, context_size=9, device="cpu", progress=False)
    harvest(str(gpt2), "transformer.h.0", str(text_file), str(tmp_path / "plain"), shuffle_seed=None, **opts)
    mixed = harvest(str(gpt2), "transformer.h.0", str(text_file), str(tmp_path / "mixed"), shuffle_seed=3, **opts)
    plain_rows, mixed_rows = read_store(tmp_path / "plain"), read_store(tmp_path / "mixed")
    order = open_dataset(str(text_file)).shuffled(3).order
    assert mixed.source["shuffle_seed"] == 3 and not torch.equal(order, torch.arange(len(order)))
    assert torch.equal(mixed_rows["sample"].unique(), torch.arange(len(TEXTS)))  # positions, all of them
    for position in range(len(TEXTS)):  # position p holds the rows of original sample order[p]
        torch.testing.assert_close(
            mixed_rows["transformer.h.0"][mixed_rows["sample"] == position],
            plain_rows["transformer.h.0"][plain_rows["sample"] == int(order[position])],
            atol=1e-5,
            rtol=1e-5,
        )


def test_harvest_options_are_checked_before_anything_loads(tmp_path):
    from sdlkit.harvest import HarvestOptions

    with pytest.raises(ConfigError, match="unknown harvest option 'max_row'; known: batch_size"):
        harvest("no-such-model", "x", "no-such-data", str(tmp_path / "s"), max_row=5)
    with pytest.raises(ConfigError, match="--sort-window = 0 is not allowed"):
        harvest("no-such-model", "x", "no-such-data", str(tmp_path / "s"), HarvestOptions(batch_size=4), sort_window=0)
    assert not (tmp_path / "s").exists()
