"""SparseDictionary: shapes, initialisation, decoder constraint, clear errors on bad input."""

import pytest
import torch

from sdlkit.core.model import ModelConfig, SparseDictionary
from sdlkit.errors import ConfigError, ShapeError


def make(n_in=12, n_latents=40, **kw) -> SparseDictionary:
    return SparseDictionary(ModelConfig(n_in=n_in, n_latents=n_latents, **kw), torch.Generator().manual_seed(0))


def test_shapes_and_paper_names():
    model = make(n_in=12, n_out=7, n_latents=40, method={"name": "topk", "k": 3})
    tensors = model.named_tensors()
    assert tensors["W_E"].shape == (40, 12) and tensors["b_E"].shape == (40,)
    assert tensors["W_D"].shape == (7, 40) and tensors["b_D"].shape == (7,)
    out = model(torch.randn(5, 12))
    assert out.z.shape == out.x_q.shape == (5, 40) and out.x_hat.shape == (5, 7)


def test_forward_is_eq_1_and_2():
    model = make(method="relu")
    with torch.no_grad():
        model.b_E.normal_()
        model.b_D.normal_()
    x = torch.randn(6, 12)
    x_q = torch.relu(x @ model.W_E.T + model.b_E)
    torch.testing.assert_close(model(x).x_hat, x_q @ model.W_D.T + model.b_D)


def test_encoder_initialised_as_decoder_transpose_with_unit_columns():
    model = make(method="relu")
    assert torch.equal(model.W_E, model.W_D.T)
    torch.testing.assert_close(model.W_D.norm(dim=0), torch.ones(40))


def test_topk_family_encoder_rows_start_at_norm_0_1_along_the_decoder():
    # W_E = 0.1 · W_Dᵀ for a unit-norm decoder: same directions, rows a tenth as long
    model = make(method={"name": "topk", "k": 3})
    torch.testing.assert_close(model.W_E.norm(dim=1), torch.full((40,), 0.1))
    torch.testing.assert_close(model.W_E, 0.1 * model.W_D.T)


@pytest.mark.parametrize("method", ["relu", {"name": "topk", "k": 3}])
def test_init_encoder_norm_overrides_the_method_choice(method):
    model = make(method=method, init_encoder_norm=0.5)
    torch.testing.assert_close(model.W_E, 0.5 * model.W_D.T)
    transcoder = make(n_in=12, n_out=5, n_latents=40, method=method, init_encoder_norm=0.5)
    torch.testing.assert_close(transcoder.W_E.norm(dim=1), torch.full((40,), 0.5))


def test_init_encoder_norm_is_refused_when_not_positive():
    with pytest.raises(ValueError, match="init_encoder_norm"):
        ModelConfig(n_in=12, n_latents=40, init_encoder_norm=0)


def test_free_decoder_init_norm():
    model = make(unit_norm_decoder=False, init_decoder_norm=0.1)
    torch.testing.assert_close(model.W_D.norm(dim=0), torch.full((40,), 0.1))


def test_transcoder_encoder_rows_match_decoder_norms():
    model = make(n_in=12, n_out=5, n_latents=40, method="relu")
    torch.testing.assert_close(model.W_E.norm(dim=1), model.W_D.norm(dim=0))
    topk = make(n_in=12, n_out=5, n_latents=40, method={"name": "topk", "k": 3})
    torch.testing.assert_close(topk.W_E.norm(dim=1), torch.full((40,), 0.1))


def test_biases_can_be_switched_off():
    model = make(bias=False)
    assert model.b_E is None and model.b_D is None
    assert set(model.named_tensors()) == {"W_E", "W_D"}
    x = torch.randn(3, 12)
    torch.testing.assert_close(model(x).x_hat, model.activation(x @ model.W_E.T) @ model.W_D.T)


def test_project_decoder_grad_removes_column_parallel_part():
    model = make()
    model.W_D.grad = torch.randn_like(model.W_D)
    model.project_decoder_grad()
    parallel = (model.W_D.grad * model.W_D).sum(dim=0)
    assert parallel.abs().max() < 1e-6


def test_crosscoder_decoder_norms_sum_over_sources():
    model = make(n_in=12, n_latents=10, in_blocks=[5, 7], out_blocks=[5, 7], unit_norm_decoder=False, method="relu")
    expected = model.W_D[:5].norm(dim=0) + model.W_D[5:].norm(dim=0)
    torch.testing.assert_close(model.decoder_norms(), expected)


@pytest.mark.parametrize(
    ("x", "message"),
    [
        (torch.randn(4, 11), r"x_p has shape \(4, 11\); this dictionary needs \[batch, 12\]"),
        (torch.randn(12), r"x_p has shape \(12,\)"),
        (torch.ones(4, 12, dtype=torch.int64), "x_p has dtype torch.int64; a floating-point tensor is needed"),
    ],
)
def test_bad_input_names_the_tensor(x, message):
    with pytest.raises(ShapeError, match=message):
        make()(x)


def test_blocks_must_sum_to_width():
    with pytest.raises(ValueError, match=r"in_blocks = \[5, 5\] must be positive widths summing to n_in = 12"):
        ModelConfig(n_in=12, n_latents=4, in_blocks=[5, 5])


def test_model_without_n_in_is_refused():
    with pytest.raises(ConfigError, match="model.n_in is not set"):
        SparseDictionary(ModelConfig(n_latents=4))
