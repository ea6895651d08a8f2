"""`make real`'s script (examples/minilm/run.py) on a tiny random BERT and a small labelled corpus: both stores,
Table 2 with its reference rows (checked against an independent computation), the report and the browser.
The packaged MiniLM is never needed here."""

from __future__ import annotations

import importlib.util
import json
import random
from pathlib import Path

import pytest
import torch

pytest.importorskip("transformers")

from hf_tiny import TEXTS, one_thread, tiny_bert  # noqa: F401 (one_thread: autouse fixture)
from sdlkit.store import ActivationStore, StoreDataConfig, StoreSource

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "minilm" / "run.py"
CLASSES = 34  # more than the 30 anchors, so that 4 classes are scored


def load_example():
    spec = importlib.util.spec_from_file_location("minilm_run", EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_real_example_end_to_end(tmp_path):
    rng = random.Random(0)
    corpus = tmp_path / "docs.jsonl"
    with corpus.open("w") as handle:
        for c in range(CLASSES):
            for _ in range(4):
                handle.write(json.dumps({"text": rng.choice(TEXTS), "label": f"c{c:02d}"}) + "\n")
    model = tiny_bert(tmp_path / "bert")
    example = load_example()
    small = [
        "--token-latents", "64", "--token-k", "4", "--token-steps", "20", "--token-batch", "64",
        "--token-eval-rows", "60", "--sentence-latents", "48", "--sentence-k", "4", "--sentence-steps", "20",
        "--sentence-batch", "32", "--sentence-eval-rows", "12", "--token-module", "encoder.layer.0",
    ]  # fmt: skip
    out = tmp_path / "out"
    args = example.parse(["--out", str(out), "--model-dir", str(model), "--corpus", str(corpus), *small])
    report = example.run(args)
    assert (out / "report.md").read_text() == report
    assert (out / "browser" / "index.html").is_file() and any((out / "browser" / "data" / "latents").iterdir())
    sentence_pages = list((out / "browser-sentences" / "data" / "latents").glob("*.js"))
    assert sentence_pages and all('"x":' in page.read_text() for page in sentence_pages)  # each with its texts
    results = json.loads((out / "results.json").read_text())
    for store_name in ("sentences", "tokens"):
        table = results[store_name]
        assert [(r["method"], r["anchored"]) for r in table["runs"]] == [
            (m, a) for m in ("TopK", "BatchTopK", "Matryoshka") for a in (False, True)
        ]
        assert len(table["anchored_classes"]) == 30 and table["geometry"]["classes"] == CLASSES
    for heading in ("| Method", "| TopK SAE", "| + FA", "| anchors only (30 class means)", "| chance (48 random"):
        assert heading in report
    assert "## What transfers from the paper's claim" in report and "**Token activations**" in report
    anchored = results["timings"]["anchored_latents"]  # App. H: the anchored latents of the four scanned runs
    assert [run for _, run, _ in anchored] == ["TopK + FA", "TopK + FA", "BatchTopK + FA", "Matryoshka + FA"]
    assert all(0 <= a["top_label"] <= 1 and a["anchored_frequency"] > 0 for _, _, a in anchored)

    # the anchors-only reference, independently: unit class means of the training rows; each of the 4 scored
    # classes takes its best cosine with the 30 anchored ones
    config = StoreDataConfig(store=str(out / "stores" / "sentences"), eval_rows=12)
    n_train = StoreSource(config, prefetch=False).n_train
    store = ActivationStore(out / "stores" / "sentences")
    rows = store.read_rows(0, n_train)
    x, labels = rows["encoder:unit-mean"].double(), rows["label"]
    means = torch.stack([x[labels == c].mean(0) for c in range(CLASSES)])
    means = means / means.norm(dim=1, keepdim=True)
    anchored = [store.labels.index(name) for name in results["sentences"]["anchored_classes"]]
    scored = [c for c in range(CLASSES) if c not in anchored]
    best = (means[scored] @ means[anchored].T).max(dim=1).values
    reference = results["sentences"]["references"]["anchors only (30 class means)"]
    assert reference["M_IP"] == pytest.approx(float(best.mean()), abs=1e-5)
    assert reference["M_GT"] == pytest.approx(float((best > 0.95).double().mean()))
