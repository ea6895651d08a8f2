"""`sdlkit eval --data FILE --directions DIRS`: a dictionary scored against known directions, on rows of an array
file, checked against an independent computation (a plain cosine matrix, a max over latents, the share above tau,
scipy's Hungarian matching on the full matrix) on a checkpoint built to hold known subsets of the directions."""

import json

import numpy as np
import pytest
import torch
from safetensors.torch import save_file
from scipy.optimize import linear_sum_assignment

import sdlkit
from sdlkit.cli.main import main
from sdlkit.eval.evaluate import evaluate_checkpoint
from sdlkit.io import save
from sdlkit.store import ActivationStore
from test_store_training import DIM, class_store

N_IN, N_OUT, N_LATENTS, N_DIRS, ROWS = 32, 24, 2048, 40, 500
ENCODER_HOLDS = range(5, 25)  # directions copied into encoder rows 100.. (half of them: encoder M_GT 0.5)
DECODER_HOLDS = range(0, 10)  # directions copied into decoder columns 0.. (a quarter: decoder M_GT 0.25)
BASE = ["--batch-size", "128"]  # 500 rows: four batches and a partial one


def unit_rows(x: torch.Tensor) -> torch.Tensor:
    return x / x.norm(dim=1, keepdim=True)


def build(tmp_path, n_out: int = N_IN, n_dirs: int = N_DIRS):
    """A TopK checkpoint whose encoder rows 100.. are directions 5..24 and whose decoder columns 0.. are
    directions 0..9 (of W_r when n_out differs), scaled, so only the cosine can find them; plus its data."""
    g = torch.Generator().manual_seed(0)
    W_p = unit_rows(torch.randn(n_dirs, N_IN, generator=g, dtype=torch.float64)).float()  # a direction per row
    W_r = W_p if n_out == N_IN else unit_rows(torch.randn(n_dirs, n_out, generator=g, dtype=torch.float64)).float()
    config = sdlkit.ModelConfig(n_in=N_IN, n_out=n_out, n_latents=N_LATENTS, method={"name": "topk", "k": 8})
    model = sdlkit.SparseDictionary(config, generator=g)
    with torch.no_grad():
        rows = list(ENCODER_HOLDS)
        model.W_E[100 : 100 + len(rows)] = 3.0 * W_p[rows]
        model.W_D[:, : len(DECODER_HOLDS)] = W_r[list(DECODER_HOLDS)].T
    save(model, tmp_path / "ck")
    x = torch.randn(ROWS, N_IN, generator=g)
    np.save(tmp_path / "x.npy", x.numpy())
    np.save(tmp_path / "dirs.npy", W_p.numpy())
    return tmp_path / "ck", model, x, W_p, W_r


def independent(learned: torch.Tensor, directions: torch.Tensor, tau: float) -> dict[str, float]:
    """Best-match and one-to-one M_GT, M_IP of `learned` rows against `directions` rows, from scratch."""
    cos = (unit_rows(learned.double()) @ unit_rows(directions.double()).T).abs()  # [n_latents, n]
    best = cos.max(dim=0).values
    rows, cols = linear_sum_assignment(cos.numpy(), maximize=True)
    matched = torch.zeros(directions.shape[0], dtype=torch.float64)
    matched[torch.as_tensor(cols)] = cos[torch.as_tensor(rows), torch.as_tensor(cols)]
    return {
        "gt_recovery": (best > tau).double().mean().item(),
        "max_inner_product": best.mean().item(),
        "matched_gt_recovery": (matched > tau).double().mean().item(),
        "matched_max_inner_product": matched.mean().item(),
    }


def reconstruction(model, x: torch.Tensor, x_r: torch.Tensor) -> dict[str, float]:
    with torch.no_grad():
        out = model(x)
    fired = out.x_q != 0
    return {
        "fvu": ((x_r - out.x_hat).pow(2).sum() / (x_r - x_r.mean(0)).pow(2).sum()).item(),
        "l0": fired.sum(1).double().mean().item(),
        "never_fired_fraction": (~fired.any(0)).double().mean().item(),
    }


def run_json(capsys, *args: str) -> dict:
    capsys.readouterr()
    assert main(["eval", *args, "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def assert_scores(report: dict, model, W_p: torch.Tensor, W_r: torch.Tensor, tau: float = 0.95) -> None:
    for suffix, learned, truth in (("", model.W_E.detach(), W_p), ("_decoder", model.W_D.detach().T, W_r)):
        for name, value in independent(learned, truth, tau).items():
            assert report[f"{name}{suffix}"] == pytest.approx(value, abs=1e-6), f"{name}{suffix}"


def test_json_scores_and_metrics_match_an_independent_computation(tmp_path, capsys):
    ck, model, x, W_p, W_r = build(tmp_path)
    report = run_json(
        capsys, str(ck), "--data", str(tmp_path / "x.npy"), "--directions", str(tmp_path / "dirs.npy"), *BASE
    )
    assert_scores(report, model, W_p, W_r)
    assert report["gt_recovery"] == 0.5 and report["gt_recovery_decoder"] == 0.25  # the subsets built in
    for name, value in reconstruction(model, x, x).items():
        assert report[name] == pytest.approx(value, rel=1e-5, abs=1e-9), name
    assert report["dead_fraction"] is None  # a hand-built checkpoint records no training window
    assert report["n_samples"] == ROWS and report["rows"] == f"all rows [0, {ROWS})"
    assert (report["n_directions"], report["tau"], report["directions_layout"]) == (N_DIRS, 0.95, "rows")
    # tau moves M_GT; the Python API gives the same record
    loose = run_json(
        capsys, str(ck), "--data", str(tmp_path / "x.npy"), "--directions", str(tmp_path / "dirs.npy"), "--tau", "0.5"
    )
    assert_scores(loose, model, W_p, W_r, tau=0.5)
    api = evaluate_checkpoint(ck, data=tmp_path / "x.npy", directions=tmp_path / "dirs.npy", batch_size=128)
    assert {k: api[k] for k in report if k != "checkpoint"} == {k: report[k] for k in report if k != "checkpoint"}


def test_the_table_names_the_scores(tmp_path, capsys):
    ck, *_ = build(tmp_path)
    assert main(["eval", str(ck), "--data", str(tmp_path / "x.npy"), "--directions", str(tmp_path / "dirs.npy")]) == 0
    out = capsys.readouterr().out
    assert f"{N_DIRS} known directions" in out and "tau = 0.95" in out
    assert "| encoder rows    | 0.5 " in out and "| decoder columns | 0.25 " in out
    assert "matched_gt_recovery" in out


def test_column_layout_and_every_file_format_give_the_same_scores(tmp_path, capsys):
    ck, _, _, W_p, _ = build(tmp_path)
    data = ["--data", str(tmp_path / "x.npy"), "--no-matched"]
    by_rows = run_json(capsys, str(ck), *data, "--directions", str(tmp_path / "dirs.npy"))
    save_file({"probes": W_p.T.contiguous(), "other": torch.zeros(3)}, tmp_path / "dirs.safetensors")
    torch.save(W_p.T.contiguous(), tmp_path / "dirs.pt")
    for args in (["dirs.safetensors", "--directions-key", "probes"], ["dirs.pt"]):
        report = run_json(capsys, str(ck), *data, "--directions", str(tmp_path / args[0]), *args[1:])
        assert report["directions_layout"] == "columns"
        for key in ("gt_recovery", "max_inner_product", "gt_recovery_decoder", "max_inner_product_decoder"):
            assert report[key] == pytest.approx(by_rows[key], abs=1e-7)
        assert "matched_gt_recovery" not in report


def test_a_square_matrix_is_read_as_rows_unless_told(tmp_path, capsys):
    ck, model, _, _, _ = build(tmp_path, n_dirs=N_IN)
    W = torch.from_numpy(np.load(tmp_path / "dirs.npy"))  # [32, 32]: a direction per row
    args = [str(ck), "--data", str(tmp_path / "x.npy"), "--directions", str(tmp_path / "dirs.npy")]
    rows = run_json(capsys, *args)
    assert rows["directions_layout"].startswith("rows (square: assumed")
    assert_scores(rows, model, W, W)
    columns = run_json(capsys, *args, "--directions-layout", "columns")
    assert columns["directions_layout"] == "columns"
    assert_scores(columns, model, W.T, W.T)
    assert columns["gt_recovery"] < rows["gt_recovery"]


def test_a_transcoder_scores_its_decoder_against_decoder_directions(tmp_path, capsys):
    ck, model, x, W_p, W_r = build(tmp_path, n_out=N_OUT)
    x_r = torch.randn(ROWS, N_OUT, generator=torch.Generator().manual_seed(1))
    np.save(tmp_path / "y.npy", x_r.numpy())
    np.save(tmp_path / "dec.npy", W_r.T.numpy())  # columns
    data = [str(ck), "--data", str(tmp_path / "x.npy"), "--targets-data", str(tmp_path / "y.npy")]
    report = run_json(
        capsys, *data, "--directions", str(tmp_path / "dirs.npy"), "--decoder-directions", str(tmp_path / "dec.npy")
    )
    assert_scores(report, model, W_p, W_r)
    assert report["gt_recovery_decoder"] == 0.25 and report["directions_layout"] == "rows, columns"
    assert report["fvu"] == pytest.approx(reconstruction(model, x, x_r)["fvu"], rel=1e-5)
    assert main(["eval", *data, "--directions", str(tmp_path / "dirs.npy")]) == 2
    assert "give the decoder's directions (width n_out) with --decoder-directions" in capsys.readouterr().err
    assert main(["eval", str(ck), "--data", str(tmp_path / "x.npy")]) == 2
    assert "give its targets with --targets-data" in capsys.readouterr().err


def test_the_training_files_held_out_rows_are_the_ones_scored(tmp_path, capsys):
    _, model, x, _, _ = build(tmp_path)
    run = {"data": {"kind": "array", "path": str((tmp_path / "x.npy").resolve()), "eval_rows": 100}}
    save(model, tmp_path / "trained", extra={"run": run})
    report = run_json(capsys, str(tmp_path / "trained"), "--data", str(tmp_path / "x.npy"), *BASE)
    assert report["n_samples"] == 100 and report["rows"].startswith("held-out rows") and "[400, 500)" in report["rows"]
    assert report["fvu"] == pytest.approx(reconstruction(model, x[400:], x[400:])["fvu"], rel=1e-5)
    every = run_json(capsys, str(tmp_path / "trained"), "--data", str(tmp_path / "x.npy"), "--all-rows")
    assert every["n_samples"] == ROWS
    np.save(tmp_path / "other.npy", x.numpy())  # the same rows in another file: not the run's, so all of them
    assert run_json(capsys, str(tmp_path / "trained"), "--data", str(tmp_path / "other.npy"))["n_samples"] == ROWS
    first = run_json(capsys, str(tmp_path / "trained"), "--data", str(tmp_path / "x.npy"), "--max-rows", "30")
    assert first["rows"].endswith("[400, 430)")


@pytest.mark.parametrize(
    ("make", "args", "message"),
    [
        (
            lambda p: np.save(p / "bad.npy", np.ones((5, 7), "float32")),
            ["--directions", "bad.npy"],
            "has shape [5, 7], but this dictionary's width is 32: give [n_directions, 32] (rows) or [32, n_directions]",
        ),
        (
            lambda p: np.save(p / "bad.npy", np.ones((5, 32), "float32")),
            ["--directions", "bad.npy", "--directions-layout", "columns"],
            "has shape [5, 32], which is not columns of width 32",
        ),
        (
            lambda p: np.save(p / "bad.npy", np.where(np.arange(160).reshape(5, 32) == 99, np.nan, 1.0)),
            ["--directions", "bad.npy"],
            "bad.npy: row 3 holds NaN or inf; directions must be finite",
        ),
        (lambda p: np.save(p / "bad.npy", np.zeros((32, 3))), ["--directions", "bad.npy"], "bad.npy: column 0 is zero"),
        (lambda p: None, ["--directions", "missing.npy"], "missing.npy is not a file"),
        (
            lambda p: np.save(p / "x.npy", np.ones((9, 31), "float32")),
            [],
            "x.npy has rows of width 31 but the checkpoint reads n_in=32",
        ),
        (
            lambda p: np.save(p / "x.npy", np.where(np.arange(9 * 32).reshape(9, 32) == 200, np.inf, 1.0)),
            [],
            "x.npy: row 6 holds NaN or inf",
        ),
        (lambda p: None, ["--decoder-directions", "dirs.npy"], "--decoder-directions needs --directions"),
        (
            lambda p: None,
            ["--directions", "dirs.npy", "--tau", "1.5"],
            "tau = 1.5 is not allowed: it must be in (0, 1]",
        ),
        (lambda p: None, ["--store", "."], "argument --store: not allowed with argument --data"),
        (lambda p: None, ["--batch-size", "0"], "--batch-size 0 is not allowed: it must be a positive number of rows"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(tmp_path, capsys, make, args, message):
    ck, *_ = build(tmp_path)
    make(tmp_path)
    args = [str(tmp_path / a) if a.endswith(".npy") else a for a in args]
    capsys.readouterr()
    assert main(["eval", str(ck), "--data", str(tmp_path / "x.npy"), *args]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1, err


def test_rows_come_from_a_store_or_a_file(tmp_path, capsys):
    ck, *_ = build(tmp_path)
    assert main(["eval", str(ck)]) == 2
    assert "one of the arguments --store --data is required" in capsys.readouterr().err
    with pytest.raises(sdlkit.errors.ConfigError, match="an activation store .--store. or an array file .--data."):
        evaluate_checkpoint(ck)
    assert main(["eval", str(ck), "--data", str(tmp_path / "x.npy"), "--splice"]) == 2
    assert "--splice needs --store" in capsys.readouterr().err


def test_a_store_and_an_array_of_the_same_rows_give_the_same_report(tmp_path, capsys):
    store, class_directions = class_store(tmp_path / "store")
    np.save(tmp_path / "x.npy", ActivationStore(store).read_rows(0, 600, ["pooled"])["pooled"].numpy())
    np.save(tmp_path / "dirs.npy", class_directions.numpy())
    model = sdlkit.SparseDictionary(sdlkit.ModelConfig(n_in=DIM, n_latents=64, method={"name": "topk", "k": 2}))
    save(model, tmp_path / "ck")
    known = ["--directions", str(tmp_path / "dirs.npy"), *BASE]
    on_store = run_json(capsys, str(tmp_path / "ck"), "--store", str(store), *known)
    on_file = run_json(capsys, str(tmp_path / "ck"), "--data", str(tmp_path / "x.npy"), *known)
    assert on_store["n_samples"] == on_file["n_samples"] == 600
    for key in ("fvu", "mse", "l0", "dead_fraction", "dense_fraction", "gt_recovery", "matched_max_inner_product"):
        assert on_store[key] == on_file[key], key
    assert_scores(on_store, model, class_directions, class_directions)
