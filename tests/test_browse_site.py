"""The feature browser end to end on a tiny random BERT built from a config (nothing downloaded):
harvest -> train -> browse through the command line, the pages' data against independent computations,
the pages rendered by headless Chromium (skipped where it is not installed), and bad input."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import torch
import yaml

pytest.importorskip("transformers")

import sdlkit
from hf_tiny import TEXTS, one_thread, tiny_bert  # noqa: F401 (one_thread: autouse fixture)
from sdlkit.cli.main import main
from sdlkit.store import ActivationStore


def read_js(path: Path) -> dict:
    """The JSON a data file assigns to window.SDL_*."""
    text = path.read_text(encoding="utf-8")
    return json.loads(text[text.index("=") + 1 : text.rstrip().rindex(";")])


def harvest_and_train(root: Path, data: Path, module: str, model: dict, steps: int, *train: str) -> tuple[Path, Path]:
    """harvest `module` of a tiny BERT on `data` (labelled) into root/store, then train `model` on it into
    root/run through the command line; (store, run)."""
    bert, store, run, config = root / "bert", root / "store", root / "run", root / "run.yaml"
    harvest = ["harvest", "--model", str(bert), "--modules", module, "--data", str(data), "--label-column", "label"]
    assert main([*harvest, "--out", str(store), "--device", "cpu", "--no-progress"]) == 0
    values = {
        "data": {"store": str(store), "eval_rows": 6, "normalize": True},
        "model": model,
        "train": {"steps": steps, "batch_size": 32, "lr": 3e-3, "progress": False},
    }
    config.write_text(yaml.safe_dump(values))
    assert main(["train", "--config", str(config), "--out", str(run), *train]) == 0
    return store, run


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> dict[str, Path]:
    """harvest -> train (TopK, 2 class-mean anchors) -> browse, through the command line."""
    root = tmp_path_factory.mktemp("path")
    bert = tiny_bert(root / "bert")
    data = root / "docs.jsonl"
    labels = ["animals", "places", "colours"]
    data.write_text("".join(json.dumps({"text": t, "label": labels[i % 3]}) + "\n" for i, t in enumerate(TEXTS * 2)))
    model = {"n_latents": 48, "method": {"name": "topk", "k": 4}}
    store, _ = harvest_and_train(root, data, "encoder.layer.1", model, 60, "--anchors-from", "labels", "--anchors", "2")
    out = root / "site"
    assert (
        main(["browse", str(root / "run"), "--store", str(store), "--out", str(out), "--no-progress", "--top-k", "5"])
        == 0
    )
    return {"root": root, "bert": bert, "store": store, "run": root / "run", "out": out}


def test_browse_writes_every_fired_latent_with_its_contexts(site):
    out = site["out"]
    meta, index = read_js(out / "data" / "meta.js"), read_js(out / "data" / "index.js")
    assert meta["n_latents"] == 48 and meta["anchored"] == 2 and meta["per_sample"] is False
    assert meta["labels"] == ["animals", "colours", "places"]
    store = ActivationStore(site["store"])
    assert meta["rows"] == store.rows and sum(meta["label_rows"]) == store.rows
    pages = sorted(int(p.stem) for p in (out / "data" / "latents").glob("*.js"))
    assert pages == [i for i, f in enumerate(index["freq"]) if f > 0] and len(pages) > 10
    rows = store.read_rows(0, store.rows)
    model = sdlkit.load(site["run"])
    with torch.no_grad():
        codes = model.eval().encode(rows["encoder.layer.1"])
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(site["bert"])
    for latent in pages[:6]:
        page = read_js(out / "data" / "latents" / f"{latent}.js")
        assert page["count"] == int((codes[:, latent] > 0).sum())
        assert page["max"] == pytest.approx(float(codes[:, latent].max()), rel=1e-3)
        assert sum(page["hist"]) == page["count"] and len(page["near"]) == 8
        assert 0 < len(page["examples"]) <= 5
        for example in page["examples"]:
            focus = example["t"][example["c"]]
            assert example["a"][example["c"]] == pytest.approx(example["v"], rel=1e-2)
            matches = (rows["sample"] == example["s"]) & ((codes[:, latent] - example["v"]).abs() < 1e-3 * example["v"])
            row = int(matches.nonzero()[0, 0])  # the top row itself, found independently
            piece = tokenizer.convert_ids_to_tokens([int(rows["token"][row])])[0]
            assert focus == (piece[2:] if piece.startswith("##") else " " + piece)
            assert example["l"] == int(rows["label"][row])
    summary = (out / "index.html").read_text()
    assert "http" not in summary.replace("http://www.w3.org", "")  # no CDN, no server


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")


def render(url: str) -> tuple[str, list[str]]:
    """The DOM headless Chromium builds for `url` (scripts run, 5 s of virtual time) and its console lines."""
    result = subprocess.run(
        [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--enable-logging=stderr", "--log-level=0",
         "--virtual-time-budget=5000", "--dump-dom", url],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    return result.stdout, [line for line in result.stderr.splitlines() if ":CONSOLE" in line]


@pytest.mark.skipif(CHROMIUM is None, reason="Chromium is not installed (Debian: apt-get install chromium)")
def test_pages_render_in_headless_chromium(site):
    out = site["out"]
    index = read_js(out / "data" / "index.js")
    live = [i for i, f in enumerate(index["freq"]) if f > 0]
    dom, console = render((out / "index.html").resolve().as_uri())
    assert console == []  # the pages log nothing, so any console line is an error
    entries = re.findall(r'<tr class="latent" data-id="(\d+)"', dom)
    assert sorted(map(int, entries)) == live  # every latent that fired, none that did not (hidden by default)
    assert f'href="latent.html#{live[0]}"' in dom and "⚓" in dom
    latent = live[0]
    page = read_js(out / "data" / "latents" / f"{latent}.js")
    dom, console = render((out / "latent.html").resolve().as_uri() + f"#{latent}")
    assert console == []
    assert f"Latent {latent}" in dom and dom.count('class="example"') == len(page["examples"])
    assert dom.count('class="tok focus"') == len(page["examples"])  # each context marks its top token
    assert "background-color: rgb" in dom and "<svg" in dom  # highlighted tokens, the histogram
    dom, console = render((out / "latent.html").resolve().as_uri() + "#100000")
    assert console == [] and "No latent chosen" in dom


def test_browse_refuses_bad_input(site, capsys):
    run, store, out = site["run"], site["store"], site["out"]
    assert main(["browse", str(run), "--store", str(store), "--out", str(out), "--no-progress"]) == 2
    assert "already exists" in capsys.readouterr().err
    mine = site["root"] / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep")
    assert main(["browse", str(run), "--store", str(store), "--out", str(mine), "--overwrite", "--no-progress"]) == 2
    assert "refusing to overwrite" in capsys.readouterr().err and (mine / "notes.txt").exists()
    assert main(["browse", str(run), "--store", str(store), "--out", str(mine / "x"), "--top-k", "0"]) == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("sdlkit: error")]
    assert len(errors) == 1 and "--top-k" in errors[0]


def test_browse_overwrites_only_its_own_folder(site, tmp_path):
    """The browser folder carries sdlkit's folder marker, so --overwrite replaces it (and a folder written
    before the marker, recognised by its data/meta.js) but nothing else."""
    from sdlkit.io import folder_kind

    assert folder_kind(site["out"]) == "browser"
    legacy = tmp_path / "legacy"
    (legacy / "data").mkdir(parents=True)
    (legacy / "data" / "meta.js").write_text("window.SDL_META = {};")
    argv = ["browse", str(site["run"]), "--store", str(site["store"]), "--out", str(legacy), "--no-progress"]
    assert main([*argv, "--overwrite"]) == 0
    assert folder_kind(legacy) == "browser" and (legacy / "index.html").is_file()


@pytest.fixture(scope="module")
def sample_site(tmp_path_factory) -> dict:
    """harvest a mean-pooled store (a row per text, visited in shuffled order) -> train -> browse. Every
    text has its own label, so a row's text can be checked against its label exactly."""
    root = tmp_path_factory.mktemp("samples")
    tiny_bert(root / "bert")
    data = root / "docs.jsonl"
    texts = [f"{t} {word}" for t, word in zip(TEXTS * 3, ["cat", "dog", "sky"] * 22, strict=True)]
    data.write_text("".join(json.dumps({"text": t, "label": f"s{i:02d}"}) + "\n" for i, t in enumerate(texts)))
    out = root / "site"
    store, run = harvest_and_train(
        root, data, "encoder.layer.1:mean", {"n_latents": 16, "method": {"name": "topk", "k": 2}}, 20
    )
    browse = ["browse", str(run), "--store", str(store), "--no-progress", "--top-k", "4"]
    assert main([*browse, "--out", str(out)]) == 0
    return {"root": root, "data": data, "texts": texts, "out": out, "browse": browse}


def test_rows_that_stand_for_a_sample_show_its_text(sample_site):
    """Each top row shows its text, read back from the data file the store was harvested from."""
    out, texts = sample_site["out"], sample_site["texts"]
    meta = read_js(out / "data" / "meta.js")
    assert meta["per_sample"] is True
    shown = 0
    for page_file in (out / "data" / "latents").glob("*.js"):
        page = read_js(page_file)
        assert page["tokens"] == []
        for example in page["examples"]:
            assert example["x"] == texts[int(meta["labels"][example["l"]][1:])]
            shown += 1
    assert shown >= 8
    index = read_js(out / "data" / "index.js")
    cells = [cell for cell, f in zip(index["tokens"], index["freq"], strict=True) if f > 0]
    assert cells and all(any(t.startswith(cell.rstrip("…")) for t in texts) for cell in cells)


@pytest.mark.skipif(CHROMIUM is None, reason="Chromium is not installed (Debian: apt-get install chromium)")
def test_sample_texts_render_in_headless_chromium(sample_site):
    out = sample_site["out"]
    index = read_js(out / "data" / "index.js")
    dom, console = render((out / "index.html").resolve().as_uri())
    assert console == [] and ">top text</th>" in dom
    latent = next(i for i, f in enumerate(index["freq"]) if f > 0)
    page = read_js(out / "data" / "latents" / f"{latent}.js")
    dom, console = render((out / "latent.html").resolve().as_uri() + f"#{latent}")
    assert console == [] and dom.count('class="tok sample"') == len(page["examples"])
    assert page["examples"][0]["x"] in dom and 'id="tokens-head" hidden' in dom


def test_sample_text_is_never_taken_from_changed_data(sample_site, capsys):
    """Data changed since the harvest is never shown: a note by default, one error line when given with --data."""
    data, root, browse = sample_site["data"], sample_site["root"], sample_site["browse"]
    original = data.read_text()
    try:
        data.write_text(original.replace("cat", "cow"))
        capsys.readouterr()
        assert main([*browse, "--out", str(root / "site2")]) == 0
        assert "fingerprint differs" in capsys.readouterr().err
        pages = (root / "site2" / "data" / "latents").glob("*.js")
        assert all("x" not in example for page in pages for example in read_js(page)["examples"])
        assert main([*browse, "--out", str(root / "site3"), "--data", str(data)]) == 2
        errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("sdlkit:")]
        assert len(errors) == 1 and "not the data the store was harvested from" in errors[0]
    finally:
        data.write_text(original)
