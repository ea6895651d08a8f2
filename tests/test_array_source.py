"""Arrays in: `data: {kind: array}` over .npy, .safetensors and .pt files, and from Python a tensor in memory or
batches (sdlkit.train.fit): the same rows give the same batches, held-out rows stay out, normalisation folds back,
resume is exact, provenance is honest, and bad input is one line."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from safetensors.torch import save_file

import sdlkit
from sdlkit.cli.main import main
from sdlkit.config import run_config
from sdlkit.data import build_source
from sdlkit.data.array import ArraySource, BatchesSource, TensorSource, batches_config, tensor_config
from sdlkit.errors import CheckpointError, ConfigError, ShapeError, StoreError
from sdlkit.train import Trainer, fit

N, WIDTH, EVAL = 600, 16, 100


def activations(seed: int = 0, n: int = N, width: int = WIDTH) -> torch.Tensor:
    return torch.randn(n, width, generator=torch.Generator().manual_seed(seed))


def save(x: torch.Tensor, path: Path) -> Path:
    """`x` as a .npy, a .safetensors (beside another tensor: a key is needed) or a .pt (a bare tensor)."""
    if path.suffix == ".npy":
        np.save(path, x.numpy())
    elif path.suffix == ".safetensors":
        save_file({"acts": x.contiguous(), "other": torch.zeros(3, 2)}, str(path))
    else:
        torch.save(x, path)
    return path


def values(path: Path | None = None, key: str | None = None, steps: int = 20, **data) -> dict:
    section = {"kind": "array", "path": str(path), "key": key, "eval_rows": EVAL, "shuffle_buffer": 128, **data}
    return {
        "data": section if path is not None else {k: v for k, v in data.items()},
        "model": {"n_latents": 32, "method": {"name": "topk", "k": 3}},
        "train": {"steps": steps, "batch_size": 32, "lr": 3e-3, "lr_decay": "none", "progress": False, "log_every": 10},
    }


def with_train(vals: dict, **train) -> dict:
    return {**vals, "train": {**vals["train"], **train}}


def weights_equal(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for name in a:
        assert torch.equal(a[name], b[name]), name


# ----- the three formats -----------------------------------------------------------------------------------
def test_three_formats_and_a_tensor_give_the_same_batches_and_the_same_dictionary(tmp_path):
    x = activations()
    files = {
        "npy": (save(x, tmp_path / "a.npy"), None),
        "safetensors": (save(x, tmp_path / "a.safetensors"), "acts"),
        "safetensors [B, T, D]": (save(x.reshape(30, 20, WIDTH), tmp_path / "b.safetensors"), "acts"),
        "pt": (save(x, tmp_path / "a.pt"), None),
    }
    torch.save({"acts": x, "step": torch.tensor(3)}, tmp_path / "d.pt")
    files["pt dict"] = (tmp_path / "d.pt", "acts")
    sources = {name: build_source(run_config(values(path, key=key)).data) for name, (path, key) in files.items()}
    sources["tensor"] = TensorSource(tensor_config(x, eval_rows=EVAL, shuffle_buffer=128), x=x)
    reference = sources.pop("npy")
    expected = [reference.batch(i, 32).x_p for i in range(40)]  # 1,280 rows: over two epochs of 500
    assert torch.equal(reference.eval_batch().x_p, x[-EVAL:])
    for name, source in sources.items():
        assert all(torch.equal(source.batch(i, 32).x_p, expected[i]) for i in range(40)), name
        assert torch.equal(source.eval_batch().x_p, x[-EVAL:]), name
    trained = {}
    for name in ("npy", "safetensors", "pt"):  # one training run per format: the same batches, the same weights
        config = run_config(values(*files[name]))
        trained[name] = Trainer(config, build_source(config.data)).fit()
        assert trained[name].steps == 20 and trained[name].metrics["fvu"] < 1.0
        weights_equal(trained[name].model.named_tensors(), trained["npy"].model.named_tensors())


def test_held_out_rows_never_reach_training_and_each_epoch_is_a_permutation(tmp_path):
    x = torch.zeros(N, 4)
    x[:, 0] = torch.arange(N, dtype=torch.float32)
    source = build_source(run_config(values(save(x, tmp_path / "ids.npy"), seed=3)).data)
    ids = torch.cat([source.batch(i, 50).x_p[:, 0] for i in range(30)]).long()  # three epochs of 500 rows
    train = N - EVAL
    for epoch in range(3):
        assert sorted(ids[epoch * train : (epoch + 1) * train].tolist()) == list(range(train))
    assert not torch.equal(ids[:train], torch.arange(train))  # shuffled
    assert not torch.equal(ids[:train], ids[train : 2 * train])  # differently each epoch
    assert torch.equal(source.eval_batch().x_p[:, 0].long(), torch.arange(train, N))


def test_a_transcoder_pair_reads_x_r_row_for_row_and_normalises_each_side(tmp_path):
    x_p = activations()
    M = torch.randn(WIDTH, 8, generator=torch.Generator().manual_seed(1))
    x_r = 3 * x_p @ M
    inputs, targets = save(x_p, tmp_path / "in.npy"), save(x_r, tmp_path / "out.pt")
    config = run_config(values(inputs, targets=str(targets), normalize=True))
    assert (config.model.n_in, config.model.n_out) == (WIDTH, 8)
    source = build_source(config.data)
    s_in = x_p[: N - EVAL].double().pow(2).sum(1).mean().item() ** -0.5
    s_out = x_r[: N - EVAL].double().pow(2).sum(1).mean().item() ** -0.5
    assert source.in_scales == pytest.approx([s_in], rel=1e-12) and source.out_scales == pytest.approx([s_out])
    batch = source.batch(3, 64)
    torch.testing.assert_close(batch.x_r / s_out, (batch.x_p / s_in) @ M * 3, rtol=1e-4, atol=1e-4)
    result = Trainer(config, source, tmp_path / "run").fit()
    saved = sdlkit.load(result.checkpoint)  # folded: reads raw x_p, reconstructs raw x_r
    with torch.no_grad():
        torch.testing.assert_close(saved(x_p).x_hat, result.model(x_p * s_in).x_hat / s_out, rtol=1e-4, atol=1e-4)
    short = save(x_r[:-1], tmp_path / "short.npy")
    with pytest.raises(ShapeError, match="has 599 rows but .* has 600; x_p and x_r must be row for row"):
        build_source(run_config(values(inputs, targets=str(short))).data)


def test_normalised_weights_fold_back_to_raw_rows(tmp_path):
    x = 7 * activations()
    config = run_config(values(save(x, tmp_path / "a.npy"), normalize=True))
    source = build_source(config.data)
    scale = source.in_scales[0]
    assert scale == pytest.approx(x[: N - EVAL].double().pow(2).sum(1).mean().item() ** -0.5, rel=1e-12)
    result = Trainer(config, source, tmp_path / "run").fit()
    saved = sdlkit.load(result.checkpoint)
    with torch.no_grad():
        raw, scaled = saved(x[-EVAL:]), result.model(x[-EVAL:] * scale)
        assert torch.equal(raw.x_q != 0, scaled.x_q != 0)
        torch.testing.assert_close(raw.x_hat, scaled.x_hat / scale, rtol=1e-4, atol=1e-4)
    assert json.loads((result.checkpoint / "config.json").read_text())["normalization"]["in_scales"] == [scale]


def test_a_large_file_is_normalised_from_64_evenly_spaced_blocks(tmp_path, monkeypatch):
    monkeypatch.setattr("sdlkit.data.array.source.NORM_SAMPLE_ROWS", 640)  # blocks of 10 rows
    x = activations(n=2000) * torch.linspace(0.5, 4, 2000)[:, None]
    source = build_source(run_config(values(save(x, tmp_path / "a.npy"), normalize=True)).data)
    stop = 2000 - EVAL
    sample = torch.cat([x[stop * i // 64 : stop * i // 64 + 10] for i in range(64)])
    assert source.in_scales[0] == pytest.approx(sample.double().pow(2).sum(1).mean().item() ** -0.5, rel=1e-12)


# ----- the command line: a run, its record and exact resume ---------------------------------------------------
def test_cli_trains_on_a_relative_path_records_it_absolute_and_resumes_exactly(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    save(activations(), tmp_path / "acts.npy")
    vals = values(Path("acts.npy"))
    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump(with_train(vals, checkpoint_every=10)))
    assert main(["train", "--config", str(config), "--out", "full"]) == 0
    run = json.loads(
        next((tmp_path / "full" / "checkpoints").glob("step-00000020")).joinpath("config.json").read_text()
    )
    assert run["run"]["data"]["path"] == str(tmp_path / "acts.npy")
    assert len(run["run"]["data"]["fingerprint"]) == 64
    assert main(["info", "full"]) == 0
    assert f"data: array {tmp_path / 'acts.npy'}" in capsys.readouterr().out

    assert main(["train", "--config", str(config), "--out", "split", "--set", "train.steps=10"]) == 0
    save(activations(seed=1), tmp_path / "acts.npy")  # the file changes under the run: resume is refused
    capsys.readouterr()
    assert main(["train", "--config", str(config), "--out", "split", "--resume"]) == 2
    err = capsys.readouterr().err
    assert "data.fingerprint" in err and len(err.strip().splitlines()) == 1
    save(activations(), tmp_path / "acts.npy")
    assert main(["train", "--config", str(config), "--out", "split", "--resume"]) == 0
    weights_equal(sdlkit.load(tmp_path / "full").named_tensors(), sdlkit.load(tmp_path / "split").named_tensors())


def test_a_config_that_records_a_fingerprint_refuses_a_changed_file(tmp_path):
    path = save(activations(), tmp_path / "a.npy")
    recorded = run_config(values(path)).data
    save(activations(seed=1), path)
    with pytest.raises(StoreError, match=r"data.path: .*a.npy has changed since this config recorded it"):
        ArraySource(recorded)


# ----- bad input: one line each ---------------------------------------------------------------------------------
class Opaque:
    """Not loadable with weights_only=True."""


@pytest.mark.parametrize(
    ("name", "content", "match"),
    [
        ("text.npy", b"rows,of,text\n", r"a/text.npy is not a .npy file \(no NumPy header\); save it with numpy.save"),
        ("ints.npy", np.arange(64).reshape(8, 8), "has dtype int64; activations must be float16, float32 or float64"),
        ("flat.npy", np.zeros(8, np.float32), r"has shape \[8\]; activations are \[rows, width\]"),
        ("meta.pt", {"lr": 1e-3, "name": "run"}, "meta.pt holds no tensors"),
        ("list.pt", [torch.zeros(2, 2)], "holds a list, not a tensor: torch.save the tensor itself"),
        ("object.pt", Opaque(), "is not a tensor saved with torch.save that loads with weights_only=True"),
        ("two.safetensors", None, r"holds several tensors \(acts, other\): say which with key"),
        ("a.csv", b"1,2\n", r"is not a .npy, .safetensors, .pt file; save your array as one of those"),
        ("missing.npy", ..., "is not a file"),
    ],
)
def test_a_file_that_is_not_an_array_is_refused_with_one_line(tmp_path, capsys, name, content, match):
    folder = tmp_path / "a"
    folder.mkdir()
    path = folder / name
    if isinstance(content, bytes):
        path.write_bytes(content)
    elif isinstance(content, np.ndarray):
        np.save(path, content)
    elif content is None:
        save(activations(), path)
    elif content is not ...:
        torch.save(content, path)
    with pytest.raises(ConfigError, match=match):
        run_config(values(path))
    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump(values(path)))
    assert main(["train", "--config", str(config), "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err


def test_a_nan_row_is_named_by_its_index(tmp_path, capsys):
    x = activations()
    x[123, 5] = float("nan")
    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump(values(save(x, tmp_path / "a.npy"))))
    assert main(["train", "--config", str(config), "--out", str(tmp_path / "run")]) == 2
    assert (
        capsys.readouterr()
        .err.strip()
        .endswith(f"{tmp_path / 'a.npy'}: row 123 holds NaN or inf; clean or drop it before training")
    )
    x[123, 5], x[40, 0] = 0.0, float("inf")  # found before training when normalising
    with pytest.raises(StoreError, match="row 40 holds NaN or inf"):
        build_source(run_config(values(save(x, tmp_path / "b.npy"), normalize=True)).data)
    x[40, 0], x[550, 1] = 0.0, float("nan")  # a held-out row: named before training too
    with pytest.raises(StoreError, match="row 550 holds NaN or inf"):
        build_source(run_config(values(save(x, tmp_path / "c.npy"))).data)


def test_wrong_widths_and_store_shorthand_are_refused(tmp_path):
    path = save(activations(), tmp_path / "acts.npy")
    with pytest.raises(ConfigError, match="model.n_in = 32 but the data gives 16: leave it out or make them agree"):
        run_config({**values(path), "model": {"n_in": 32, "n_latents": 32, "method": {"name": "topk", "k": 3}}})
    with pytest.raises(ConfigError, match=r"data.store = .* an array file is not a store folder; train on it with "):
        run_config({**values(path), "data": {"store": str(path)}})
    with pytest.raises(ConfigError, match="data.eval_rows = 600 leaves no training rows"):
        build_source(run_config(values(path, eval_rows=N)).data)
    with pytest.raises(ShapeError, match="the data gives n_in=16, n_out=16 but model has n_in=8"):
        Trainer(
            run_config(values(save(activations(width=8), tmp_path / "narrow.npy"))),
            build_source(run_config(values(path)).data),
        )


# ----- from Python: a tensor, batches ---------------------------------------------------------------------------
def test_fit_on_a_tensor_records_it_trains_as_its_file_and_resumes_exactly(tmp_path, capsys):
    x = activations()
    settings = {"eval_rows": EVAL, "shuffle_buffer": 128}
    vals = with_train(values(None, **settings), checkpoint_every=10)
    full = fit(x, vals, tmp_path / "full")
    on_file = Trainer(
        run_config(values(save(x, tmp_path / "a.npy"))), build_source(run_config(values(tmp_path / "a.npy")).data)
    ).fit()
    weights_equal(full.model.named_tensors(), on_file.model.named_tensors())
    data = json.loads((full.checkpoint / "config.json").read_text())["run"]["data"]
    expected = hashlib.sha256(f"{(N, WIDTH)}|torch.float32".encode() + x.numpy().tobytes()).hexdigest()
    assert {k: data[k] for k in ("kind", "rows", "width", "dtype", "fingerprint")} == {
        "kind": "tensor",
        "rows": N,
        "width": WIDTH,
        "dtype": "float32",
        "fingerprint": expected,
    }
    assert main(["info", str(tmp_path / "full")]) == 0
    assert f"data: a tensor from Python, 600 x 16 float32, sha256 {expected[:12]}" in capsys.readouterr().out

    fit(x, with_train(vals, steps=10), tmp_path / "split")
    with pytest.raises(CheckpointError, match=r"data.fingerprint"):
        fit(x + 1, vals, tmp_path / "split", resume=True)
    resumed = fit(x, vals, tmp_path / "split", resume=True)
    weights_equal(full.model.named_tensors(), resumed.model.named_tensors())
    with pytest.raises(ConfigError, match="data.kind 'tensor' is a tensor in memory"):
        build_source(tensor_config(x))
    with pytest.raises(ConfigError, match=r"data.fingerprint differ"):
        TensorSource(tensor_config(x), x=x + 1)


def test_fit_on_a_transcoder_pair_of_tensors(tmp_path):
    x_p = activations()
    x_r = x_p[:, :8] * 2
    result = fit(x_p, values(None, eval_rows=EVAL), targets=x_r)
    assert (result.model.n_in, result.model.n_out) == (WIDTH, 8)
    with pytest.raises(ShapeError, match="has 599 rows but the tensor x has 600"):
        fit(x_p, values(None, eval_rows=EVAL), targets=x_r[:-1])


def test_fit_on_batches_reads_one_stream_of_rows_and_resumes_exactly(tmp_path):
    x = activations()
    chunks = [x[i : i + 50] for i in range(0, N, 50)]  # the first two (100 rows) are held out
    source = BatchesSource(batches_config(chunks, eval_batches=2), batches=chunks)
    stream = x[100:]
    for index in (0, 1, 15, 3, 40):  # out of order, and past the end of a pass (500 rows)
        rows = torch.arange(index * 32, (index + 1) * 32) % 500
        assert torch.equal(source.batch(index, 32).x_p, stream[rows])
    assert torch.equal(source.eval_batch().x_p, x[:100])

    vals = with_train(values(None, eval_batches=2, description="layer 6 of my model"), checkpoint_every=10)
    full = fit(chunks, vals, tmp_path / "full")
    data = json.loads((full.checkpoint / "config.json").read_text())["run"]["data"]
    assert data == {
        "kind": "batches",
        "n_in": WIDTH,
        "n_out": WIDTH,
        "eval_batches": 2,
        "description": "layer 6 of my model",
    }
    fit(chunks, with_train(vals, steps=10), tmp_path / "split")
    weights_equal(
        full.model.named_tensors(),
        fit(lambda: iter(chunks), vals, tmp_path / "split", resume=True).model.named_tensors(),
    )
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x), batch_size=50)  # yields 1-tuples
    weights_equal(full.model.named_tensors(), fit(loader, vals).model.named_tensors())
    pairs = [(c, c[:, :4]) for c in chunks]
    assert fit(pairs, values(None)).model.n_out == 4
    with pytest.raises(ConfigError, match="data.kind 'batches' are batches from Python, not in the config"):
        build_source(batches_config(chunks))
    with pytest.raises(ConfigError, match="an iterator, which can be read only once"):
        fit(iter(chunks), vals)
    with pytest.raises(ConfigError, match="hold no rows after the 12 held out"):
        fit(chunks, values(None, eval_batches=12))
    with pytest.raises(ConfigError, match="fit trains on the batches it is given; leave data.kind out"):
        fit(chunks, values(None, kind="array"))
