"""`sdlkit theory` and `sdlkit diagnose`: the schema, verdicts computed from figures, clear refusals."""

import json

import pytest
import torch
import yaml

import sdlkit
from sdlkit.cli.main import main
from sdlkit.core.model import ModelConfig, SparseDictionary
from sdlkit.data.lrb import LRBSource, lrb_preset
from sdlkit.paper.theory.training_checks import absorption_check, resampling_check


@pytest.fixture(scope="module")
def theory_out(tmp_path_factory):
    out = tmp_path_factory.mktemp("theory") / "out"
    argv = ["theory", "--quick", "--only", "example-3.5,thm-3.6,thm-3.4,thm-3.1,thm-3.3,thm-3.8", "--out", str(out)]
    assert main(argv) == 0
    return out


def test_math_checks_write_the_promised_schema_and_verdicts(theory_out):
    results = json.loads((theory_out / "results.json").read_text())
    assert [r["check"] for r in results] == ["example-3.5", "thm-3.6", "thm-3.4", "thm-3.1", "thm-3.3", "thm-3.8"]
    for r in results:
        assert {"check", "claim", "holds", "figures"} <= set(r) and isinstance(r["holds"], bool)
    verdicts = {r["check"]: r["holds"] for r in results}
    # Example 3.5, Thm 3.4, 3.1 and 3.3 hold; Thm 3.6's literal recipe is not stationary
    assert verdicts == {
        "example-3.5": True,
        "thm-3.6": False,
        "thm-3.4": True,
        "thm-3.1": True,
        "thm-3.3": True,
        "thm-3.8": True,
    }
    figures = {r["check"]: r["figures"] for r in results}
    assert figures["example-3.5"]["grad_norm"] < 1e-6 and figures["example-3.5"]["gd_min_final_loss"] >= 0.99
    assert figures["thm-3.6"]["partitions_checked"] == 60
    assert (
        figures["thm-3.6"]["corrected_construction_ok"] > 0 and figures["thm-3.6"]["corrected_worst_grad_norm"] < 1e-5
    )
    assert figures["thm-3.4"]["approx_loss"] < 1e-8 and figures["thm-3.4"]["gt_recovery_encoder"] == 0
    assert figures["thm-3.8"]["realised_with_one_shared_threshold"] < figures["thm-3.8"]["cases"]
    report = (theory_out / "report.md").read_text()
    assert "| `thm-3.6` | **does not hold** |" in report and "| `thm-3.3` | holds |" in report
    assert (theory_out / "thm31_loss_gap.png").is_file() and (theory_out / "thm33_bounds.png").is_file()


def test_unknown_check_and_non_empty_folder_are_refused(tmp_path, capsys, theory_out):
    assert main(["theory", "--only", "thm-9", "--out", str(tmp_path / "t")]) == 2
    assert "unknown check 'thm-9'" in capsys.readouterr().err
    assert main(["theory", "--only", "thm-3.4", "--out", str(theory_out)]) == 2
    assert "pass --overwrite" in capsys.readouterr().err


def test_training_checks_produce_records(tmp_path):
    record = resampling_check(True, "cpu", [0], tmp_path / "r.png", steps=20)
    assert record["check"] == "resampling" and set(record["figures"]["final_mse"]) == {"none", "resample", "auxk"}
    assert record["holds"] == (
        record["figures"]["dead_latents_persist"] and record["figures"]["resampling_lowers_final_loss"]
    )
    assert (tmp_path / "r.png").is_file() and "| resample" in record["table"]
    record = absorption_check(True, "cpu", [0], tmp_path / "a.png", steps=20)
    assert set(record["figures"]["mean_rate"]) == {"topk", "batchtopk", "matryoshka"}
    assert all(0 <= v <= 1 for v in record["figures"]["mean_rate"].values())


def perfect_dictionary(source: LRBSource, threshold: float) -> SparseDictionary:
    """Encoder rows = decoder columns = the features; a JumpReLU threshold above the interference M."""
    n = source.W_p.shape[1]
    model = SparseDictionary(
        ModelConfig(
            n_in=source.n_in, n_latents=n + 3, bias=False, method={"name": "jumprelu", "init_threshold": threshold}
        )
    )
    with torch.no_grad():
        model.W_E.zero_()
        model.W_D.zero_()
        model.W_E[:n] = source.W_p.T
        model.W_D[:, :n] = source.W_p
    return model


def test_diagnose_perfect_and_polysemantic_dictionaries(tmp_path, capsys):
    data = lrb_preset("tiny")
    source = LRBSource(data)
    (tmp_path / "bench.yaml").write_text(yaml.safe_dump({"data": data.model_dump(mode="json")}))
    sdlkit.save(perfect_dictionary(source, threshold=0.5), tmp_path / "perfect")
    argv = [
        "diagnose",
        str(tmp_path / "perfect"),
        "--bench-config",
        str(tmp_path / "bench.yaml"),
        "--json",
    ]
    capsys.readouterr()
    assert main(argv) == 0
    census = json.loads(capsys.readouterr().out)
    assert (census["n_monosemantic"], census["n_polysemantic"], census["n_dead"]) == (26, 0, 3)
    assert (census["n_recovered"], census["n_absorbed"], census["n_lost"]) == (26, 0, 0)
    # a threshold below the interference (M = 0.3 here) lets neighbours fire: latents turn polysemantic
    sdlkit.save(perfect_dictionary(source, threshold=0.01), tmp_path / "leaky")
    assert (
        main(
            [
                "diagnose",
                str(tmp_path / "leaky"),
                "--bench-config",
                str(tmp_path / "bench.yaml"),
                "--json",
            ]
        )
        == 0
    )
    assert json.loads(capsys.readouterr().out)["n_polysemantic"] > 0


def test_diagnose_needs_the_bench_data(tmp_path, capsys):
    sdlkit.save(SparseDictionary(ModelConfig(n_in=20, n_latents=8, method="relu")), tmp_path / "ckpt")
    assert main(["diagnose", str(tmp_path / "ckpt")]) == 2
    assert "pass --bench-config" in capsys.readouterr().err
    (tmp_path / "bench.yaml").write_text(yaml.safe_dump({"data": {"preset": "quick"}}))
    assert main(["diagnose", str(tmp_path / "ckpt"), "--bench-config", str(tmp_path / "bench.yaml")]) == 2
    assert "maps 20 → 20 dims but the bench data has 200 → 200" in capsys.readouterr().err
