"""SAELens and sparsify interop: exact round trips, the other libraries' documented forward passes
re-implemented here from their source (not from sdlkit) and run on the written files, and clear errors."""

import json
from typing import ClassVar, Literal

import pytest
import torch
from safetensors.torch import load_file, save_file

import sdlkit
from sdlkit.core.exchange import Exchange, Written
from sdlkit.core.model import ModelConfig, SparseDictionary
from sdlkit.errors import CheckpointError, ConfigError, SdlkitError
from sdlkit.interop import export_checkpoint, import_checkpoint
from sdlkit.methods import METHODS, Activation, MethodConfig

N_IN, N_LATENTS = 12, 24
EXPORT_METHOD_SPECS = {
    "relu": "relu",
    "jumprelu": "jumprelu",
    "topk": {"name": "topk", "k": 5},
    "gated": "gated",
    "batchtopk": {"name": "batchtopk", "k": 5},
    "matryoshka-topk": {"name": "matryoshka", "k": 5, "selection": "topk"},
    "matryoshka-batchtopk": {"name": "matryoshka", "k": 5},
}
"""The method configs every export format is checked on, by case name (the registry is sdlkit.methods.METHODS)."""


def randomised(method, n_in=N_IN, n_out=None, dtype="float64", seed=0, **kw) -> SparseDictionary:
    """A dictionary with every float tensor random (biases and σ's parameters included)."""
    torch.manual_seed(seed)
    model = SparseDictionary(ModelConfig(n_in=n_in, n_out=n_out, n_latents=N_LATENTS, method=method, dtype=dtype, **kw))
    with torch.no_grad():
        for tensor in model.named_tensors().values():
            if tensor.is_floating_point():
                tensor.normal_()
        if hasattr(model.activation, "threshold_initialised"):  # BatchTopK's learned inference threshold
            model.activation.threshold.fill_(1.5)
            model.activation.threshold_initialised.fill_(True)
    return model.eval()


def inputs(n_in=N_IN, dtype=torch.float64, seed=1) -> torch.Tensor:
    return torch.randn(200, n_in, generator=torch.Generator().manual_seed(seed), dtype=dtype) * 2


def saved(model, tmp_path, name="ckpt"):
    return sdlkit.save(model, tmp_path / name)


def assert_sparse(codes: torch.Tensor) -> None:
    """Guard against vacuous comparisons: some codes fire, some do not."""
    active = codes != 0
    assert active.any() and not active.all()


# ----- independent forwards of the other libraries --------------------------------------------------------
def saelens_forward(folder, x):
    """SAELens 6.x inference encode/decode (sae_lens/saes/*_sae.py, transcoder.py): (codes, x_hat)."""
    cfg = json.loads((folder / "cfg.json").read_text())
    w = {k: v.double() for k, v in load_file(str(folder / "sae_weights.safetensors")).items()}
    arch, x = cfg["architecture"], x.double()
    transcoder = "transcoder" in arch
    xc = x if transcoder else x - w["b_dec"] * cfg.get("apply_b_dec_to_input", True)
    decode_scale = 1.0
    if arch == "gated":
        gate = (xc @ w["W_enc"] + w["b_gate"]) > 0
        f = gate * torch.relu(xc @ (w["W_enc"] * w["r_mag"].exp()) + w["b_mag"])
    else:
        h = xc @ w["W_enc"] + w["b_enc"]
        if arch in ("standard", "transcoder"):
            f = torch.relu(h)
        elif arch in ("jumprelu", "jumprelu_transcoder"):
            f = torch.relu(h) * (h > w["threshold"].relu())
        elif arch == "topk":
            if cfg.get("rescale_acts_by_decoder_norm"):
                norms = w["W_dec"].norm(dim=-1)
                h, decode_scale = h * norms, 1 / norms
            values, indices = h.topk(cfg["k"], dim=-1)
            f = torch.zeros_like(h).scatter(-1, indices, values.relu())
        else:
            raise AssertionError(arch)
    return f, (f * decode_scale) @ w["W_dec"] + w["b_dec"]


def sparsify_forward(folder, x):
    """sparsify's SparseCoder.encode/decode (sparse_coder.py, fused_encoder.py): (codes, x_hat)."""
    cfg = json.loads((folder / "cfg.json").read_text())
    w = {k: v.double() for k, v in load_file(str(folder / "sae.safetensors")).items()}
    x = x.double()
    x_in = x if cfg["transcode"] else x - w["b_dec"]
    pre = torch.relu(x_in @ w["encoder.weight"].T + w["encoder.bias"])
    values, indices = pre.topk(cfg["k"], dim=-1)
    f = torch.zeros_like(pre).scatter(-1, indices, values)
    return f, f @ w["W_dec"] + w["b_dec"]


# ----- SAELens: export ------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["relu", "jumprelu", "topk", "gated"])
def test_saelens_round_trip_keeps_codes_and_reconstructions(tmp_path, name):
    model = randomised(EXPORT_METHOD_SPECS[name])
    export_checkpoint(saved(model, tmp_path), tmp_path / "sl", "saelens")
    import_checkpoint(tmp_path / "sl", tmp_path / "back", "saelens")
    back = sdlkit.load(tmp_path / "back").eval()
    assert back.method.name == model.method.name and back.W_E.dtype == torch.float64
    x = inputs()
    codes = model.encode(x)
    assert_sparse(codes)
    torch.testing.assert_close(back.encode(x), codes, atol=1e-6, rtol=0)
    torch.testing.assert_close(back(x).x_hat, model(x).x_hat, atol=1e-6, rtol=0)


@pytest.mark.parametrize("name", list(EXPORT_METHOD_SPECS))
def test_saelens_files_reproduce_the_model_under_saelens_forward(tmp_path, name):
    model = randomised(EXPORT_METHOD_SPECS[name])
    out = export_checkpoint(saved(model, tmp_path), tmp_path / "sl", "saelens", hook_name="blocks.3.hook_resid_post")
    codes, x_hat = saelens_forward(out, inputs())
    assert_sparse(codes)
    torch.testing.assert_close(codes, model.encode(inputs()), atol=1e-6, rtol=0)
    torch.testing.assert_close(x_hat, model(inputs()).x_hat, atol=1e-6, rtol=0)
    cfg = json.loads((out / "cfg.json").read_text())
    expected = {"relu": "standard", "gated": "gated"}.get(name, "topk" if "topk" in name else "jumprelu")
    expected = "jumprelu" if "batchtopk" in name else expected
    assert cfg["architecture"] == expected
    assert (cfg["d_in"], cfg["d_sae"], cfg["dtype"], cfg["apply_b_dec_to_input"]) == (N_IN, N_LATENTS, "float64", False)
    assert cfg["normalize_activations"] == "none" and cfg["metadata"]["hook_name"] == "blocks.3.hook_resid_post"
    weights = load_file(str(out / "sae_weights.safetensors"))
    assert weights["W_enc"].shape == (N_IN, N_LATENTS) and weights["W_dec"].shape == (N_LATENTS, N_IN)


def test_batchtopk_exports_as_jumprelu_with_its_global_threshold(tmp_path):
    model = randomised(EXPORT_METHOD_SPECS["batchtopk"])
    export_checkpoint(saved(model, tmp_path), tmp_path / "sl", "saelens")
    weights = load_file(str(tmp_path / "sl" / "sae_weights.safetensors"))
    assert torch.equal(weights["threshold"], torch.full((N_LATENTS,), 1.5, dtype=torch.float64))
    assert "BatchTopK" in json.loads((tmp_path / "sl" / "cfg.json").read_text())["metadata"]["sdlkit"]["notes"][0]
    import_checkpoint(tmp_path / "sl", tmp_path / "back", "saelens")
    back = sdlkit.load(tmp_path / "back").eval()
    assert back.method.name == "jumprelu"
    x = inputs()
    torch.testing.assert_close(back.encode(x), model.encode(x), atol=1e-6, rtol=0)  # model is in eval mode


def test_float32_dictionary_round_trips_in_float32(tmp_path):
    model = randomised("jumprelu", dtype="float32", bias=False)
    export_checkpoint(saved(model, tmp_path), tmp_path / "sl", "saelens", model_name="gpt2")
    cfg = json.loads((tmp_path / "sl" / "cfg.json").read_text())
    assert cfg["dtype"] == "float32" and cfg["metadata"]["model_name"] == "gpt2"
    assert not load_file(str(tmp_path / "sl" / "sae_weights.safetensors"))["b_enc"].any()  # no bias: zeros
    import_checkpoint(tmp_path / "sl", tmp_path / "back", "saelens")
    back = sdlkit.load(tmp_path / "back").eval()
    x = inputs(dtype=torch.float32)
    assert back.W_E.dtype == torch.float32
    torch.testing.assert_close(back(x).x_hat, model(x).x_hat, atol=1e-5, rtol=1e-6)


@pytest.mark.parametrize("method", ["relu", "jumprelu"])
def test_transcoder_exports_with_d_out(tmp_path, method):
    model = randomised(method, n_out=7)
    out = export_checkpoint(saved(model, tmp_path), tmp_path / "sl", "saelens")
    cfg = json.loads((out / "cfg.json").read_text())
    assert cfg["architecture"] == ("transcoder" if method == "relu" else "jumprelu_transcoder") and cfg["d_out"] == 7
    torch.testing.assert_close(saelens_forward(out, inputs())[1], model(inputs()).x_hat, atol=1e-6, rtol=0)
    import_checkpoint(out, tmp_path / "back", "saelens")
    back = sdlkit.load(tmp_path / "back").eval()
    assert (back.n_in, back.n_out) == (N_IN, 7)
    torch.testing.assert_close(back(inputs()).x_hat, model(inputs()).x_hat, atol=1e-6, rtol=0)


# ----- a method's form is declared by its config alone ----------------------------------------------------
class ShiftedReLU(Activation):
    """σ(z) = ReLU(z − c), c a per-latent offset: SAELens's 'standard' architecture with b_enc = b_E − c."""

    def __init__(self, n_latents: int):
        super().__init__()
        self.offset = torch.nn.Parameter(torch.zeros(n_latents))

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return torch.relu(z - self.offset)


def _write_shifted(config, activation, bias):
    return Written({"b_enc": bias - activation.offset.detach().double()}, notes=["offset folded into b_enc"])


class ShiftedReLUConfig(MethodConfig):
    name: Literal["shifted-relu"] = "shifted-relu"
    exchange: ClassVar[dict[str, Exchange | str]] = {
        "saelens": Exchange("standard", _write_shifted, transcoder="transcoder"),  # read back as relu
        "sparsify": "has a per-latent offset, which sparsify's TopK cannot hold",
    }

    def build_activation(self, n_latents: int) -> Activation:
        return ShiftedReLU(n_latents)


def test_a_new_method_exports_through_its_own_declaration(tmp_path, monkeypatch):
    monkeypatch.setitem(METHODS, "shifted-relu", ShiftedReLUConfig)  # registered here; interop is untouched
    model = randomised({"name": "shifted-relu"})
    out = export_checkpoint(saved(model, tmp_path), tmp_path / "sl", "saelens")
    cfg = json.loads((out / "cfg.json").read_text())
    assert cfg["architecture"] == "standard" and cfg["metadata"]["sdlkit"]["notes"] == ["offset folded into b_enc"]
    codes, x_hat = saelens_forward(out, inputs())
    assert_sparse(codes)
    torch.testing.assert_close(codes, model.encode(inputs()), atol=1e-6, rtol=0)
    torch.testing.assert_close(x_hat, model(inputs()).x_hat, atol=1e-6, rtol=0)
    import_checkpoint(out, tmp_path / "back", "saelens")
    assert sdlkit.load(tmp_path / "back").method.name == "relu"
    with pytest.raises(ConfigError, match="this shifted-relu dictionary has a per-latent offset"):
        export_checkpoint(saved(model, tmp_path), tmp_path / "sp", "sparsify")


# ----- SAELens: import of folders written by hand -------------------------------------------------------
def write_saelens(folder, cfg, tensors):
    folder.mkdir(parents=True)
    (folder / "cfg.json").write_text(json.dumps(cfg))
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(folder / "sae_weights.safetensors"))


def saelens_tensors(arch, d_in=N_IN, d_sae=N_LATENTS, seed=2):
    g = torch.Generator().manual_seed(seed)
    tensors = {
        "W_enc": torch.randn(d_in, d_sae, generator=g, dtype=torch.float64),
        "W_dec": torch.randn(d_sae, d_in, generator=g, dtype=torch.float64),
        "b_dec": torch.randn(d_in, generator=g, dtype=torch.float64),
    }
    if arch == "gated":
        for name in ("b_gate", "r_mag", "b_mag"):
            tensors[name] = torch.randn(d_sae, generator=g, dtype=torch.float64)
    else:
        tensors["b_enc"] = torch.randn(d_sae, generator=g, dtype=torch.float64)
    if arch == "jumprelu":
        tensors["threshold"] = torch.rand(d_sae, generator=g, dtype=torch.float64) * 3 + 0.1
    return tensors


CASES = {
    "standard": {"architecture": "standard"},
    "jumprelu": {"architecture": "jumprelu"},
    "topk-rescaled": {"architecture": "topk", "k": 6, "rescale_acts_by_decoder_norm": True},
    "gated": {"architecture": "gated"},
}


@pytest.mark.parametrize("case", list(CASES))
def test_saelens_folder_with_apply_b_dec_to_input_imports_exactly(tmp_path, case):
    cfg = {
        **CASES[case],
        "d_in": N_IN,
        "d_sae": N_LATENTS,
        "dtype": "float64",
        "apply_b_dec_to_input": True,
        "normalize_activations": "none",
        "metadata": {"sae_lens_version": "6.5.0", "hook_name": "blocks.0.hook_resid_pre"},
    }
    write_saelens(tmp_path / "sae", cfg, saelens_tensors(cfg["architecture"]))
    import_checkpoint(tmp_path / "sae", tmp_path / "ckpt", "saelens")
    model = sdlkit.load(tmp_path / "ckpt").eval()
    codes, x_hat = saelens_forward(tmp_path / "sae", inputs())
    assert_sparse(codes)
    torch.testing.assert_close(model.encode(inputs()), codes, atol=1e-6, rtol=0)
    torch.testing.assert_close(model(inputs()).x_hat, x_hat, atol=1e-6, rtol=0)
    recorded = json.loads((tmp_path / "ckpt" / "config.json").read_text())["imported"]
    assert recorded["source_config"]["metadata"]["hook_name"] == "blocks.0.hook_resid_pre"
    assert any("apply_b_dec_to_input" in note for note in recorded["notes"])


def test_pre_6_config_with_topk_activation_fn_imports(tmp_path):
    cfg = {  # SAELens < 6: hook_point, activation_fn_str, k in activation_fn_kwargs, apply_b_dec_to_input implied
        "architecture": "standard",
        "d_in": N_IN,
        "d_sae": N_LATENTS,
        "dtype": "torch.float64",
        "hook_point": "blocks.2.hook_resid_post",
        "activation_fn_str": "topk",
        "activation_fn_kwargs": {"k": 4},
        "normalize_activations": False,
    }
    write_saelens(tmp_path / "old", cfg, saelens_tensors("standard"))
    import_checkpoint(tmp_path / "old", tmp_path / "ckpt", "saelens")
    model = sdlkit.load(tmp_path / "ckpt").eval()
    assert model.method.name == "topk" and model.method.k == 4
    expected = {**cfg, "architecture": "topk", "k": 4, "apply_b_dec_to_input": True}
    (tmp_path / "old" / "cfg.json").write_text(json.dumps(expected))
    torch.testing.assert_close(model(inputs()).x_hat, saelens_forward(tmp_path / "old", inputs())[1], atol=1e-6, rtol=0)


def test_older_jumprelu_files_with_log_threshold_import(tmp_path):
    tensors = saelens_tensors("jumprelu")
    cfg = {"architecture": "jumprelu", "d_in": N_IN, "d_sae": N_LATENTS, "apply_b_dec_to_input": False}
    write_saelens(tmp_path / "new", cfg, tensors)
    older = {name: tensor for name, tensor in tensors.items() if name != "threshold"}
    write_saelens(tmp_path / "old", cfg, {**older, "log_threshold": tensors["threshold"].log()})
    import_checkpoint(tmp_path / "old", tmp_path / "ckpt", "saelens")
    model = sdlkit.load(tmp_path / "ckpt").eval()
    assert model.W_E.dtype == torch.float32  # cfg.json gives no dtype: SAELens's default
    codes, x_hat = saelens_forward(tmp_path / "new", inputs())
    assert_sparse(codes)
    torch.testing.assert_close(model(inputs().float()).x_hat.double(), x_hat, atol=1e-4, rtol=1e-5)


# ----- sparsify -------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["topk", "matryoshka-topk"])
def test_sparsify_round_trip_and_sparsify_forward(tmp_path, name):
    model = randomised(EXPORT_METHOD_SPECS[name])
    out = export_checkpoint(saved(model, tmp_path), tmp_path / "layers.3", "sparsify")
    cfg = json.loads((out / "cfg.json").read_text())
    assert (cfg["d_in"], cfg["num_latents"], cfg["k"], cfg["transcode"]) == (N_IN, N_LATENTS, 5, False)
    codes, x_hat = sparsify_forward(out, inputs())
    assert_sparse(codes)
    torch.testing.assert_close(codes, model.encode(inputs()), atol=1e-6, rtol=0)
    torch.testing.assert_close(x_hat, model(inputs()).x_hat, atol=1e-6, rtol=0)
    import_checkpoint(tmp_path / "layers.3", tmp_path / "back", "sparsify")
    back = sdlkit.load(tmp_path / "back").eval()
    torch.testing.assert_close(back.encode(inputs()), model.encode(inputs()), atol=1e-6, rtol=0)
    torch.testing.assert_close(back(inputs()).x_hat, model(inputs()).x_hat, atol=1e-6, rtol=0)


def write_sparsify(folder, transcode=False, skip=None, d_in=N_IN, seed=3):
    g = torch.Generator().manual_seed(seed)
    folder.mkdir(parents=True)
    cfg = {"activation": "topk", "expansion_factor": 2, "normalize_decoder": True, "num_latents": 0, "k": 4}
    cfg.update({"multi_topk": False, "skip_connection": skip is not None, "transcode": transcode, "d_in": d_in})
    (folder / "cfg.json").write_text(json.dumps(cfg))
    tensors = {
        "encoder.weight": torch.randn(2 * d_in, d_in, generator=g),
        "encoder.bias": torch.randn(2 * d_in, generator=g),
        "W_dec": torch.randn(2 * d_in, d_in, generator=g),
        "b_dec": torch.randn(d_in, generator=g),
    }
    if skip is not None:
        tensors["W_skip"] = skip
    save_file(tensors, str(folder / "sae.safetensors"))


@pytest.mark.parametrize("transcode", [False, True])
def test_sparsify_folder_imports_exactly(tmp_path, transcode):
    write_sparsify(tmp_path / "sae" / "layers.0", transcode=transcode, skip=torch.zeros(N_IN, N_IN))
    import_checkpoint(tmp_path / "sae", tmp_path / "ckpt", "sparsify")  # parent with one hook point: found
    model = sdlkit.load(tmp_path / "ckpt").eval()
    assert model.W_E.dtype == torch.float32 and model.n_latents == 2 * N_IN
    x = inputs(dtype=torch.float32)
    codes, x_hat = sparsify_forward(tmp_path / "sae" / "layers.0", x)
    assert_sparse(codes)
    torch.testing.assert_close(model(x).x_hat.double(), x_hat, atol=1e-5, rtol=1e-5)
    export_checkpoint(tmp_path / "ckpt", tmp_path / "again", "sparsify")  # the kind survives the trip
    assert json.loads((tmp_path / "again" / "cfg.json").read_text())["transcode"] is transcode


# ----- errors ---------------------------------------------------------------------------------------------
def test_unknown_format_lists_the_known_ones(tmp_path):
    path = saved(randomised("relu"), tmp_path)
    with pytest.raises(ConfigError, match="unknown checkpoint format 'dictlearn'; known formats: saelens, sparsify"):
        export_checkpoint(path, tmp_path / "out", "dictlearn")
    with pytest.raises(ConfigError, match="known formats: saelens, sparsify"):
        import_checkpoint(tmp_path, tmp_path / "out", "dictlearn")


def test_missing_and_misshaped_files_are_named(tmp_path):
    write_sparsify(tmp_path / "sp")
    with pytest.raises(CheckpointError, match=r"sae_weights\.safetensors is missing; .*use --format sparsify"):
        import_checkpoint(tmp_path / "sp", tmp_path / "a", "saelens")
    (tmp_path / "nothing").mkdir()
    with pytest.raises(CheckpointError, match="is not a SAELens checkpoint: cfg.json is missing"):
        import_checkpoint(tmp_path / "nothing", tmp_path / "a", "saelens")
    tensors = saelens_tensors("standard")
    tensors["W_enc"] = tensors["W_enc"][:, :-1]
    write_saelens(tmp_path / "bad", {"architecture": "standard", "d_in": N_IN, "d_sae": N_LATENTS}, tensors)
    with pytest.raises(CheckpointError, match=r"tensor W_enc has shape \[12, 23\] but cfg.json .* needs \[12, 24\]"):
        import_checkpoint(tmp_path / "bad", tmp_path / "a", "saelens")
    assert not (tmp_path / "a").exists()


@pytest.mark.parametrize("fmt", ["saelens", "sparsify"])
def test_crosscoder_export_is_refused(tmp_path, fmt):
    model = randomised({"name": "topk", "k": 3}, in_blocks=[6, 6], out_blocks=[6, 6])
    with pytest.raises(ConfigError, match=f"crosscoder cannot be exported to {'SAELens' if fmt == 'saelens' else fmt}"):
        export_checkpoint(saved(model, tmp_path), tmp_path / "out", fmt)


@pytest.mark.parametrize(("name", "message"), [("relu", "TopK dictionaries only"), ("batchtopk", "--format saelens")])
def test_non_topk_to_sparsify_is_refused(tmp_path, name, message):
    with pytest.raises(ConfigError, match=message):
        export_checkpoint(saved(randomised(EXPORT_METHOD_SPECS[name]), tmp_path), tmp_path / "out", "sparsify")


def test_topk_transcoder_to_saelens_is_refused(tmp_path):
    model = randomised(EXPORT_METHOD_SPECS["topk"], n_out=7)
    with pytest.raises(ConfigError, match="SAELens has no topk transcoder"):
        export_checkpoint(saved(model, tmp_path), tmp_path / "out", "saelens")


def test_unrepresentable_saelens_files_are_refused(tmp_path):
    base = {"d_in": N_IN, "d_sae": N_LATENTS, "apply_b_dec_to_input": False}
    write_saelens(tmp_path / "norm", {**base, "architecture": "standard", "normalize_activations": "layer_norm"},
                  saelens_tensors("standard"))  # fmt: skip
    with pytest.raises(CheckpointError, match="normalize_activations = 'layer_norm' rescales inputs at run time"):
        import_checkpoint(tmp_path / "norm", tmp_path / "a", "saelens")
    tensors = saelens_tensors("jumprelu")
    tensors["threshold"][:3] = 0
    write_saelens(tmp_path / "zero", {**base, "architecture": "jumprelu"}, tensors)
    with pytest.raises(CheckpointError, match="3 of 24 JumpReLU thresholds are <= 0"):
        import_checkpoint(tmp_path / "zero", tmp_path / "a", "saelens")
    write_saelens(tmp_path / "temporal", {**base, "architecture": "temporal"}, saelens_tensors("standard"))
    with pytest.raises(CheckpointError, match="architecture 'temporal' cannot be imported; supported: gated, jumprelu"):
        import_checkpoint(tmp_path / "temporal", tmp_path / "a", "saelens")
    write_saelens(tmp_path / "extra", {**base, "architecture": "standard"}, {**saelens_tensors("jumprelu")})
    with pytest.raises(CheckpointError, match=r"holds tensors \['threshold'\]"):
        import_checkpoint(tmp_path / "extra", tmp_path / "a", "saelens")


def test_sparsify_skip_connection_and_several_hook_points_are_refused(tmp_path):
    write_sparsify(tmp_path / "skip", skip=torch.eye(N_IN))
    with pytest.raises(CheckpointError, match="W_skip is non-zero"):
        import_checkpoint(tmp_path / "skip", tmp_path / "a", "sparsify")
    write_sparsify(tmp_path / "many" / "layers.1")
    write_sparsify(tmp_path / "many" / "layers.0")
    with pytest.raises(CheckpointError, match=r"holds 2 sparsify dictionaries \(layers.0, layers.1\): give one"):
        import_checkpoint(tmp_path / "many", tmp_path / "a", "sparsify")
    import_checkpoint(tmp_path / "many" / "layers.1", tmp_path / "a", "sparsify")


def test_output_folder_is_not_replaced_without_overwrite(tmp_path):
    path = saved(randomised("relu"), tmp_path)
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "keep.txt").write_text("mine")
    with pytest.raises(ConfigError, match="is not empty: pass --overwrite"):
        export_checkpoint(path, tmp_path / "busy", "saelens")
    with pytest.raises(ConfigError, match="would replace the input"):
        export_checkpoint(path, path, "saelens", overwrite=True)
    with pytest.raises(SdlkitError, match="refusing to overwrite .*busy: it is not sdlkit's"):  # not an export
        export_checkpoint(path, tmp_path / "busy", "saelens", overwrite=True)
    assert (tmp_path / "busy" / "keep.txt").read_text() == "mine"
    export_checkpoint(path, tmp_path / "export", "saelens")
    export_checkpoint(path, tmp_path / "export", "saelens", overwrite=True)  # an export replaces an export
    assert sorted(p.name for p in (tmp_path / "export").iterdir()) == [".sdlkit", "cfg.json", "sae_weights.safetensors"]
