"""Dead-latent tracking and the Towards Monosemanticity resampling recipe."""

import torch

from sdlkit.core.model import ModelConfig, SparseDictionary
from sdlkit.data import Batch
from sdlkit.train.resample import DeadLatents, resample_dead_latents


def test_dead_latents_age_by_batch_size_and_reset_when_fired():
    tracker = DeadLatents(4, window=10, device="cpu")
    x_q = torch.tensor([[1.0, 0, 0, 0], [0, 0, 2.0, 0]])
    for _ in range(5):
        tracker.update(x_q)
    assert tracker.since_fired.tolist() == [0, 10, 0, 10]
    assert tracker.dead.tolist() == [False, True, False, True]


def model_and_optimizer():
    torch.manual_seed(0)
    model = SparseDictionary(ModelConfig(n_in=8, n_latents=16, method="jumprelu"))
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    x = torch.randn(32, 8)
    (model(x).x_hat - x).pow(2).sum().backward()
    optimizer.step()
    with torch.no_grad():
        model.b_E.fill_(0.3)
        model.activation.log_threshold.fill_(1.0)
    return model, optimizer


def test_resampling_follows_the_recipe():
    model, optimizer = model_and_optimizer()
    dead = torch.zeros(16, dtype=torch.bool)
    dead[[2, 9]] = True
    alive_norm = model.W_E[~dead].norm(dim=1).mean()
    inputs = Batch(torch.randn(50, 8), torch.randn(50, 8))
    before = {k: v.clone() for k, v in optimizer.state[model.W_E].items()}
    n = resample_dead_latents(model, optimizer, dead, inputs, torch.Generator().manual_seed(0))
    assert n == 2
    for i in (2, 9):  # which input each direction comes from is checked in the next test
        assert abs(model.W_D[:, i].norm() - 1) < 1e-6
        assert abs(model.W_E[i].norm() - 0.2 * alive_norm) < 1e-5
    assert torch.equal(model.b_E[[2, 9]], torch.zeros(2)) and (model.b_E[~dead] == 0.3).all()
    assert (model.activation.log_threshold[[2, 9]] == model.activation.init_log_threshold).all()
    state = optimizer.state[model.W_E]
    assert (state["exp_avg"][[2, 9]] == 0).all() and (state["exp_avg_sq"][[2, 9]] == 0).all()
    assert torch.equal(state["exp_avg"][~dead], before["exp_avg"][~dead])
    assert (optimizer.state[model.W_D]["exp_avg"][:, [2, 9]] == 0).all()


def test_new_directions_come_from_the_worst_reconstructed_input():
    model, optimizer = model_and_optimizer()
    x = torch.randn(40, 8) * 0.01
    x[17] = torch.tensor([5.0, -3, 0, 0, 1, 0, 0, 2])  # by far the largest loss: drawn ∝ loss²
    with torch.no_grad():
        residual_17 = x[17] - model(x[17:18]).x_hat[0]
    dead = torch.zeros(16, dtype=torch.bool)
    dead[[0, 5, 11]] = True
    resample_dead_latents(model, optimizer, dead, Batch(x, x), torch.Generator().manual_seed(1))
    for i in (0, 5, 11):
        torch.testing.assert_close(model.W_D[:, i], residual_17 / residual_17.norm())
        torch.testing.assert_close(model.W_E[i] / model.W_E[i].norm(), x[17] / x[17].norm())


def test_nothing_dead_nothing_changes():
    model, optimizer = model_and_optimizer()
    W_D = model.W_D.detach().clone()
    n = resample_dead_latents(
        model,
        optimizer,
        torch.zeros(16, dtype=torch.bool),
        Batch(torch.randn(4, 8), torch.randn(4, 8)),
        torch.Generator(),
    )
    assert n == 0 and torch.equal(model.W_D, W_D)
