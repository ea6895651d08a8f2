"""`sdlkit compare`, `sdlkit anchors discover` and `sdlkit train --anchors-from FILE`, end to end on the tiny
LRB preset and on a tiny activation store."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml
from safetensors import safe_open

import sdlkit
from conftest import tiny_values
from sdlkit.cli.main import main
from sdlkit.eval import consistency as consistency_module
from sdlkit.eval.consistency import pw_mcc
from sdlkit.io import read_config, resolve_checkpoint
from test_store_training import class_store
from test_store_training import values as store_values


def train_runs(tmp_path: Path, values: dict, seeds=(0, 1, 2), steps: int = 150) -> list[str]:
    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump(values))
    runs = []
    for seed in seeds:
        out = tmp_path / f"run{seed}"
        assert (
            main(
                [
                    "train",
                    "--config",
                    str(config),
                    "--out",
                    str(out),
                    "--seed",
                    str(seed),
                    "--set",
                    f"train.steps={steps}",
                ]
            )
            == 0
        )
        runs.append(str(out))
    return runs


@pytest.fixture(scope="module")
def lrb_runs(tmp_path_factory) -> list[str]:
    return train_runs(tmp_path_factory.mktemp("lrb"), tiny_values(steps=150))


def test_compare_prints_the_matrix_and_json(lrb_runs, capsys):
    capsys.readouterr()
    assert main(["compare", *lrb_runs]) == 0
    out = capsys.readouterr().out
    assert "| #1 |" in out and "mean PW-MCC over 3 pairs" in out and "64 latents" in out
    assert main(["compare", *lrb_runs[:2], "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    models = [sdlkit.load(run) for run in lrb_runs[:2]]
    expected = pw_mcc(models[0].W_D.detach(), models[1].W_D.detach())
    assert result["matrix"][0][1] == pytest.approx(expected) and result["mean_pw_mcc"] == pytest.approx(expected)
    pair = result["pairs"][0]
    assert (pair["a"], pair["b"]) == (0, 1) and len(pair["scores"]) == 64 and len(pair["partner"]) == 64
    assert sum(pair["scores"]) / 64 == pytest.approx(expected)
    assert len(result["latents"][1]["scores"]) == 64


def test_compare_refuses_one_run_and_mismatched_runs(lrb_runs, tmp_path, capsys):
    assert main(["compare", lrb_runs[0]]) == 2
    assert "at least two runs" in capsys.readouterr().err
    other = tmp_path / "other"
    sdlkit.save(sdlkit.SparseDictionary(sdlkit.ModelConfig(n_in=7, n_latents=4, method={"name": "relu"})), other)
    assert main(["compare", lrb_runs[0], str(other)]) == 2
    assert "different dimensions" in capsys.readouterr().err


def test_compare_refuses_exact_matching_above_the_limit_and_names_candidates(lrb_runs, tmp_path, capsys, monkeypatch):
    """Above EXACT_LIMIT pairs (here lowered to below 64 x 64) exact matching is refused in one line that names
    --candidates; with it, compare runs (K = 64 takes every pair: the exact value)."""
    models = [sdlkit.load(run) for run in lrb_runs[:2]]
    exact = pw_mcc(models[0].W_D.detach(), models[1].W_D.detach())
    monkeypatch.setattr(consistency_module, "EXACT_LIMIT", 64 * 64 - 1)
    capsys.readouterr()
    assert main(["compare", *lrb_runs[:2]]) == 2
    err = capsys.readouterr().err
    assert err.startswith("sdlkit: error: exact matching of 64 x 64 latents needs a 32.8 KB cost matrix")
    assert "pass --candidates K" in err and err.count("\n") == 1
    out = tmp_path / "anchors.safetensors"
    assert main(["anchors", "discover", *lrb_runs[:2], "--out", str(out)]) == 2
    assert "pass --candidates K" in capsys.readouterr().err and not out.exists()
    assert main(["compare", *lrb_runs[:2], "--candidates", "64", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["mean_pw_mcc"] == pytest.approx(exact, abs=1e-6)  # float32 |cos|


def test_discover_checks_its_device_first(tmp_path, capsys):
    assert main(["anchors", "discover", "run1", "run2", "--out", str(tmp_path / "a"), "--device", "tpu"]) == 2
    assert "'tpu'" in capsys.readouterr().err


def test_discover_then_train_with_the_file(lrb_runs, tmp_path, capsys):
    anchors = tmp_path / "anchors.safetensors"
    assert main(["anchors", "discover", *lrb_runs, "--out", str(anchors), "--threshold", "0.8", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    k = report["count"]
    assert k >= 1 and report["rule"]["min_runs"] == 3 and len(report["runs"]) == 3
    with safe_open(str(anchors), "pt") as handle:
        assert handle.metadata()["format"] == "sdlkit-anchors" and list(handle.get_slice("B").get_shape()) == [20, k]
    # an existing file is never replaced unasked
    assert main(["anchors", "discover", *lrb_runs, "--out", str(anchors)]) == 2
    assert "pass --overwrite" in capsys.readouterr().err

    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump(tiny_values(steps=20)))
    run = tmp_path / "anchored"
    argv = [
        "train",
        "--config",
        str(config),
        "--out",
        str(run),
        "--anchors-from",
        str(anchors),
        "--set",
        "train.anchors.mode=hard",
    ]
    assert main([*argv, "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert 0 <= result["gt_recovery_decoder"] <= 1
    saved = read_config(resolve_checkpoint(run))["run"]["train"]["anchors"]
    assert saved["source"] == "file" and saved["count"] == k and saved["file"] == str(anchors.resolve())
    # hard anchoring: the first k latents are the file's directions
    model, B = sdlkit.load(run), safe_open(str(anchors), "pt").get_tensor("B")
    assert torch.allclose(model.W_D[:, :k].detach(), B / B.norm(dim=0), atol=1e-5)
    # --anchors K takes the K most consistent; resuming with a changed count is refused
    assert (
        main(
            [
                "train",
                "--config",
                str(config),
                "--out",
                str(tmp_path / "one"),
                "--anchors-from",
                str(anchors),
                "--anchors",
                "1",
            ]
        )
        == 0
    )
    capsys.readouterr()
    assert main([*argv, "--resume", "--anchors", "1"]) == 2
    assert "different config" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("value", "match"),
    [("missing.safetensors", "not ground_truth, labels, or an existing anchors file"), ("c.yaml", "not a readable")],
)
def test_anchors_from_a_bad_file_is_one_line(tmp_path, capsys, value, match):
    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump(tiny_values(steps=5)))
    assert (
        main(["train", "--config", str(config), "--out", str(tmp_path / "r"), "--anchors-from", str(tmp_path / value)])
        == 2
    )
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and match in err


def test_anchors_from_ground_truth_still_works(tmp_path, capsys):
    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump(tiny_values(steps=5)))
    argv = ["train", "--config", str(config), "--out", str(tmp_path / "r"), "--anchors-from", "ground_truth"]
    assert main([*argv, "--anchors", "3"]) == 0
    assert read_config(resolve_checkpoint(tmp_path / "r"))["run"]["train"]["anchors"]["source"] == "ground_truth"


def test_consistency_and_discovery_on_an_activation_store(tmp_path, capsys):
    """Real data has no ground truth: compare, discover and anchor work from the runs alone."""
    store, _ = class_store(tmp_path / "store")
    runs = train_runs(tmp_path, store_values(store), seeds=(0, 1), steps=60)
    capsys.readouterr()
    assert main(["compare", *runs, "--json"]) == 0
    assert 0 < json.loads(capsys.readouterr().out)["mean_pw_mcc"] <= 1
    anchors = tmp_path / "anchors.safetensors"
    assert main(["anchors", "discover", *runs, "--out", str(anchors), "--threshold", "0.5", "--count", "2"]) == 0
    assert "anchors shared by at least 2 of 2 runs" in capsys.readouterr().out
    config = tmp_path / "c.yaml"
    assert (
        main(["train", "--config", str(config), "--out", str(tmp_path / "anchored"), "--anchors-from", str(anchors)])
        == 0
    )
    assert read_config(resolve_checkpoint(tmp_path / "anchored"))["run"]["train"]["anchors"]["count"] == 2
