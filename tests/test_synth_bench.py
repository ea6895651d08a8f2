"""`sdlkit bench --preset synth` / `synth-16k` (sdlkit.paper.bench.synth): the plan, the calibration's
interpolation, and the whole path end to end on the tiny synth data (the published scale only as a plan)."""

from __future__ import annotations

import json

import pytest

from sdlkit.cli.main import main
from sdlkit.paper.bench import BenchSpec, run_synth_bench
from sdlkit.paper.bench import synth as synth_bench
from sdlkit.paper.bench.synth import _interpolate, synth_plans

TINY = ["data.preset=tiny", "model.n_latents=32"]


def test_plans_follow_the_published_settings():
    plans = synth_plans(BenchSpec(preset="synth-16k"))
    assert len(plans) == 8  # 2 L0s × BatchTopK, Matryoshka, L1, JumpReLU
    assert {p.target_l0 for p in plans} == {20, 25}
    first = plans[0].values
    assert first["data"] == {"kind": "synth", "preset": "synthsaebench-16k"}
    assert first["model"]["n_latents"] == 4096 and first["train"]["batch_size"] == 1024
    assert first["train"]["steps"] * 1024 >= 200_000_000 and first["train"]["lr"] == 3e-4
    batchtopk = next(p for p in plans if p.row == "batchtopk" and p.target_l0 == 25)
    assert batchtopk.values["model"]["method"] == {"name": "batchtopk", "k": 25, "auxk": {}}
    cpu = synth_plans(BenchSpec(preset="synth"))
    assert {p.target_l0 for p in cpu} == {10, 12} and cpu[0].values["data"]["preset"] == "cpu"


def test_interpolation_is_log_log_between_the_bracketing_trials():
    trials = [{"coefficient": 1.0, "l0": 100.0}, {"coefficient": 4.0, "l0": 25.0}, {"coefficient": 16.0, "l0": 4.0}]
    assert _interpolate(trials, 50.0) == pytest.approx(2.0)  # L0 ∝ 1/c between the first two
    assert _interpolate(trials, 1000.0) == 1.0  # outside the trials: the nearest end
    assert _interpolate(trials, 1.0) == 16.0


def test_synth_bench_end_to_end_and_resume(tmp_path, monkeypatch):
    monkeypatch.setitem(synth_bench.EVAL_SAMPLES, "synth-cpu", 2000)
    spec = BenchSpec(preset="synth", rows=["batchtopk", "relu"], steps=6, overrides=TINY)
    records = run_synth_bench(spec, tmp_path / "out", progress=False)
    assert [r["run_id"] for r in records] == [
        "L010__batchtopk__seed0",
        "L010__relu__seed0",
        "L012__batchtopk__seed0",
        "L012__relu__seed0",
    ]
    for record in records:
        for key in ("mcc", "f1", "uniqueness", "explained_variance", "gt_recovery", "max_inner_product_decoder"):
            assert 0 <= record[key] <= 1, key
        assert record["eval_samples"] == 2000 and record["anchored"] is False
        assert (tmp_path / "out" / record["run_dir"] / "ground_truth.safetensors").is_file()
    relu = records[1]
    assert relu["calibration"]["field"] == "l1_coefficient" and len(relu["calibration"]["trials"]) == 5
    assert relu["config"]["model"]["method"]["l1_coefficient"] == pytest.approx(relu["calibration"]["coefficient"])
    report = (tmp_path / "out" / "report.md").read_text()
    assert "published: L0=20" in report and "0.8183" in report  # BatchTopK's published F1 at L0 = 20
    again = run_synth_bench(spec, tmp_path / "out", resume=True, progress=False)
    assert [r["run_id"] for r in again] == [r["run_id"] for r in records]


def test_published_scale_runs_tiny_through_the_cli(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(synth_bench.EVAL_SAMPLES, "synth-16k", 1000)
    out = tmp_path / "bench"
    argv = ["bench", "--preset", "synth-16k", "--methods", "matryoshka,jumprelu", "--steps", "4", "--out", str(out)]
    argv += [arg for item in TINY for arg in ("--set", item)] + ["--no-progress"]
    assert main(argv) == 0
    records = json.loads((out / "results.json").read_text())
    assert [r["target_l0"] for r in records] == [20, 20, 25, 25]
    assert records[1]["calibration"]["field"] == "l0_coefficient"
    assert "the comparison with the published table" in capsys.readouterr().out
