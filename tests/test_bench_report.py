"""The bench report's sentences, table-driven: what each comparison says for given numbers."""

from __future__ import annotations

import pytest

from sdlkit.paper.bench.report_tables import method_yaml
from sdlkit.paper.bench.report_text import TOPK_FAMILY, compare, headline, verdict
from sdlkit.paper.published.paper import TABLE1


@pytest.mark.parametrize(
    ("name", "ours", "paper", "percent", "expected"),
    [
        ("M_GT", 0.912, 0.849, True, "M_GT 91.2% vs the paper's 84.9% (+6.3 pp, higher)"),
        ("M_GT", 0.0, 0.849, True, "M_GT 0.0% vs the paper's 84.9% (-84.9 pp, lower)"),
        ("M_GT", 0.0, 0.0, True, "M_GT 0.0% vs the paper's 0.0% (equal)"),  # never "more than reported"
        ("M_GT", 0.84904, 0.849, True, "M_GT 84.9% vs the paper's 84.9% (equal)"),  # rounds to zero: no direction
        ("M_IP", 0.962, 0.983, False, "M_IP 0.962 vs the paper's 0.983 (-0.021, lower)"),
        ("M_IP", 0.9834, 0.983, False, "M_IP 0.983 vs the paper's 0.983 (equal)"),
    ],
)
def test_compare(name, ours, paper, percent, expected):
    assert compare(name, ours, paper, percent) == expected


def _run(gt, ip, gt_dec=0.98, ip_dec=0.99, frame="tight", row="topk", anchored=False):
    return {
        "frame": frame,
        "setting": "",
        "row": row,
        "anchored": anchored,
        "gt_recovery": gt,
        "max_inner_product": ip,
        "gt_recovery_decoder": gt_dec,
        "max_inner_product_decoder": ip_dec,
    }


@pytest.mark.parametrize(
    ("fa", "expected_tail"),
    [
        ([], "Decoder columns: M_GT 98.0%, M_IP 0.990."),
        ([_run(0.95, 0.97)], "Anchoring: +4.0 pp on encoder M_GT (paper: +2.7 pp on encoder M_GT)."),
        ([_run(0.91, 0.97, gt_dec=0.98)], "Anchoring changed neither M_GT."),  # no ±0.0 clause
        ([_run(0.91, 0.97, gt_dec=0.99)], "Anchoring: +1.0 pp on decoder M_GT (paper: +2.7 pp on encoder M_GT)."),
    ],
)
def test_verdict_sentences(fa, expected_tail):
    sentence = verdict("topk", [_run(0.91, 0.962)], fa, TABLE1)
    assert sentence.startswith(
        "**TopK SAE**: encoder rows M_GT 91.0% vs the paper's 84.9% (+6.1 pp, higher); "
        "M_IP 0.962 vs the paper's 0.983 (-0.021, lower)."
    )
    assert sentence.endswith(expected_tail), sentence


def test_verdict_for_a_row_the_paper_lacks():
    assert verdict("gated", [_run(0.5, 0.9, row="gated")], [], TABLE1).startswith(
        "**Gated SAE**: not in the paper's table; encoder rows M_GT 50.0%, M_IP 0.900."
    )


@pytest.mark.parametrize(
    ("gaussian_ip", "tight_ip", "expected"),
    [
        (0.80, 0.975, "**The tight frame reproduces the paper's encoder-row recovery; the gaussian frame does not**"),
        (0.975, 0.80, "**The gaussian frame reproduces the paper's encoder-row recovery; the tight frame does not**"),
        (0.80, 0.90, "**Neither frame reproduces the paper's encoder-row recovery; the tight frame comes closest**"),
    ],
)
def test_headline_names_the_frame_that_reproduces_the_paper(gaussian_ip, tight_ip, expected):
    records = [
        _run(0.0 if frame == "gaussian" else 0.9, ip, frame=frame, row=row)
        for frame, ip in (("gaussian", gaussian_ip), ("tight", tight_ip))
        for row in ("topk", "batchtopk", "matryoshka")
    ]
    sentence = headline(records, {"": TABLE1})
    assert sentence.startswith(expected), sentence
    assert f"the gaussian frame 0.0% / {gaussian_ip:.3f}" in sentence and "paper 84.5% / 0.982" in sentence


def test_the_headline_rows_come_from_the_method_registry():
    """Table 1's SAE rows whose method says topk_family (the transcoder and crosscoder rows train TopK, but
    are not SAE rows)."""
    assert TOPK_FAMILY == ("topk", "batchtopk", "matryoshka")


def test_no_headline_with_one_frame():
    assert headline([_run(0.9, 0.97)], {"": TABLE1}) is None


def test_method_config_prints_as_a_set_argument_that_round_trips():
    from sdlkit.config import apply_override

    method = {"name": "matryoshka", "k": 3, "prefixes": [16, 512], "auxk": None}
    text = method_yaml(method)
    assert text == "--set 'model.method={name: matryoshka, k: 3, prefixes: [16, 512], auxk: null}'"
    values: dict = {}
    apply_override(values, text.removeprefix("--set '").removesuffix("'"))
    assert values == {"model": {"method": method}}


def test_a_registered_metric_reaches_the_record_and_the_table(monkeypatch):
    """Adding a metric is one registration: score() carries its fields and the report table its column."""
    import torch

    from sdlkit import ModelConfig, SparseDictionary
    from sdlkit.data.lrb import LRBSource, lrb_preset
    from sdlkit.paper.bench import scoring
    from sdlkit.paper.bench.report_tables import results_table

    monkeypatch.setattr(scoring, "BENCH_METRICS", dict(scoring.BENCH_METRICS))
    monkeypatch.setattr("sdlkit.paper.bench.report_tables.BENCH_METRICS", scoring.BENCH_METRICS)

    def decoder_norm(model, source, exclude):
        return {"mean_decoder_norm": float(model.W_D.detach().norm(dim=0).mean())}

    scoring.register_metric(scoring.BenchMetric("decoder_norm", decoder_norm, {"mean_decoder_norm": "‖W_D‖"}))
    with pytest.raises(ValueError, match="already registered"):
        scoring.register_metric(scoring.BenchMetric("decoder_norm", decoder_norm))
    source = LRBSource(lrb_preset("tiny"))
    torch.manual_seed(0)
    model = SparseDictionary(ModelConfig(n_in=20, n_latents=32, method={"name": "topk", "k": 3}))
    record = scoring.score(model, source, exclude=[], tau=0.95, curves=False)
    assert record["mean_decoder_norm"] == pytest.approx(float(model.W_D.detach().norm(dim=0).mean()))
    assert 0 < record["max_inner_product_dual"] <= 1  # the built-in metric is still there
    record |= {"row": "topk", "frame": "gaussian", "setting": "", "anchored": False, "fvu": 0.1, "l0": 3.0}
    table = results_table({("gaussian", "", "topk", False): [record]}, [], "gaussian", "", ["topk"], {})
    header = table.splitlines()[0]
    assert "‖W_D‖" in header and header.index("M_IP dual") < header.index("‖W_D‖") < header.index("M_GT dec")
    assert f"{record['mean_decoder_norm']:.3f}" in table.splitlines()[2]
