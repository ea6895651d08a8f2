"""`sdlkit bench` (the core issue's version): every row trains and lands in results.json and report.md."""

import json

import pytest

from sdlkit.cli import main
from sdlkit.experiments.bench import RECIPES


def test_bench_writes_results_and_report(tmp_path, capsys):
    out = tmp_path / "bench"
    argv = ["bench", "--methods", "batchtopk,crosscoder", "--steps", "3", "--out", str(out), "--no-progress"]
    assert main(argv) == 0
    records = json.loads((out / "results.json").read_text())
    assert [r["method"] for r in records] == ["batchtopk", "crosscoder"]
    for record in records:
        assert {"mse", "fvu", "l0", "dead_fraction", "train_seconds", "samples_seen", "config"} <= set(record)
        assert (out / record["run_dir"] / "checkpoints").is_dir()
    assert records[0]["samples_seen"] == 3 * 1024
    assert {"fvu_source_0", "fvu_source_1"} <= set(records[1])  # the crosscoder reports each source
    report = (out / "report.md").read_text()
    assert "| batchtopk" in report and "## Recipes" in report
    assert "| crosscoder" in capsys.readouterr().out
    # a second bench into the same folder is refused unless asked to overwrite
    assert main(argv) == 2
    assert main([*argv, "--overwrite"]) == 0


@pytest.mark.parametrize("name", list(RECIPES))
def test_every_recipe_is_a_valid_config(name):
    from sdlkit.config import run_config
    from sdlkit.experiments.bench import PRESETS, bench_config

    config = run_config(bench_config(PRESETS["quick"], RECIPES[name], seed=0, device="cpu", steps=None))
    config.model.method.build_activation(config.model.n_latents)
