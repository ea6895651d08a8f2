"""benchmarks/anchor_discovery.py end to end at a few steps a run (the numbers are not the point here)."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_the_four_way_comparison_runs_and_resumes(tmp_path, monkeypatch, capsys):
    spec = importlib.util.spec_from_file_location("anchor_discovery", REPO / "benchmarks" / "anchor_discovery.py")
    script = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "anchor_discovery", script)  # its dataclass looks itself up there
    spec.loader.exec_module(script)
    argv = ["anchor_discovery.py", "--out", str(tmp_path / "out"), "--frames", "tight", "--rows", "topk"]
    argv += ["--extra-rows", "", "--discovery-runs", "2", "--seeds", "10", "--steps", "3", "--anchors", "4"]
    monkeypatch.setattr(sys, "argv", argv)
    script.main()
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    conditions = {line["condition"]: line for line in summary["frames"]["tight"]["topk"]}
    assert {"none", "random", "ground_truth", "none_long"} <= set(conditions)
    assert conditions["ground_truth"]["k"] == 4 and conditions["ground_truth"]["anchors_true"] == 1.0
    assert conditions["none_long"]["steps"] == 9  # (discovery runs + 1) × steps: the compute of (b)
    assert "## tight frame, topk" in (tmp_path / "out" / "summary.md").read_text()
    records = json.loads((tmp_path / "out" / "records.json").read_text())
    script.main()  # resumed: nothing is trained again
    assert json.loads((tmp_path / "out" / "records.json").read_text()) == records
    capsys.readouterr()
