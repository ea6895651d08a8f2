"""`sdlkit bench`: records with the promised fields, recomputable from the saved files; resume; refusals."""

import json

import pytest
import torch

import sdlkit
from sdlkit.cli.main import main
from sdlkit.io import load_tensors
from sdlkit.paper.bench import ALL_ROWS, BenchSpec, plan_runs, recipe
from sdlkit.paper.bench import run as bench_module
from sdlkit.paper.bench.presets import SCALES

FIELDS = {
    "row",
    "method",
    "frame",
    "frame_geometry",
    "max_inner_product_dual",
    "never_fired_fraction",
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
    """The full quick bench (7 rows × ± FA × 2 frames), trained for 3 steps a run (the numbers are not the
    point here), with its reference rows."""
    out = tmp_path_factory.mktemp("bench") / "out"
    assert bench(out, "--steps", "3") == 0
    return out


def test_both_frames_with_the_promised_fields(quick_bench):
    records = json.loads((quick_bench / "results.json").read_text())
    assert len(records) == 28
    assert [(r["frame"], r["row"], r["anchored"]) for r in records[:3]] == [
        ("gaussian", "relu", False),
        ("gaussian", "relu", True),
        ("gaussian", "jumprelu", False),
    ]
    assert {r["frame"] for r in records[14:]} == {"tight"}
    for r in records:
        assert set(r) >= FIELDS, FIELDS - set(r)
        assert r["samples_seen"] == 3 * 1024
        assert (r["n_anchors"] == 26) == r["anchored"] and len(r["anchor_indices"]) == r["n_anchors"]
        assert r["config"]["data"]["n_features"] == 260  # the full config, LRB parameters included
        assert r["config"]["data"]["frame"] == r["frame"] == r["frame_geometry"]["frame"]
    rows = {r["row"]: r["method"] for r in records}
    assert rows["transcoder"] == rows["crosscoder"] == rows["topk"] == "topk"  # `method` is always the σ
    geometry = {r["frame"]: r["frame_geometry"] for r in records if r["row"] == "topk"}
    assert geometry["gaussian"]["condition_number"] > 50 > 2 > geometry["tight"]["condition_number"]
    assert max(g["max_interference"] for g in geometry.values()) <= 0.1
    report = (quick_bench / "report.md").read_text()
    assert report.count("|   + FA") == 14 and "| TopK SAE" in report and "84.9%" in report
    assert "## gaussian frame" in report and "## tight frame" in report and "frame comes closest" in report
    for frame in ("gaussian", "tight"):
        for plot in ("recovery_curves", "bars_gt_recovery", "bars_max_inner_product"):
            assert (quick_bench / f"{plot}_{frame}.png").stat().st_size > 10_000


def test_reference_rows_are_scored_and_recomputable(quick_bench):
    references = json.loads((quick_bench / "references.json").read_text())
    assert [(r["frame"], r["reference"]) for r in references] == [
        (frame, name) for frame in ("gaussian", "tight") for name in ("chance", "oracle", "dictionary-learning")
    ]
    by = {(r["frame"], r["reference"]): r for r in references}
    for frame in ("gaussian", "tight"):
        oracle = by[(frame, "oracle")]
        assert oracle["gt_recovery_decoder"] == 1.0  # its decoder is the ground truth
        assert oracle["max_inner_product_dual"] > 0.99  # least squares finds the dual frame
        assert oracle["max_inner_product"] == pytest.approx(oracle["frame_geometry"]["dual_cosine"], abs=0.02)
        assert by[(frame, "chance")]["gt_recovery"] == 0.0
        assert by[(frame, "dictionary-learning")]["gt_recovery"] is None  # no encoder rows to score
        assert by[(frame, "dictionary-learning")]["gt_recovery_decoder"] > 0.5
    assert by[("tight", "oracle")]["gt_recovery"] == 1.0 > 0.6 > by[("gaussian", "oracle")]["max_inner_product"]
    oracle = by[("gaussian", "oracle")]
    model = sdlkit.load(quick_bench / oracle["run_dir"])
    truth = load_tensors(quick_bench / oracle["run_dir"] / ".." / "ground_truth.safetensors")
    assert torch.equal(model.W_D, truth["W_r"])
    keep = [i for i in range(truth["W_p"].shape[1]) if i not in set(oracle["excluded_features"])]
    enc = model.W_E.double() / model.W_E.double().norm(dim=1, keepdim=True)
    best = (enc @ truth["W_p"].double()).abs().max(dim=0).values[keep]
    assert oracle["max_inner_product"] == pytest.approx(best.mean().item(), abs=1e-5)
    assert "*oracle (W_r + least-squares encoder)*" in (quick_bench / "report.md").read_text()


def test_a_record_can_be_recomputed_from_the_run_folder(quick_bench):
    record = next(
        r for r in json.loads((quick_bench / "results.json").read_text()) if r["run_id"] == "tight__topk-fa__seed0"
    )
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
    # the dual frame as least squares: D minimises ||W_pᵀ D − I||, i.e. W_pᵀ D = I on the features' span
    W = truth["W_p"].double()
    dual = torch.linalg.lstsq(W.T, torch.eye(W.shape[1], dtype=torch.float64)).solution  # [n_in, n]
    dual = dual / dual.norm(dim=0, keepdim=True)
    best_dual = (enc @ dual).abs().max(dim=0).values[keep]
    assert record["max_inner_product_dual"] == pytest.approx(best_dual.mean().item(), abs=1e-5)
    geometry = record["frame_geometry"]
    eig = torch.linalg.eigvalsh(W @ W.T)
    assert geometry["condition_number"] == pytest.approx((eig.max() / eig.min()).item(), rel=1e-6)
    G = W.T @ W - torch.eye(W.shape[1], dtype=torch.float64)
    assert geometry["max_interference"] == pytest.approx(G.max().item(), abs=1e-6)


def test_twins_are_scored_on_the_same_features(quick_bench):
    records = {r["run_id"]: r for r in json.loads((quick_bench / "results.json").read_text())}
    base, fa = records["gaussian__batchtopk__seed0"], records["gaussian__batchtopk-fa__seed0"]
    assert base["anchor_indices"] == [] and base["excluded_features"] == fa["anchor_indices"]


def test_same_folder_needs_resume_and_resume_skips_finished_runs(tmp_path, capsys):
    out = tmp_path / "b"
    args = ("--methods", "topk", "--frames", "tight", "--steps", "2", "--no-references")
    assert bench(out, *args) == 0
    assert bench(out, *args) == 2
    assert "pass --resume" in capsys.readouterr().err
    records = json.loads((out / "results.json").read_text())
    (out / "results.json").write_text(json.dumps(records[:1]))  # as if the bench died after its first run
    assert bench(out, *args, "--resume") == 0
    printed = capsys.readouterr().out
    assert "[1/2]" not in printed and "[2/2] tight__topk-fa__seed0" in printed
    ids = [r["run_id"] for r in json.loads((out / "results.json").read_text())]
    assert ids == ["tight__topk__seed0", "tight__topk-fa__seed0"]


def test_a_folder_with_another_bench_is_refused(tmp_path, capsys):
    out = tmp_path / "b"
    fast = ("--steps", "2", "--frames", "tight", "--no-references")
    assert bench(out, "--methods", "topk", *fast) == 0
    assert bench(out, "--methods", "relu", *fast, "--resume") == 2
    assert "holds results of a different bench (rows differ)" in capsys.readouterr().err
    assert bench(out, "--methods", "relu", *fast, "--overwrite") == 0


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--preset", "nope"], "invalid choice: 'nope' (choose from 'quick'"),
        (["--rows", "topk,nope"], "unknown bench row 'nope'"),
        (["--frames", "gaussian,round"], "--frames 'gaussian,round' is not allowed"),
        (["--steps", "0"], "--steps 0 is not allowed: give at least 1"),
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
        return plan_runs(BenchSpec(preset, quick=True, frames=["gaussian"]))

    superposition = plans("superposition")
    assert [p.setting for p in superposition[::2]] == [f"n={n}" for n in range(800, 1401, 100)]
    assert [p.values["data"]["n_features"] for p in superposition[::2]] == [208, 234, 260, 286, 312, 339, 365]
    assert {p.values["model"]["method"]["k"] for p in plans("topk-k")} == {8, 16, 32}
    sparsity = plans("sparsity")
    assert sorted({p.values["data"]["S"] for p in sparsity}) == [0.9, 0.99, 0.995]
    assert len(plans("interference")) == 4 * 5 * 2
    assert len(plan_runs(BenchSpec("interference", quick=True))) == 2 * 4 * 5 * 2  # both frames by default
    paper = BenchSpec("topk-k")
    assert {p.values["model"]["method"]["k"] for p in plan_runs(paper)} == {32, 64, 128}
    assert {p.values["model"]["n_latents"] for p in plan_runs(paper)} == {16000}
    assert {p.values["data"]["frame"] for p in plan_runs(paper)} == {"gaussian", "tight"}


def test_an_ablation_runs_and_plots(tmp_path):
    out = tmp_path / "b"
    assert bench(out, "--preset", "topk-k", "--quick", "--steps", "2", "--frames", "tight", "--no-references") == 0
    records = json.loads((out / "results.json").read_text())
    assert [r["setting"] for r in records] == ["k=32", "k=32", "k=64", "k=64", "k=128", "k=128"]
    assert (out / "ablation_gt_recovery_tight.png").is_file() and "## tight frame, k=64" in (
        out / "report.md"
    ).read_text()


def test_the_conditioning_preset_spans_the_condition_number_and_plots_against_it(tmp_path):
    out = tmp_path / "b"
    assert bench(out, "--preset", "conditioning", "--methods", "topk", "--steps", "2", "--no-references") == 0
    records = json.loads((out / "results.json").read_text())
    assert not any(r["anchored"] for r in records)  # this ablation has no anchored twins
    conds = [r["frame_geometry"]["condition_number"] for r in records]
    assert len(conds) == 6 and conds == sorted(conds, reverse=True) and conds[0] > 100 and conds[-1] < 2
    assert [r["frame_geometry"]["tightness"] for r in records] == [0.0, 0.25, 0.5, 0.75, 0.9, 1.0]
    assert (out / "ablation_gt_recovery_tight.png").stat().st_size > 10_000


def test_sweep_picks_the_coefficient_nearest_the_true_l0(tmp_path):
    out = tmp_path / "b"
    assert bench(out, "--methods", "relu", "--steps", "6", "--sweep", "--frames", "tight", "--no-references") == 0
    record = json.loads((out / "results.json").read_text())[0]
    trials = record["sweep"]["trials"]
    assert [t["coefficient"] for t in trials] == pytest.approx([0.05, 0.1, 0.2, 0.4, 0.8])
    nearest = min(trials, key=lambda t: abs(torch.tensor(max(t["l0"], 1e-3) / record["true_l0"]).log()))
    assert record["sweep"]["chosen"] == nearest["coefficient"]
    assert record["config"]["model"]["method"]["l1_coefficient"] == nearest["coefficient"]


@pytest.mark.parametrize("name", ALL_ROWS)
def test_every_recipe_is_a_valid_method(name):
    plan = recipe(name, true_l0=2.6, steps=1000)
    sdlkit.method_config(plan.method).build_activation(512)
    assert plan.note and set(plan.data) <= {"mode", "n_sources"}


def test_relu_and_jumprelu_train_at_4x_the_lr_at_the_quick_scale_only():
    """The quick scale's ReLU and JumpReLU rows train at 4 × its lr, the other rows and every row at the paper
    scale at the scale's lr; --set wins."""
    rows = ["relu", "jumprelu", "topk"]
    spec = BenchSpec(preset="quick", rows=rows, frames=["tight"], references=False)
    lrs = {(p.row, p.anchored): p.values["train"]["lr"] for p in plan_runs(spec)}
    assert lrs[("relu", False)] == lrs[("jumprelu", True)] == pytest.approx(4 * SCALES["quick"].lr)
    assert lrs[("topk", False)] == lrs[("topk", True)] == SCALES["quick"].lr
    paper = BenchSpec(preset="paper", rows=rows, frames=["tight"], references=False)
    assert {p.values["train"]["lr"] for p in plan_runs(paper)} == {SCALES["paper"].lr}
    spec.overrides = ["train.lr=0.002"]
    assert {p.values["train"]["lr"] for p in plan_runs(spec)} == {0.002}


def test_set_overrides_every_run_and_is_part_of_the_bench_identity(tmp_path, capsys):
    out = tmp_path / "b"
    fast = ("--steps", "2", "--frames", "tight", "--no-references")
    assert bench(out, "--methods", "topk", *fast, "--set", "model.n_latents=300") == 0
    records = json.loads((out / "results.json").read_text())
    assert {r["config"]["model"]["n_latents"] for r in records} == {300}
    assert "--set model.n_latents=300" in (out / "report.md").read_text()
    assert bench(out, "--methods", "topk", *fast, "--resume") == 2
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
    args += ("--frames", "tight", "--no-references")
    assert bench(tmp_path / "batched", *args, "--stack", "always") == 0
    assert sorted(sizes) == [2, 2, 2, 2, 5, 5]  # 4 rows × 2 seeds; relu's sweep for seeds 0 and 1
    assert bench(tmp_path / "alone", *args, "--stack", "never") == 0
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
        assert (b["sweep"] is None) == (a["row"] == "topk")
        if b["sweep"]:
            assert b["sweep"]["chosen"] == a["sweep"]["chosen"]
            for tb, ta in zip(b["sweep"]["trials"], a["sweep"]["trials"], strict=True):
                assert tb["l0"] == pytest.approx(ta["l0"], rel=1e-4)
    seed1 = sdlkit.load(tmp_path / "batched" / "tight__relu-fa__seed1")
    alone = sdlkit.load(tmp_path / "alone" / "tight__relu-fa__seed1")
    assert torch.allclose(seed1.W_D, alone.W_D, rtol=1e-4, atol=1e-6)
