"""Each σ against its definition: eq. 10, exact non-zero counts, straight-through gradients."""

import pytest
import torch

from sdlkit.errors import ConfigError
from sdlkit.methods import METHODS, method_config
from sdlkit.methods.jumprelu import JumpReLU, step
from sdlkit.methods.topk import BatchTopK, TopK

EQ10_METHODS = ["relu", "jumprelu", "topk", "batchtopk", "matryoshka"]


def _assert_eq10(z: torch.Tensor, x_q: torch.Tensor) -> None:
    assert ((x_q == 0) | (x_q == z)).all(), "eq. 10 violated: σ(z)_i must be 0 or z_i"


@pytest.mark.parametrize("name", EQ10_METHODS)
@pytest.mark.parametrize("training", [True, False])
def test_eq10_holds(name, training):
    torch.manual_seed(0)
    spec = {"name": name, "k": 5} if name in ("topk", "batchtopk", "matryoshka") else {"name": name}
    if name == "jumprelu":
        spec["init_threshold"] = 0.3
    sigma = method_config(spec).build_activation(64)
    sigma.train(training)
    if hasattr(sigma, "threshold") and isinstance(sigma, BatchTopK):
        sigma.threshold.fill_(0.5)
    z = torch.randn(32, 64)
    x_q = sigma(z)
    _assert_eq10(z, x_q)
    assert (x_q != 0).any(), "a σ that zeroes everything satisfies eq. 10 trivially"


def test_gated_is_the_documented_exception():
    sigma = method_config("gated").build_activation(8)
    with torch.no_grad():
        sigma.r_mag.fill_(0.5)
        sigma.b_mag.fill_(-0.1)
    z = torch.randn(16, 8)
    expected = (z > 0) * torch.relu(torch.exp(torch.tensor(0.5)) * z - 0.1)
    torch.testing.assert_close(sigma(z), expected)


def test_topk_exactly_k_nonzeros_per_sample():
    z = torch.rand(50, 100) + 0.01  # all positive: exactly k survive
    for k in (1, 7, 100):
        x_q = TopK(k)(z)
        assert ((x_q != 0).sum(dim=1) == k).all()
        # the survivors are the k largest of each row
        assert torch.equal(x_q.topk(k, dim=1).values.sort(dim=1).values, z.topk(k, dim=1).values.sort(dim=1).values)


def test_topk_counts_with_negative_preactivations():
    z = torch.randn(40, 30)
    x_q = TopK(10)(z)
    expected = torch.clamp((z > 0).sum(dim=1), max=10)
    assert torch.equal((x_q != 0).sum(dim=1), expected)


def test_batchtopk_keeps_k_times_batch_and_varies_per_sample():
    torch.manual_seed(1)
    z = torch.rand(64, 200) * torch.rand(64, 1) * 3  # rows of very different scale
    sigma = BatchTopK(k=4).train()
    x_q = sigma(z)
    assert (x_q != 0).sum() == 4 * 64
    per_row = (x_q != 0).sum(dim=1)
    assert per_row.min() < 4 < per_row.max()
    # kept values are exactly the global top 256
    assert torch.equal(x_q[x_q != 0].sort().values, z.flatten().topk(256).values.sort().values)


def test_batchtopk_threshold_is_ema_of_min_kept_and_used_at_inference():
    sigma = BatchTopK(k=2, threshold_momentum=0.9).train()
    z1, z2 = torch.rand(8, 20), torch.rand(8, 20) * 2
    sigma(z1)
    t1 = z1.flatten().topk(16).values.min()
    assert torch.isclose(sigma.threshold, t1)
    sigma(z2)
    t2 = z2.flatten().topk(16).values.min()
    assert torch.isclose(sigma.threshold, 0.9 * t1 + 0.1 * t2)
    sigma.eval()
    z = torch.rand(5, 20) * 2
    torch.testing.assert_close(sigma(z), z * (z > sigma.threshold))


def test_batchtopk_threshold_ignores_a_batch_with_nothing_positive():
    sigma = BatchTopK(k=2).train()
    sigma(-torch.rand(4, 10))
    assert not sigma.threshold_initialised and sigma.threshold == 0


def _smoothed_step(u: torch.Tensor, eps: float) -> torch.Tensor:
    """H_ε(u) = clamp(u/ε + ½, 0, 1): the step whose θ-derivative the estimator claims to be."""
    return torch.clamp(u / eps + 0.5, 0.0, 1.0)


def test_l0_straight_through_gradient_matches_finite_difference_of_smoothed_step():
    torch.manual_seed(2)
    eps, n = 0.05, 6
    theta = torch.full((n,), 0.5, dtype=torch.float64, requires_grad=True)
    z = 0.5 + 0.08 * torch.randn(400, n, dtype=torch.float64)  # many inside the kernel
    step(z, theta, eps).sum().backward()
    h = 1e-6
    with torch.no_grad():
        fd = torch.stack(
            [
                (_smoothed_step(z - (theta + h * e), eps).sum() - _smoothed_step(z - (theta - h * e), eps).sum())
                / (2 * h)
                for e in torch.eye(n, dtype=torch.float64)
            ]
        )
    assert fd.abs().min() > 1.0, "the test must exercise the kernel"
    torch.testing.assert_close(theta.grad, fd, rtol=1e-6, atol=1e-6)


def test_jumprelu_straight_through_gradient_matches_smoothed_activation():
    torch.manual_seed(3)
    eps, n = 0.02, 5
    # θ = 2 so that the activation's −(θ/ε)K differs from the L0 estimator's −(1/ε)K
    sigma = JumpReLU(n, init_threshold=2.0, bandwidth=eps).double()
    z = 2.0 + 0.05 * torch.randn(500, n, dtype=torch.float64)
    sigma(z).sum().backward()
    grad_log = sigma.log_threshold.grad
    theta = sigma.threshold.detach()
    h = 1e-6
    fd = torch.stack(
        [
            (
                (z * _smoothed_step(z - (theta + h * e), eps)).sum()
                - (z * _smoothed_step(z - (theta - h * e), eps)).sum()
            )
            / (2 * h)
            for e in torch.eye(n, dtype=torch.float64)
        ]
    )
    # chain rule through θ = exp(log θ); the estimator uses θ for z inside the kernel: error ≤ ε/(2θ)
    torch.testing.assert_close(grad_log / theta, fd, rtol=eps / 4, atol=1e-6)


def test_jumprelu_gradient_to_z_is_the_gate():
    sigma = JumpReLU(4, init_threshold=0.5, bandwidth=0.01)
    z = torch.tensor([[0.2, 0.6, -1.0, 0.51]], requires_grad=True)
    sigma(z).sum().backward()
    assert torch.equal(z.grad, torch.tensor([[0.0, 1.0, 0.0, 1.0]]))


def test_unknown_method_names_the_known_ones():
    with pytest.raises(ConfigError, match="unknown method 'topkk'; known methods: batchtopk, gated"):
        method_config("topkk")


@pytest.mark.parametrize("name", ["topk", "batchtopk", "matryoshka"])
def test_k_larger_than_n_latents_is_refused(name):
    with pytest.raises(ConfigError, match=r"method.k = 65 .* model.n_latents = 64"):
        method_config({"name": name, "k": 65}).build_activation(64)


def test_registry_has_every_method():
    assert set(METHODS) == {"relu", "jumprelu", "topk", "batchtopk", "gated", "matryoshka"}
