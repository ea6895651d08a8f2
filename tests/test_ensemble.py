"""Batched sweeps: an ensemble of E runs ends where E separate runs end; refusals; member checkpoints."""

import pytest
import torch

from conftest import tiny_values
from sdlkit.config import run_config
from sdlkit.core.objective import Objective
from sdlkit.data import build_source
from sdlkit.errors import ConfigError
from sdlkit.io import load_tensors
from sdlkit.methods import METHODS, Activation, method_config, register_method
from sdlkit.methods.relu import ReLUConfig
from sdlkit.train import Trainer
from sdlkit.train.ensemble import EnsembleTrainer, ensemble_refusal, worth_batching

SEEDS = (0, 1, 2)


def configs(method, coefficients=None, steps=25, anchors=False, **train):
    """One tiny run per seed (data seed = seed), dense kernel; `coefficients` [{field: value}] per member."""
    out = []
    for i, seed in enumerate(SEEDS):
        values = tiny_values(method, steps=steps, **train)
        values["seed"], values["data"]["seed"] = seed, seed
        values["model"]["kernel"] = "dense"
        if coefficients:
            values["model"]["method"] = {**values["model"]["method"], **coefficients[i]}
        if anchors:
            values["train"]["anchors"] = {"count": 5, "weight": 0.5, "seed": seed}
        out.append(run_config(values))
    return out


def assert_same_weights(a: torch.nn.Module, b: torch.nn.Module) -> None:
    # Equal up to float32 rounding: batched matmuls sum in another order, and 25 Adam steps from TopK's
    # small initial encoder rows grow that to ~2e-4 of a bias's largest entry (1e-7 from unit rows); a
    # step with a wrong gradient moves entries by about lr = 3e-3, several percent of them.
    tensors_a, tensors_b = a.named_tensors(), b.named_tensors()
    assert list(tensors_a) == list(tensors_b)
    for name in tensors_a:
        x, y = tensors_a[name].double(), tensors_b[name].double()
        scale = x.abs().max().clamp_min(1e-6)
        assert ((x - y).abs().max() / scale).item() < 1e-3, name


@pytest.mark.parametrize(
    ("method", "coefficients", "anchors"),
    [
        ("topk", None, False),
        ("batchtopk", None, False),
        ("relu", [{"l1_coefficient": c} for c in (0.003, 0.01, 0.05)], False),
        ("jumprelu", [{"l0_coefficient": c} for c in (0.0005, 0.001, 0.004)], False),
        ("topk", None, True),
        ("topk", None, "clipped"),
    ],
    ids=["topk", "batchtopk", "relu-l1-sweep", "jumprelu-l0-sweep", "topk-soft-anchors", "topk-anchors-clip-binds"],
)
def test_an_ensemble_ends_where_separate_runs_end(method, coefficients, anchors):
    # "clipped": a clip small enough to bind on the data gradient, so that each member's anchor pull is
    # taken out of its clipped norm and added back (train.constraints.ExemptAnchorPull), stacked
    train = {"grad_clip": 0.02} if anchors == "clipped" else {}
    cfgs = configs(method, coefficients, anchors=bool(anchors), **train)
    sources = [build_source(c.data, "cpu") for c in cfgs]
    results = EnsembleTrainer(cfgs, sources).fit()
    for config, source, result in zip(cfgs, sources, results, strict=True):
        alone = Trainer(config, source).fit()
        assert_same_weights(alone.model, result.model)
        assert result.metrics["l0"] == pytest.approx(alone.metrics["l0"], rel=1e-4)
        assert result.metrics["dead_fraction"] == alone.metrics["dead_fraction"]
    # the members really differ (different seeds, data and coefficients): not one run copied three times
    assert not torch.allclose(results[0].model.W_E, results[1].model.W_E)


def test_a_shared_source_sweep_matches_separate_runs():
    """Sweep trials read one source: the batch is not stacked, and the result must not change."""
    cfgs = configs("relu", [{"l1_coefficient": c} for c in (0.001, 0.01, 1.0)], steps=15)
    source = build_source(cfgs[0].data, "cpu")
    cfgs = [c.model_copy(update={"data": cfgs[0].data}) for c in cfgs]
    results = EnsembleTrainer(cfgs, [source] * 3).fit()
    for config, result in zip(cfgs, results, strict=True):
        assert_same_weights(Trainer(config, source).fit().model, result.model)
    l0s = [r.metrics["l0"] for r in results]
    assert l0s[0] > l0s[2]  # a larger λ gives sparser codes


def test_member_checkpoints_resume_with_an_ordinary_trainer(tmp_path):
    """A member's mid-run checkpoint holds Adam's moments and the schedule: resuming it alone ends with
    the weights of an uninterrupted single run."""
    cfgs = configs("batchtopk", steps=20, checkpoint_every=10, keep_checkpoints=5)
    sources = [build_source(c.data, "cpu") for c in cfgs]
    dirs = [tmp_path / f"m{i}" for i in range(3)]
    EnsembleTrainer(cfgs, sources, dirs).fit()
    member = dirs[1] / "checkpoints"
    (member / "step-00000020").rename(tmp_path / "final")  # as if the run had stopped at step 10
    resumed = Trainer(cfgs[1], sources[1], dirs[1]).fit(resume=True)
    assert_same_weights(Trainer(cfgs[1], sources[1]).fit().model, resumed.model)
    final = load_tensors(tmp_path / "final" / "weights.safetensors")
    torch.testing.assert_close(final["W_E"], resumed.model.W_E.detach(), rtol=1e-5, atol=1e-6)
    log = (dirs[0] / "metrics.jsonl").read_text().splitlines()
    assert len(log) == 2 and '"l0"' in log[0]


def test_a_member_checkpoint_between_log_lines_keeps_the_log_sums(tmp_path):
    """Checkpoints every 5 steps, a log line every 10: the member resumed at step 5 logs at step 10 the
    mean over steps 1-10, as the uninterrupted run does."""
    cfgs = configs("topk", steps=10, checkpoint_every=5, keep_checkpoints=5)[:2]
    sources = [build_source(c.data, "cpu") for c in cfgs]
    EnsembleTrainer(cfgs, sources, [tmp_path / "a", tmp_path / "b"]).fit()
    (tmp_path / "b" / "checkpoints" / "step-00000010").rename(tmp_path / "final")
    resumed = Trainer(cfgs[1], sources[1], tmp_path / "b").fit(resume=True)
    alone = Trainer(cfgs[1], sources[1]).fit()
    assert [r["step"] for r in resumed.history] == [10]
    assert resumed.history[0]["loss"] == pytest.approx(alone.history[0]["loss"], rel=1e-4)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"model": {"n_latents": 32}}, "differs from member 0 in model.n_latents"),
        ({"model": {"method": {"name": "topk", "k": 3}}}, "model.method.k"),
        ({"model": {"method": "relu"}}, "model.method.name"),
        ({"train": {"lr": 1e-2}}, "train.lr"),
        ({"train": {"resample": {}}}, "resampling"),
        ({"train": {"anchors": {"count": 5, "mode": "hard"}}}, "hard anchors"),
    ],
)
def test_members_that_do_not_agree_are_refused(change, message):
    cfgs = configs("topk", steps=2)
    values = cfgs[1].model_dump(mode="json")
    for section, update in change.items():
        values[section].update(update)
    cfgs[1] = run_config(values)
    assert message in ensemble_refusal(cfgs)
    with pytest.raises(ConfigError, match="cannot train as one ensemble") as err:
        EnsembleTrainer(cfgs, [build_source(c.data, "cpu") for c in cfgs])
    assert "\n" not in str(err.value) and "one by one" in str(err.value)


@pytest.mark.parametrize("name", sorted(METHODS))
def test_swept_coefficients_reach_the_terms_as_buffers(name):
    """Members may differ in *_coefficient fields because the stack swaps in each member's term buffers:
    a coefficient kept anywhere else would silently take member 0's value."""
    method = method_config(name)
    for field in [f for f in type(method).model_fields if f.endswith("_coefficient")]:
        a, b = (Objective(method.model_copy(update={field: v}).build_terms(64, 20)) for v in (0.25, 0.5))
        differ = [k for k, v in a.state_dict().items() if not torch.equal(v, b.state_dict()[k])]
        assert len(differ) == 1 and differ[0].endswith("coefficient"), (field, differ)
        plain = [{k: v for k, v in vars(t).items() if not k.startswith("_")} for t in (*a.terms, *b.terms)]
        assert plain[: len(a.terms)] == plain[len(a.terms) :], field


def test_a_method_with_a_post_step_is_refused():
    class Clamped(Activation):
        has_post_step = True

        def post_step(self) -> None: ...

    @register_method
    class ClampedConfig(ReLUConfig):
        name: str = "clamped-test"

        def build_activation(self, n_latents: int) -> Activation:
            return Clamped()

    try:
        cfgs = [run_config(tiny_values({"name": "clamped-test"}, steps=2)) for _ in range(2)]
        assert "has a post-step" in ensemble_refusal(cfgs)
    finally:
        del METHODS["clamped-test"]


def test_batching_is_declined_where_it_would_be_slower():
    def with_(method, n_latents=64, device="cpu", batch_size=64):
        values = tiny_values(method, steps=2, batch_size=batch_size)
        values["model"]["n_latents"] = n_latents
        return run_config(values).model_copy(update={"device": device})

    assert worth_batching([with_("topk"), with_("topk")])  # tiny on CPU: per-op overheads dominate
    assert not worth_batching([with_("topk")])  # one run: nothing to stack
    assert not worth_batching([with_("relu", 512, batch_size=1024)] * 2)  # a CPU step this large gains nothing
    assert not worth_batching([with_("topk", 8192, "cuda")] * 2)  # the stack would give up the sparse kernel
    assert worth_batching([with_("relu", 8192, "cuda")] * 2)  # dense either way
