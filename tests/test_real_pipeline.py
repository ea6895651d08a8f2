"""The real-activation pipeline through the command line: harvest a tiny GPT-2's MLP input/output pair,
train a transcoder on the store, evaluate it with the dictionary spliced back into the model."""

from __future__ import annotations

import json

import pytest
import yaml

pytest.importorskip("transformers")

from hf_tiny import TEXTS, one_thread, tiny_lm  # noqa: F401 (one_thread: autouse fixture)
from sdlkit.cli.main import main
from sdlkit.store import ActivationStore

MLP_IN, MLP_OUT = "transformer.h.1.mlp:input", "transformer.h.1.mlp"


def test_harvest_train_eval_splice(tmp_path, capsys):
    model = tiny_lm(tmp_path / "gpt2")
    data = tmp_path / "texts.jsonl"
    data.write_text("".join(json.dumps({"text": t, "topic": "ab"[i % 2]}) + "\n" for i, t in enumerate(TEXTS)))
    store = tmp_path / "store"
    harvest = ["harvest", "--model", str(model), "--data", str(data), "--out", str(store), "--device", "cpu"]
    assert main([*harvest, "--modules", f"{MLP_IN},{MLP_OUT}", "--label-column", "topic", "--batch-size", "4"]) == 0
    out = capsys.readouterr().out
    opened = ActivationStore(store)
    assert f"{opened.rows:,} rows" in out and "labels: 2 classes (a, b)" in out
    assert opened.modules == {MLP_IN: 32, MLP_OUT: 32}

    config = tmp_path / "transcoder.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "data": {
                    "store": str(store),
                    "inputs": [MLP_IN],
                    "targets": [MLP_OUT],
                    "eval_rows": 40,
                    "normalize": True,
                },
                "model": {"n_latents": 64, "method": {"name": "topk", "k": 8}},
                "train": {"steps": 150, "batch_size": 32, "lr": 3e-3, "progress": False},
            }
        )
    )
    assert main(["train", "--config", str(config), "--out", str(tmp_path / "run")]) == 0
    capsys.readouterr()
    assert main(["eval", str(tmp_path / "run"), "--store", str(store), "--splice", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["inputs"] == [MLP_IN] and report["targets"] == [MLP_OUT]
    assert 0 < report["fvu"] < 1.5 and report["n_samples"] >= 40
    assert report["ce_zero"] != report["ce_clean"] and report["tokens"] > 0
    expected = (report["ce_zero"] - report["ce_spliced"]) / (report["ce_zero"] - report["ce_clean"])
    assert abs(report["ce_loss_recovered"] - expected) < 1e-9 and report["kl_div"] >= 0


def test_harvest_errors_are_one_line_exit_2(tmp_path, capsys):
    model = tiny_lm(tmp_path / "gpt2")
    data = tmp_path / "texts.txt"
    data.write_text("\n".join(TEXTS) + "\n")
    args = ["harvest", "--model", str(model), "--data", str(data), "--out", str(tmp_path / "s"), "--device", "cpu"]
    assert main([*args, "--modules", "transformer.h.9"]) == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("sdlkit: error")]
    assert len(errors) == 1 and "transformer.h.9" in errors[0] and "--list-modules" in errors[0]
    assert main(["harvest", "--model", str(model)]) == 2
    assert "--modules, --data, --out" in capsys.readouterr().err
    assert main(["harvest", "--model", str(model), "--list-modules"]) == 0
    assert "transformer.h.1.mlp" in capsys.readouterr().out
