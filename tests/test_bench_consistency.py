"""The bench report's PW-MCC section: rows with two or more seeds on the same data."""

from __future__ import annotations

import json

import sdlkit
from sdlkit.cli.main import main
from sdlkit.eval.consistency import pw_mcc

FAST = ("--methods", "topk", "--seeds", "0,1", "--steps", "3", "--frames", "tight", "--no-references", "--no-progress")


def test_pw_mcc_of_seeds_on_the_same_data(tmp_path):
    out = tmp_path / "b"
    assert main(["bench", "--out", str(out), *FAST, "--set", "data.seed=0"]) == 0
    report = (out / "report.md").read_text()
    section = report.split("## Cross-seed consistency (PW-MCC)")[1].split("## Recipes")[0]
    records = {r["run_id"]: r for r in json.loads((out / "results.json").read_text())}
    plain = [sdlkit.load(out / f"tight__topk__seed{s}").W_D.detach() for s in (0, 1)]
    expected = pw_mcc(*plain)
    assert "| TopK SAE " in section and f"{expected:.3f}" in section and "| 0,1 " in section
    k = records["tight__topk-fa__seed0"]["n_anchors"]
    anchored = [sdlkit.load(out / f"tight__topk-fa__seed{s}").W_D.detach()[:, k:] for s in (0, 1)]
    assert f"{pw_mcc(*anchored):.3f}" in section.split("TopK SAE + FA")[1]
    assert "drew different data" not in section


def test_seeds_on_different_data_are_not_compared(tmp_path):
    out = tmp_path / "b"
    assert main(["bench", "--out", str(out), *FAST]) == 0
    report = (out / "report.md").read_text()
    assert "2 rows are not compared: their seeds drew different data" in report
    assert "--set data.seed=0" in report


def test_no_section_with_one_seed(tmp_path):
    out = tmp_path / "b"
    args = [a if a != "0,1" else "0" for a in FAST]
    assert main(["bench", "--out", str(out), *args]) == 0
    assert "Cross-seed consistency" not in (out / "report.md").read_text()
