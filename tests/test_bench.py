"""`sdlkit bench`: records with the promised fields, recomputable from the saved files; resume; refusals."""

import json

import pytest
import torch

import sdlkit
from sdlkit.cli import main
from sdlkit.experiments import bench as bench_module
from sdlkit.experiments.bench import ALL_METHODS, PRESETS, BenchSpec, plan_runs, recipe
from sdlkit.io import load_tensors

FIELDS = {
    "method",
    "anchored",
    "n_anchors",
    "anchor_indices",
    "gt_recovery",
    "max_inner_product",
    "gt_recovery_decoder",
    "max_inner_product_decoder",
    "fvu",
    "l0",
    "dead_fraction",
    "train_seconds",
    "samples_seen",
    "seed",
    "run_dir",
    "config",
}


def bench(out, *extra):
    return main(["bench", "--out", str(out), "--no-progress", *extra])


@pytest.fixture(scope="module")
def quick_bench(tmp_path_factory):
    """The full 14-row quick bench, trained for 3 steps a run (the numbers are not the point here)."""
    out = tmp_path_factory.mktemp("bench") / "out"
    assert bench(out, "--steps", "3") == 0
    return out


def test_fourteen_records_with_the_promised_fields(quick_bench):
    records = json.loads((quick_bench / "results.json").read_text())
    assert len(records) == 14
    assert [(r["method"], r["anchored"]) for r in records[:4]] == [
        ("relu", False),
        ("relu", True),
        ("jumprelu", False),
        ("jumprelu", True),
    ]
    for r in records:
        assert set(r) >= FIELDS, FIELDS - set(r)
        assert r["samples_seen"] == 3 * 1024
        assert (r["n_anchors"] == 26) == r["anchored"] and len(r["anchor_indices"]) == r["n_anchors"]
        assert r["config"]["data"]["n_features"] == 260  # the full config, LRB parameters included
    report = (quick_bench / "report.md").read_text()
    assert report.count("|   + FA") == 7 and "| TopK SAE" in report and "84.9%" in report
    for plot in ("recovery_curves.png", "bars_gt_recovery.png", "bars_max_inner_product.png"):
        assert (quick_bench / plot).stat().st_size > 10_000


def test_a_record_can_be_recomputed_from_the_run_folder(quick_bench):
    record = next(r for r in json.loads((quick_bench / "results.json").read_text()) if r["run_id"] == "topk-fa__seed0")
    model = sdlkit.load(quick_bench / record["run_dir"])
    truth = load_tensors(quick_bench / record["run_dir"] / "ground_truth.safetensors")
    keep = [i for i in range(truth["W_p"].shape[1]) if i not in set(record["anchor_indices"])]
    # brute force: full cosine matrix, no chunking, float64
    enc = model.W_E.double() / model.W_E.double().norm(dim=1, keepdim=True)
    gt = truth["W_p"].double() / truth["W_p"].double().norm(dim=0, keepdim=True)
    best = (enc @ gt).abs().max(dim=0).values[keep]
    assert record["max_inner_product"] == pytest.approx(best.mean().item(), abs=1e-5)
    assert record["gt_recovery"] == pytest.approx((best > 0.95).double().mean().item(), abs=1e-9)
    dec = model.W_D.double() / model.W_D.double().norm(dim=0, keepdim=True)
    best_dec = (dec.T @ gt).abs().max(dim=0).values[keep]
    assert record["max_inner_product_decoder"] == pytest.approx(best_dec.mean().item(), abs=1e-5)


def test_twins_are_scored_on_the_same_features(quick_bench):
    records = {r["run_id"]: r for r in json.loads((quick_bench / "results.json").read_text())}
    base, fa = records["batchtopk__seed0"], records["batchtopk-fa__seed0"]
    assert base["anchor_indices"] == [] and base["excluded_features"] == fa["anchor_indices"]


def test_same_folder_needs_resume_and_resume_skips_finished_runs(tmp_path, capsys):
    out = tmp_path / "b"
    args = ("--methods", "topk", "--steps", "2")
    assert bench(out, *args) == 0
    assert bench(out, *args) == 2
    assert "pass --resume" in capsys.readouterr().err
    records = json.loads((out / "results.json").read_text())
    (out / "results.json").write_text(json.dumps(records[:1]))  # as if the bench died after its first run
    assert bench(out, *args, "--resume") == 0
    printed = capsys.readouterr().out
    assert "[1/2]" not in printed and "[2/2] topk-fa__seed0" in printed
    assert [r["run_id"] for r in json.loads((out / "results.json").read_text())] == ["topk__seed0", "topk-fa__seed0"]


def test_a_folder_with_another_bench_is_refused(tmp_path, capsys):
    out = tmp_path / "b"
    assert bench(out, "--methods", "topk", "--steps", "2") == 0
    assert bench(out, "--methods", "relu", "--steps", "2", "--resume") == 2
    assert "holds results of a different bench (methods differ)" in capsys.readouterr().err
    assert bench(out, "--methods", "relu", "--steps", "2", "--overwrite") == 0


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--preset", "nope"], "unknown bench preset 'nope'"),
        (["--methods", "topk,nope"], "unknown bench method 'nope'"),
        (["--anchors", "300"], "--anchors 300 is larger than the number of features n = 260"),
        (["--tau", "0"], "--tau 0.0 is not allowed: τ must be in (0, 1]"),
        (["--tau", "1.5"], "τ must be in (0, 1]"),
        (["--seeds", "a,b"], "--seeds 'a,b' is not a comma-separated list of integers"),
    ],
)
def test_bad_bench_input_is_one_line_and_exit_2(tmp_path, capsys, args, message):
    assert bench(tmp_path / "b", *args) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err, err


def test_ablation_quick_variants_scale_down_with_the_same_ratios():
    def plans(preset):
        spec = BenchSpec(preset, True, PRESETS[preset].methods, [0], None, 0.1, "soft", 0.95, None, False, "cpu")
        return plan_runs(spec)

    superposition = plans("superposition")
    assert [p.setting for p in superposition[::2]] == [f"n={n}" for n in range(800, 1401, 100)]
    assert [p.values["data"]["n_features"] for p in superposition[::2]] == [208, 234, 260, 286, 312, 339, 365]
    assert {p.values["model"]["method"]["k"] for p in plans("topk-k")} == {8, 16, 32}
    sparsity = plans("sparsity")
    assert sorted({p.values["data"]["S"] for p in sparsity}) == [0.9, 0.99, 0.995]
    assert len(plans("interference")) == 4 * 5 * 2
    paper = BenchSpec("topk-k", False, ["topk"], [0], None, 0.1, "soft", 0.95, None, False, "cpu")
    assert {p.values["model"]["method"]["k"] for p in plan_runs(paper)} == {32, 64, 128}
    assert {p.values["model"]["n_latents"] for p in plan_runs(paper)} == {16000}


def test_an_ablation_runs_and_plots(tmp_path):
    out = tmp_path / "b"
    assert bench(out, "--preset", "topk-k", "--quick", "--steps", "2") == 0
    records = json.loads((out / "results.json").read_text())
    assert [r["setting"] for r in records] == ["k=32", "k=32", "k=64", "k=64", "k=128", "k=128"]
    assert (out / "ablation_gt_recovery.png").is_file() and "## k=64" in (out / "report.md").read_text()


def test_sweep_picks_the_coefficient_nearest_the_true_l0(tmp_path):
    out = tmp_path / "b"
    assert bench(out, "--methods", "relu", "--steps", "6", "--sweep") == 0
    record = json.loads((out / "results.json").read_text())[0]
    trials = record["sweep"]["trials"]
    assert [t["coefficient"] for t in trials] == pytest.approx([0.05, 0.1, 0.2, 0.4, 0.8])
    nearest = min(trials, key=lambda t: abs(torch.tensor(max(t["l0"], 1e-3) / record["true_l0"]).log()))
    assert record["sweep"]["chosen"] == nearest["coefficient"]
    assert record["config"]["model"]["method"]["l1_coefficient"] == nearest["coefficient"]


@pytest.mark.parametrize("name", ALL_METHODS)
def test_every_recipe_is_a_valid_method(name):
    method, data, note = recipe(name, true_l0=2.6, steps=1000)
    sdlkit.method_config(method).build_activation(512)
    assert note and set(data) <= {"mode", "n_sources"}


def test_set_overrides_every_run_and_is_part_of_the_bench_identity(tmp_path, capsys):
    out = tmp_path / "b"
    assert bench(out, "--methods", "topk", "--steps", "2", "--set", "model.n_latents=300") == 0
    records = json.loads((out / "results.json").read_text())
    assert {r["config"]["model"]["n_latents"] for r in records} == {300}
    assert "--set model.n_latents=300" in (out / "report.md").read_text()
    assert bench(out, "--methods", "topk", "--steps", "2", "--resume") == 2
    assert "(overrides differ)" in capsys.readouterr().err


def test_batched_bench_gives_the_numbers_of_run_by_run_training(tmp_path, monkeypatch):
    """Seeds of a row and the trials of a sweep train as one ensemble; the records match training every
    run alone (same fields, same numbers up to float32 rounding)."""
    sizes = []

    class Counting(bench_module.EnsembleTrainer):
        def fit(self):
            sizes.append(self.E)
            return super().fit()

    monkeypatch.setattr(bench_module, "EnsembleTrainer", Counting)
    args = ("--methods", "topk,relu", "--seeds", "0,1", "--steps", "8", "--sweep", "--set", "model.kernel=dense")
    assert bench(tmp_path / "batched", *args, "--batch", "always") == 0
    assert sorted(sizes) == [2, 2, 2, 2, 5, 5]  # 4 rows × 2 seeds; relu's sweep for seeds 0 and 1
    assert bench(tmp_path / "alone", *args, "--batch", "never") == 0
    assert bench(tmp_path / "auto", *args) == 0  # on CPU the quick scale's runs are too large to gain from it
    assert len(sizes) == 6
    batched = json.loads((tmp_path / "batched" / "results.json").read_text())
    alone = json.loads((tmp_path / "alone" / "results.json").read_text())
    assert [r["run_id"] for r in batched] == [r["run_id"] for r in alone] and len(batched) == 8
    for b, a in zip(batched, alone, strict=True):
        assert set(b) == set(a)
        for key in ("gt_recovery", "max_inner_product", "max_inner_product_decoder", "mse", "fvu", "l0"):
            assert b[key] == pytest.approx(a[key], rel=1e-4, abs=1e-6), (b["run_id"], key)
        assert b["anchor_indices"] == a["anchor_indices"] and b["config"] == a["config"]
        assert (b["sweep"] is None) == (a["method"] == "topk")
        if b["sweep"]:
            assert b["sweep"]["chosen"] == a["sweep"]["chosen"]
            for tb, ta in zip(b["sweep"]["trials"], a["sweep"]["trials"], strict=True):
                assert tb["l0"] == pytest.approx(ta["l0"], rel=1e-4)
    seed1 = sdlkit.load(tmp_path / "batched" / "relu-fa__seed1")
    assert torch.allclose(seed1.W_D, sdlkit.load(tmp_path / "alone" / "relu-fa__seed1").W_D, rtol=1e-4, atol=1e-6)
