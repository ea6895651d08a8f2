"""The sparse TopK kernel against the dense reference: same loss, same gradients, same training."""

from __future__ import annotations

import pytest
import torch

from conftest import tiny_config
from sdlkit.config import run_config
from sdlkit.core import model as model_module
from sdlkit.core.kernels import SparsePattern, decode_entries, select_batch_topk, top_flat
from sdlkit.core.model import ModelConfig, SparseDictionary
from sdlkit.core.objective import L1Penalty, Objective, TermContext
from sdlkit.data import build_source
from sdlkit.errors import ConfigError
from sdlkit.train.trainer import Trainer

KERNEL_METHOD_SPECS = {
    "topk": {"name": "topk", "k": 5},
    "batchtopk": {"name": "batchtopk", "k": 5},
    "matryoshka": {"name": "matryoshka", "k": 5, "selection": "topk", "prefixes": [3, 10, 24, 40]},
    "matryoshka-batchtopk": {"name": "matryoshka", "k": 5, "prefixes": [4, 40]},
    "topk-auxk": {"name": "topk", "k": 5, "auxk": {"k_aux": 7}},
}
"""The TopK-family method configs the sparse kernel is checked on, by case name (the registry is
sdlkit.methods.METHODS)."""


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.double(), b.double()
    return ((a - b).norm() / b.norm().clamp_min(1e-30)).item()


def make_model(kernel: str, method, n_in=12, n_out=None, n_latents=40, bias=True, dtype="float32"):
    config = ModelConfig(
        n_in=n_in, n_out=n_out, n_latents=n_latents, method=method, kernel=kernel, bias=bias, dtype=dtype
    )
    model = SparseDictionary(config, torch.Generator().manual_seed(0))
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():  # move away from W_E = W_Dᵀ and zero biases, so every gradient is generic
        model.W_E.add_(0.3 * torch.randn(model.W_E.shape, generator=g).to(model.W_E.dtype))
        if bias:
            model.b_E.copy_(0.2 * torch.randn(n_latents, generator=g))
            model.b_D.copy_(torch.randn(model.n_out, generator=g))
    return model


def loss_and_grads(model, x_p, x_r, dead=None, extra=(), x_grad=False):
    """Loss, its parts and every gradient (x_p's too when `x_grad`) for one batch."""
    model.zero_grad(set_to_none=True)
    x_p = x_p.clone().requires_grad_(x_grad)
    objective = Objective([*model.config.method.build_terms(model.n_latents, model.n_out), *extra])
    out = model(x_p)
    loss, parts = objective(TermContext(out, x_p, x_r, model, 0, dead))
    loss.backward()
    grads = {name: p.grad.clone() for name, p in model.named_parameters()}
    if x_grad:
        grads["x_p"] = x_p.grad.clone()
    return loss.detach(), parts, grads, out


def assert_kernels_agree(method, n_in=12, n_out=None, n_latents=40, batch=16, bias=True, dead=None, **kw):
    g = torch.Generator().manual_seed(2)
    x_p = torch.randn(batch, n_in, generator=g)
    x_r = x_p if n_out is None else torch.randn(batch, n_out, generator=g)
    dense = make_model("dense", method, n_in, n_out, n_latents, bias)
    sparse = make_model("sparse", method, n_in, n_out, n_latents, bias)
    loss_d, parts_d, grads_d, out_d = loss_and_grads(dense, x_p, x_r, dead, **kw)
    loss_s, parts_s, grads_s, out_s = loss_and_grads(sparse, x_p, x_r, dead, **kw)
    assert out_s.codes is not None and out_d.codes is None
    assert abs(loss_s - loss_d) <= 1e-6 * abs(loss_d)
    assert parts_d.keys() == parts_s.keys()
    for name in parts_d:
        assert abs(parts_s[name] - parts_d[name]) <= 1e-6 * abs(parts_d[name]) + 1e-12, name
    assert grads_d.keys() == grads_s.keys()
    for name in grads_d:
        assert grads_d[name].abs().sum() > 0, f"{name}: the dense gradient is zero, the test would prove nothing"
        assert rel_err(grads_s[name], grads_d[name]) < 1e-5, name
    assert torch.equal(out_s.x_q != 0, out_d.x_q != 0)  # the same entries are selected
    torch.testing.assert_close(out_s.x_q, out_d.x_q)  # (z from row blocks may differ in the last bit)
    assert torch.equal(out_s.fired(), out_d.fired()) and out_s.count_nonzero() == out_d.count_nonzero()
    return out_s


@pytest.mark.parametrize("chunk_entries", [1 << 22, 100])
@pytest.mark.parametrize("name", list(KERNEL_METHOD_SPECS))
def test_loss_and_gradients_agree(name, chunk_entries, monkeypatch):
    """Also with z computed two rows at a time (100 entries), as large batches are."""
    monkeypatch.setattr(model_module, "SPARSE_CHUNK_ENTRIES", chunk_entries)
    dead = torch.zeros(40, dtype=torch.bool)
    dead[::3] = True  # AuxK needs dead latents; the other methods ignore the mask
    assert_kernels_agree(KERNEL_METHOD_SPECS[name], dead=dead)


def test_auxk_with_fewer_dead_latents_than_k_aux_and_with_none():
    dead = torch.zeros(40, dtype=torch.bool)
    dead[[4, 17]] = True
    assert_kernels_agree(KERNEL_METHOD_SPECS["topk-auxk"], dead=dead)
    _, parts, _, _ = loss_and_grads(
        make_model("sparse", KERNEL_METHOD_SPECS["topk-auxk"]),
        torch.randn(8, 12),
        torch.randn(8, 12),
        torch.zeros(40, dtype=torch.bool),
    )
    assert parts["auxk"] == 0


def test_l1_term_and_input_gradient_agree():
    assert_kernels_agree(KERNEL_METHOD_SPECS["topk"], extra=[L1Penalty(0.3)], x_grad=True)


def test_k_equal_to_n_latents():
    assert_kernels_agree({"name": "topk", "k": 40})
    assert_kernels_agree({"name": "batchtopk", "k": 40})


def test_batch_of_one_bias_off_and_transcoder():
    assert_kernels_agree(KERNEL_METHOD_SPECS["topk"], batch=1)
    assert_kernels_agree(KERNEL_METHOD_SPECS["batchtopk"], batch=1)
    assert_kernels_agree(KERNEL_METHOD_SPECS["topk"], bias=False)
    assert_kernels_agree(KERNEL_METHOD_SPECS["matryoshka"], bias=False)
    assert_kernels_agree(KERNEL_METHOD_SPECS["topk"], n_in=12, n_out=7)
    assert_kernels_agree(KERNEL_METHOD_SPECS["batchtopk"], n_in=9, n_out=15)


def test_ties_pick_the_same_latents():
    """Latents with identical encoder rows tie exactly; both kernels make topk's choice."""
    for name in ("topk", "batchtopk"):
        dense, sparse = make_model("dense", KERNEL_METHOD_SPECS[name]), make_model("sparse", KERNEL_METHOD_SPECS[name])
        for model in (dense, sparse):
            with torch.no_grad():
                model.W_E[10:20] = model.W_E[0]
                model.b_E[10:20] = model.b_E[0]
        x = 0.1 * torch.randn(6, 12) + 3 * dense.W_E[0].detach()  # the tied latents come first
        out_d, out_s = dense(x), sparse(x)
        assert (out_d.x_q[:, 10:20] != 0).any()  # tied latents are among the selected ones
        torch.testing.assert_close(out_s.x_q, out_d.x_q, rtol=0, atol=0)
        torch.testing.assert_close(out_s.x_hat, out_d.x_hat)


def test_batchtopk_inference_uses_the_threshold():
    spec = KERNEL_METHOD_SPECS["batchtopk"]
    dense, sparse = make_model("dense", spec), make_model("sparse", spec)
    x = torch.randn(32, 12)
    dense(x), sparse(x)  # one training batch sets θ
    assert dense.activation.threshold == sparse.activation.threshold > 0
    dense.eval(), sparse.eval()
    out_d, out_s = dense(x[:5]), sparse(x[:5])
    assert torch.equal(out_s.x_q, out_d.x_q)
    torch.testing.assert_close(out_s.x_hat, out_d.x_hat)


def test_top_flat_matches_a_full_topk_with_and_without_its_fallback():
    g = torch.Generator().manual_seed(3)
    flat = torch.randn(1 << 20, generator=g)  # large enough for the prefilter
    m = 1 << 13
    assert torch.equal(top_flat(flat, m, 4096).sort().values, flat.topk(m).indices.sort().values)
    # Every sampled entry (stride 31 for 2^21 entries) larger than the rest, fewer of them than m:
    # the sample's threshold lets too few entries through and the full topk must take over.
    flat = torch.rand(1 << 21, generator=g) - 2
    flat[::31] += 10
    m = 1 << 17
    assert torch.equal(top_flat(flat, m, 4096).sort().values, flat.topk(m).indices.sort().values)


@pytest.mark.parametrize("rows_per_chunk", [256, 64, 5, 1])
def test_batch_topk_over_chunks_is_the_batch_wide_topk(rows_per_chunk):
    g = torch.Generator().manual_seed(5)
    z = torch.randn(256, 4096, generator=g) + torch.linspace(-1, 1, 4096)  # columns differ in level
    for m in (256 * 32, 3, 256 * 4096):
        pattern, pre = select_batch_topk(z.split(rows_per_chunk), m)
        flat = pattern.rows * 4096 + pattern.latents
        assert torch.equal(flat, z.reshape(-1).topk(m).indices.sort().values)
        assert torch.equal(pre, z.reshape(-1)[flat]) and pattern.n_rows == 256


def test_pattern_groupings_and_decode_match_dense():
    pattern = SparsePattern(torch.tensor([0, 0, 1, 2, 3]), torch.tensor([3, 9, 7, 2, 8]), n_rows=4, n_latents=10)
    assert pattern.row_offsets().tolist() == [0, 2, 3, 4]
    perm, offsets = pattern.by_latent()
    assert pattern.latents[perm].tolist() == [2, 3, 7, 8, 9] and offsets.tolist() == [0, 0, 0, 1, 2, 2, 2, 2, 3, 4]
    values = torch.tensor([1.0, 2.0, 3.0, 4.0, 5.0])
    W_D = torch.randn(6, 10)
    torch.testing.assert_close(decode_entries(values, W_D, None, pattern), pattern.dense(values) @ W_D.T)


def test_bfloat16_model_takes_the_gather_fallback():
    g = torch.Generator().manual_seed(4)
    x = torch.randn(16, 12, generator=g)
    dense = make_model("dense", KERNEL_METHOD_SPECS["topk"], dtype="bfloat16")
    sparse = make_model("sparse", KERNEL_METHOD_SPECS["topk"], dtype="bfloat16")
    _, _, grads_d, _ = loss_and_grads(dense, x, x.bfloat16())
    _, _, grads_s, _ = loss_and_grads(sparse, x, x.bfloat16())
    for name in grads_d:
        assert rel_err(grads_s[name].float(), grads_d[name].float()) < 2e-2, name


def test_sparse_kernel_needs_a_topk_family_method():
    values = {"data": {"preset": "tiny"}, "model": {"n_latents": 16, "method": "relu", "kernel": "sparse"}}
    with pytest.raises(ConfigError, match="kernel"):
        run_config(values)
    assert run_config({**values, "model": {**values["model"], "kernel": "auto"}}).model.sparse_kernel is False
    assert ModelConfig(n_in=4, n_latents=8, method="batchtopk").sparse_kernel is True
    assert ModelConfig(n_in=4, n_latents=8, method="topk", kernel="dense").sparse_kernel is False


@pytest.mark.parametrize("name", ["topk", "batchtopk", "matryoshka", "topk-auxk"])
def test_twenty_trainer_steps_give_the_same_weights(name):
    results = {}
    for kernel in ("dense", "sparse"):
        config = tiny_config(name, steps=20, log_every=5, dead_window=64)  # a latent silent for a batch is dead
        config.model.kernel = kernel
        trainer = Trainer(config, build_source(config.data))
        results[kernel] = (trainer.fit(), trainer.dead.since_fired)
    (dense, dead_d), (sparse, dead_s) = results["dense"], results["sparse"]
    # Equal up to float32 rounding, which 20 Adam steps from TopK's small initial encoder rows grow to
    # ~3e-5 in the biases (in float64 the two kernels agree to 1e-16); a wrong gradient gives > 1e-2.
    for tensor_name, tensor in dense.model.named_tensors().items():
        assert rel_err(sparse.model.named_tensors()[tensor_name], tensor) < 1e-4, tensor_name
    assert torch.equal(dead_s, dead_d)
    for rec_d, rec_s in zip(dense.history, sparse.history, strict=True):
        assert rec_s["l0"] == rec_d["l0"] and rec_s["dead_fraction"] == rec_d["dead_fraction"]
        assert rec_s["loss"] == pytest.approx(rec_d["loss"], rel=1e-5)
    if name == "topk-auxk":
        assert any(rec["auxk"] > 0 for rec in sparse.history)  # AuxK really ran
