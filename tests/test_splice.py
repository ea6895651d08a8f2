"""Splice metrics: CE loss recovered is exactly 1 for an identity dictionary and 0 for a zero one, in
between for a noisy one; the clean loss is the model's own; padding and special tokens are handled."""

from __future__ import annotations

import copy

import pytest
import torch

pytest.importorskip("transformers")

from hf_tiny import TEXTS, one_thread, tiny_lm  # noqa: F401 (one_thread: autouse fixture)
from sdlkit.errors import ConfigError, ShapeError
from sdlkit.eval.splice import splice_metrics
from sdlkit.harvest import load_model

BLOCKS = {"gpt2": "transformer.h", "llama": "model.layers"}


@pytest.fixture(scope="module", params=["gpt2", "llama"])
def lm(request, tmp_path_factory):
    """A tiny LM trained briefly on TEXTS, so that its blocks matter and zeroing one costs loss."""
    loaded = load_model(str(tiny_lm(tmp_path_factory.mktemp(request.param), request.param)))
    model, tokenizer = loaded.model, loaded.tokenizer
    encoded = tokenizer(TEXTS, padding=True, return_tensors="pt")
    labels = encoded["input_ids"].masked_fill(encoded["attention_mask"] == 0, -100)
    optimiser = torch.optim.Adam(model.parameters(), lr=2e-2)
    model.train().requires_grad_(True)
    for _ in range(20):
        loss = model(**encoded, labels=labels).loss
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    model.eval().requires_grad_(False)
    return request.param, model, tokenizer


def test_identity_recovers_all_and_zero_nothing(lm):
    arch, model, tokenizer = lm
    block = f"{BLOCKS[arch]}.1"
    identity = splice_metrics(model, tokenizer, TEXTS, block, lambda x: x, batch_size=8)
    assert identity["ce_loss_recovered"] == pytest.approx(1.0, abs=1e-6)
    assert identity["kl_div"] == pytest.approx(0.0, abs=1e-9) and identity["ce_spliced"] == identity["ce_clean"]
    assert identity["ce_zero"] > identity["ce_clean"] + 0.5  # the trained block matters
    zero = splice_metrics(model, tokenizer, TEXTS, block, torch.zeros_like, batch_size=8)
    assert zero["ce_loss_recovered"] == pytest.approx(0.0, abs=1e-6) and zero["kl_div"] > 0.1
    generator = torch.Generator().manual_seed(0)

    def noisy(x: torch.Tensor) -> torch.Tensor:
        scale = x.norm(dim=-1, keepdim=True) / x.shape[-1] ** 0.5
        return x + 0.5 * scale * torch.randn(x.shape, generator=generator)

    partial = splice_metrics(model, tokenizer, TEXTS, block, noisy, batch_size=8)
    assert 0.0 < partial["ce_loss_recovered"] < 1.0 and partial["kl_div"] > 0.0
    assert partial["ce_clean"] == identity["ce_clean"] and partial["ce_zero"] == identity["ce_zero"]


def test_clean_loss_is_the_models_own_and_padding_is_ignored(lm):
    arch, model, tokenizer = lm
    result = splice_metrics(model, tokenizer, TEXTS, f"{BLOCKS[arch]}.0", lambda x: x, batch_size=5)
    losses, counts = [], []
    for text in TEXTS:  # one text at a time: no padding at all; HF's own shifted next-token loss
        ids = tokenizer(text, return_tensors="pt")["input_ids"]
        losses.append(float(model(input_ids=ids, labels=ids).loss) * (ids.shape[1] - 1))
        counts.append(ids.shape[1] - 1)
    assert result["ce_clean"] == pytest.approx(sum(losses) / sum(counts), rel=1e-5)
    n_tokens = sum(c + 1 for c in counts)
    assert result["tokens"] == n_tokens and result["replaced_tokens"] == n_tokens - 2 * len(TEXTS)  # BOS, EOS kept
    with_special = splice_metrics(model, tokenizer, TEXTS, f"{BLOCKS[arch]}.0", torch.zeros_like, include_special=True)
    assert with_special["replaced_tokens"] == n_tokens
    batches = [tokenizer(TEXTS[i : i + 7], padding=True, return_tensors="pt") for i in range(0, len(TEXTS), 7)]
    from_tokens = splice_metrics(model, None, [dict(b) for b in batches], f"{BLOCKS[arch]}.0", lambda x: x)
    assert from_tokens["ce_clean"] == pytest.approx(result["ce_clean"], rel=1e-5)
    assert from_tokens["replaced_tokens"] == n_tokens  # no tokenizer: nothing is known to be special


def test_transcoder_reads_the_mlp_input_and_replaces_its_output(lm):
    arch, model, tokenizer = lm
    mlp = f"{BLOCKS[arch]}.1.mlp"
    exact = copy.deepcopy(model.get_submodule(mlp))  # a perfect transcoder: the MLP itself
    result = splice_metrics(model, tokenizer, TEXTS, mlp, exact, input_module=f"{mlp}:input", batch_size=8)
    assert result["ce_loss_recovered"] == pytest.approx(1.0, abs=1e-4) and result["kl_div"] < 1e-8
    zero = splice_metrics(model, tokenizer, TEXTS, mlp, torch.zeros_like, input_module=f"{mlp}:input")
    assert zero["ce_loss_recovered"] == pytest.approx(0.0, abs=1e-6)


def test_bad_splice_arguments(lm):
    arch, model, tokenizer = lm
    block = f"{BLOCKS[arch]}.1"
    with pytest.raises(ShapeError, match=r"the dictionary returned \[.*, 7\]"):
        splice_metrics(model, tokenizer, TEXTS[:2], block, lambda x: x[:, :7])
    with pytest.raises(ConfigError, match="must name a module output"):
        splice_metrics(model, tokenizer, TEXTS[:2], f"{block}:input", lambda x: x)
    with pytest.raises(ConfigError, match="did you mean"):
        splice_metrics(model, tokenizer, TEXTS[:2], f"{block}.mlpp", lambda x: x)
    with pytest.raises(ConfigError, match="did not run before"):
        splice_metrics(model, tokenizer, TEXTS[:2], f"{BLOCKS[arch]}.0", lambda x: x, input_module=block)
