"""Anchor discovery (train.discovery) on planted directions, and anchors files (train.anchoring)."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from conftest import tiny_values
from sdlkit.config import run_config
from sdlkit.errors import ConfigError
from sdlkit.io import sha256
from sdlkit.train.anchoring import Anchors, load_anchors, matched_features, save_anchors
from sdlkit.train.discovery import discover_anchors

D, L = 16, 12


def planted_runs(n_runs: int = 3, shared: int = 5, seed: int = 0, partial: int = 0):
    """Runs whose decoders hold `shared` planted unit directions (plus 1% noise) among random columns,
    each run shuffling and sign-flipping its latents (encoder rows = decoder columns, like a tied SAE).
    `partial` more directions are planted in runs 0 and 1 only. Returns (encoders, decoders, planted)."""
    gen = torch.Generator().manual_seed(seed)
    planted = torch.nn.functional.normalize(torch.randn(D, shared + partial, generator=gen), dim=0)
    encoders, decoders = [], []
    for r in range(n_runs):
        W = torch.randn(D, L, generator=gen)
        k = shared + (partial if r < 2 else 0)
        W[:, :k] = planted[:, :k] + 0.01 * torch.randn(D, k, generator=gen)
        perm = torch.randperm(L, generator=gen)
        signs = torch.where(torch.rand(L, generator=gen) < 0.5, -1.0, 1.0)
        W = W[:, perm] * signs
        decoders.append(W)
        encoders.append(W.T.clone())
    return encoders, decoders, planted


def best_cos(found: torch.Tensor, planted: torch.Tensor) -> torch.Tensor:
    """For every found direction (columns), its best |cos| with a planted one."""
    return (torch.nn.functional.normalize(found, dim=0).T @ planted).abs().max(1).values


def test_discovery_finds_exactly_the_planted_directions():
    encoders, decoders, planted = planted_runs()
    found = discover_anchors(encoders, decoders, threshold=0.9)
    assert found.anchors.k == 5
    assert (best_cos(found.anchors.B, planted) > 0.999).all()
    assert (best_cos(found.anchors.A.T, planted) > 0.999).all()  # encoder rows, sign-aligned and averaged
    assert found.support.tolist() == [3] * 5 and (found.agreement > 0.99).all()
    assert found.agreement.tolist() == sorted(found.agreement.tolist(), reverse=True)
    # each anchor names its reference latent, which is that planted direction in run 0
    own = torch.nn.functional.normalize(decoders[0][:, found.latent], dim=0)
    assert ((own * found.anchors.B).sum(0).abs() > 0.999).all()
    assert found.anchors.indices == []


def test_min_runs_and_count():
    encoders, decoders, planted = planted_runs(partial=2)  # 2 more directions in runs 0 and 1 only
    assert discover_anchors(encoders, decoders).anchors.k == 5
    loose = discover_anchors(encoders, decoders, min_runs=2)
    assert loose.anchors.k == 7 and (best_cos(loose.anchors.B, planted) > 0.999).all()
    assert loose.support.tolist() == [3] * 5 + [2] * 2  # the directions all runs share rank first
    assert discover_anchors(encoders, decoders, min_runs=2, count=3).anchors.k == 3


def test_no_agreement_between_random_runs():
    gen = torch.Generator().manual_seed(0)
    decoders = [torch.randn(D, L, generator=gen) for _ in range(3)]
    assert discover_anchors([d.T for d in decoders], decoders).anchors.k == 0


def test_discovery_refuses_bad_inputs():
    encoders, decoders, _ = planted_runs()
    with pytest.raises(ConfigError, match="at least two runs"):
        discover_anchors(encoders[:1], decoders[:1])
    with pytest.raises(ConfigError, match="min_runs"):
        discover_anchors(encoders, decoders, min_runs=4)
    with pytest.raises(ConfigError, match="threshold"):
        discover_anchors(encoders, decoders, threshold=1.5)


def test_anchors_file_round_trip(tmp_path):
    encoders, decoders, _ = planted_runs()
    found = discover_anchors(encoders, decoders)
    path = save_anchors(tmp_path / "a.safetensors", found.anchors, found.extra(), {"runs": ["x", "y", "z"]})
    with safe_open(str(path), "pt") as handle:
        meta = handle.metadata()
        assert sorted(handle.keys()) == ["A", "B", "agreement", "latent", "run", "support"]
    assert meta["format"] == "sdlkit-anchors" and json.loads(meta["provenance"]) == {"runs": ["x", "y", "z"]}
    loaded = load_anchors(path)
    assert torch.allclose(loaded.A, found.anchors.A, atol=1e-6) and torch.allclose(loaded.B, found.anchors.B, atol=1e-6)
    assert load_anchors(path, count=2).k == 2
    assert load_anchors(path, digest=sha256(path)).k == 5
    assert not list(tmp_path.glob(".*tmp"))  # the atomic write left no temporary


def test_a_file_with_only_B_anchors_an_sae(tmp_path):
    B = torch.nn.functional.normalize(torch.randn(D, 3), dim=0)
    save_file({"B": B * 2}, str(tmp_path / "b.safetensors"))
    anchors = load_anchors(tmp_path / "b.safetensors")
    assert torch.allclose(anchors.B, B, atol=1e-6) and torch.allclose(anchors.A, B.T, atol=1e-6)


@pytest.mark.parametrize(
    ("tensors", "kwargs", "match"),
    [
        ({"A": torch.ones(2, 4)}, {}, "holds no tensor 'B'"),
        ({"A": torch.ones(3, 4), "B": torch.ones(4, 2)}, {}, "must be [k, n_in] and [n_out, k]"),
        ({"B": torch.zeros(4, 2)}, {}, "zero, NaN or inf"),
        ({"B": torch.ones(4, 2)}, {"count": 3}, "holds 2 directions"),
        ({"B": torch.ones(4, 2)}, {"digest": "0" * 64}, "changed since this run started"),
    ],
)
def test_bad_anchors_files_are_one_line_errors(tmp_path, tensors, kwargs, match):
    path = tmp_path / "bad.safetensors"
    save_file(tensors, str(path))
    with pytest.raises(ConfigError, match=match.replace("[", r"\[").replace("]", r"\]")) as info:
        load_anchors(path, **kwargs)
    assert "\n" not in str(info.value)


def test_missing_and_unreadable_files(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_anchors(tmp_path / "none.safetensors")
    (tmp_path / "text.safetensors").write_text("not tensors")
    with pytest.raises(ConfigError, match="not a readable safetensors file"):
        load_anchors(tmp_path / "text.safetensors")


def test_matched_features_pairs_anchors_with_features_one_to_one():
    W = torch.nn.functional.normalize(torch.randn(D, 6, generator=torch.Generator().manual_seed(0)), dim=0)
    anchors = Anchors(W[:, [4, 1]].T, -W[:, [4, 1]] + 0.01, [])
    assert matched_features(anchors, W) == [1, 4]


@pytest.mark.parametrize(
    "anchors",
    [{"count": 2, "source": "file"}, {"count": 2, "file": "a.safetensors"}, {"count": 2, "file_sha256": "ab"}],
)
def test_the_config_names_a_file_exactly_when_the_source_is_file(anchors):
    with pytest.raises(ConfigError, match="train.anchors.file"):
        run_config(tiny_values(anchors=anchors))


def test_a_trainer_built_in_python_takes_the_configs_anchors_file(tmp_path):
    """train.anchors.source = file reaches the Trainer itself, not only the CLI: hard anchors pin the first
    latents' decoder columns to the file's directions."""
    from sdlkit.data import build_source
    from sdlkit.train import Trainer

    B = torch.nn.functional.normalize(torch.randn(20, 3, generator=torch.Generator().manual_seed(0)), dim=0)
    path = tmp_path / "anchors.safetensors"
    save_anchors(path, Anchors(B.T.contiguous(), B.contiguous(), list(range(3))), {}, {"rule": "test"})
    anchors = {"count": 3, "source": "file", "mode": "hard", "file": str(path), "file_sha256": sha256(path)}
    config = run_config(tiny_values(steps=5, anchors=anchors))
    result = Trainer(config, build_source(config.data)).fit()
    torch.testing.assert_close(result.model.W_D.detach()[:, :3], B, atol=1e-6, rtol=0)
    save_anchors(path, Anchors(-B.T.contiguous(), -B.contiguous(), list(range(3))), {}, {"rule": "test"})
    with pytest.raises(ConfigError, match="SHA-256|changed"):  # another file under the recorded name
        Trainer(config, build_source(config.data))
