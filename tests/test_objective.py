"""Loss terms against hand computations."""

import torch

from sdlkit.core.model import ModelConfig, SparseDictionary
from sdlkit.core.objective import AuxK, L1Penalty, Objective, PrefixReconstruction, TermContext, warmed_up
from sdlkit.methods import method_config


def context(model, x, dead=None, step=0) -> TermContext:
    return TermContext(model(x), x, x, model, step, dead)


def test_l1_weighted_by_decoder_norms_and_warmed_up():
    model = SparseDictionary(ModelConfig(n_in=6, n_latents=10, method="relu", unit_norm_decoder=False))
    with torch.no_grad():
        model.W_D.mul_(torch.linspace(0.5, 2.0, 10))
    ctx = context(model, torch.randn(8, 6), step=4)
    expected = (ctx.x_q * model.W_D.norm(dim=0)).sum(dim=1).mean() * 0.3 * (5 / 10)
    torch.testing.assert_close(L1Penalty(0.3, warmup_steps=10)(ctx), expected)
    assert warmed_up(0.3, 10, 20) == 0.3


def test_matryoshka_prefix_loss_is_eq_9():
    torch.manual_seed(0)
    model = SparseDictionary(
        ModelConfig(n_in=6, n_latents=16, method={"name": "matryoshka", "k": 4, "selection": "topk"})
    )
    with torch.no_grad():
        model.b_D.normal_()
    ctx = context(model, torch.randn(9, 6))
    prefixes, weights = [2, 5, 16], [0.5, 1.0, 2.0]
    expected = sum(
        w * (ctx.x_r - (ctx.x_q[:, :m] @ model.W_D[:, :m].T + model.b_D)).pow(2).sum(dim=1).mean()
        for m, w in zip(prefixes, weights, strict=True)
    )
    torch.testing.assert_close(PrefixReconstruction(prefixes, weights)(ctx), expected)


def test_matryoshka_default_prefixes_halve_down():
    assert method_config("matryoshka").resolved_prefixes(1024) == [64, 128, 256, 512, 1024]


def test_auxk_models_residual_with_dead_latents_only():
    torch.manual_seed(1)
    model = SparseDictionary(ModelConfig(n_in=6, n_latents=12, method={"name": "topk", "k": 2}))
    dead = torch.zeros(12, dtype=torch.bool)
    dead[[1, 4, 7, 9]] = True
    ctx = context(model, torch.randn(10, 6), dead=dead)
    e = ctx.x_r - ctx.x_hat
    z_dead = torch.where(dead, ctx.z, torch.full_like(ctx.z, -1e9))
    vals, idx = z_dead.topk(3, dim=1)
    z_aux = torch.zeros_like(ctx.z).scatter(1, idx, vals.relu())
    variance = (e - e.mean(0)).pow(2).sum(1).mean()
    expected = 0.5 * (e - z_aux @ model.W_D.T).pow(2).sum(1).mean() / variance
    torch.testing.assert_close(AuxK(3, 0.5)(ctx), expected)
    assert AuxK(3, 0.5)(context(model, ctx.x_p, dead=torch.zeros(12, dtype=torch.bool))) == 0


def test_auxk_gradient_reaches_only_dead_encoder_rows():
    model = SparseDictionary(ModelConfig(n_in=6, n_latents=12, method={"name": "topk", "k": 2}))
    dead = torch.zeros(12, dtype=torch.bool)
    dead[[3, 5]] = True
    AuxK(4, 1.0)(context(model, torch.randn(20, 6), dead=dead)).backward()
    rows_with_grad = model.W_E.grad.abs().sum(dim=1) > 0
    assert rows_with_grad[dead].all() and not rows_with_grad[~dead].any()


def test_objective_sums_terms_and_reports_each():
    model = SparseDictionary(ModelConfig(n_in=6, n_latents=10, method="relu"))
    objective = Objective(method_config({"name": "relu", "l1_coefficient": 0.2}).build_terms(10, 6))
    total, parts = objective(context(model, torch.randn(4, 6)))
    assert set(parts) == {"mse", "l1"}
    torch.testing.assert_close(total, parts["mse"] + parts["l1"])
