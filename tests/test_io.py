"""Checkpoint folders: bit-exact round trips, atomic writes, corrupt and mismatched files named."""

import json
import os
import stat

import pytest
import torch

import sdlkit
from sdlkit.core.model import ModelConfig, SparseDictionary
from sdlkit.errors import CheckpointError
from sdlkit.io import (
    flatten_state,
    load_tensors,
    save_tensors_atomically,
    unflatten_state,
    write_atomically,
    write_folder_atomically,
    write_json_atomically,
    write_text_atomically,
)

SPECS = [
    "relu",
    "jumprelu",
    {"name": "topk", "k": 4},
    {"name": "batchtopk", "k": 4},
    "gated",
    {"name": "matryoshka", "k": 4},
]


def randomised(method, **kw) -> SparseDictionary:
    model = SparseDictionary(ModelConfig(n_in=10, n_latents=32, method=method, **kw))
    with torch.no_grad():
        for tensor in model.named_tensors().values():
            if tensor.is_floating_point():
                tensor.normal_()
    return model


@pytest.mark.parametrize("method", SPECS)
def test_save_load_round_trip_is_bit_exact(tmp_path, method):
    model = randomised(method)
    sdlkit.save(model, tmp_path / "ckpt")
    loaded = sdlkit.load(tmp_path / "ckpt")
    assert loaded.config == model.config
    a, b = model.named_tensors(), loaded.named_tensors()
    assert a.keys() == b.keys()
    for name in a:
        assert torch.equal(a[name], b[name]), name
    x = torch.randn(7, 10)
    model.eval(), loaded.eval()
    assert torch.equal(model(x).x_hat, loaded(x).x_hat)


@pytest.mark.parametrize("method", SPECS)
def test_load_fills_allocated_tensors_without_a_random_initialisation(tmp_path, method):
    """The loaded dictionary is built on the meta device, then filled from the file: no random draw (torch's
    global generator is left as it was) and none of the initialisation's float64 copies."""
    sdlkit.save(randomised(method), tmp_path / "ckpt")
    torch.manual_seed(0)
    state = torch.get_rng_state()
    loaded = sdlkit.load(tmp_path / "ckpt")
    assert torch.equal(torch.get_rng_state(), state)
    assert all(t.device.type == "cpu" for t in loaded.named_tensors().values())


def test_round_trip_float64_transcoder_without_bias(tmp_path):
    model = randomised("relu", n_out=6, bias=False, dtype="float64")
    sdlkit.save(model, tmp_path / "ckpt")
    loaded = sdlkit.load(tmp_path / "ckpt")
    assert loaded.W_D.dtype == torch.float64 and torch.equal(loaded.W_D, model.W_D) and loaded.b_E is None


def test_missing_checkpoint_is_named(tmp_path):
    with pytest.raises(CheckpointError, match="no checkpoint at .*nowhere: it is not a folder"):
        sdlkit.load(tmp_path / "nowhere")


def test_missing_weights_file_is_named(tmp_path):
    sdlkit.save(randomised("relu"), tmp_path / "ckpt")
    (tmp_path / "ckpt" / "weights.safetensors").unlink()
    with pytest.raises(CheckpointError, match="weights.safetensors is missing"):
        sdlkit.load(tmp_path / "ckpt")


def test_truncated_weights_are_corrupt(tmp_path):
    sdlkit.save(randomised("relu"), tmp_path / "ckpt")
    path = tmp_path / "ckpt" / "weights.safetensors"
    path.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(CheckpointError, match="weights.safetensors is corrupt"):
        sdlkit.load(tmp_path / "ckpt")


def test_truncated_weights_without_hash_are_still_refused(tmp_path):
    sdlkit.save(randomised("relu"), tmp_path / "ckpt")
    config = json.loads((tmp_path / "ckpt" / "config.json").read_text())
    del config["weights_sha256"]
    (tmp_path / "ckpt" / "config.json").write_text(json.dumps(config))
    path = tmp_path / "ckpt" / "weights.safetensors"
    path.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(CheckpointError, match="corrupt or truncated"):
        sdlkit.load(tmp_path / "ckpt")


def test_weights_from_a_different_config_are_refused(tmp_path):
    sdlkit.save(randomised("relu"), tmp_path / "a")
    sdlkit.save(SparseDictionary(ModelConfig(n_in=10, n_latents=16, method="relu")), tmp_path / "b")
    (tmp_path / "a" / "weights.safetensors").replace(tmp_path / "b" / "weights.safetensors")
    config = json.loads((tmp_path / "b" / "config.json").read_text())
    del config["weights_sha256"]
    (tmp_path / "b" / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match=r"W_E is \[32, 10\] .* describes \[16, 10\] .* different configs"):
        sdlkit.load(tmp_path / "b")


def test_corrupt_config_json_is_named(tmp_path):
    sdlkit.save(randomised("relu"), tmp_path / "ckpt")
    (tmp_path / "ckpt" / "config.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="config.json is corrupt"):
        sdlkit.load(tmp_path / "ckpt")


def test_interrupted_write_leaves_nothing_loadable_and_keeps_the_old(tmp_path):
    target = tmp_path / "ckpt"
    sdlkit.save(randomised("relu"), target)
    before = (target / "weights.safetensors").read_bytes()

    def half_write(tmp):
        (tmp / "weights.safetensors").write_bytes(b"partial")
        raise KeyboardInterrupt  # killed mid-write

    with pytest.raises(KeyboardInterrupt):
        write_folder_atomically(target, half_write)
    assert (target / "weights.safetensors").read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt"]


WRITERS = {
    "text": lambda path: write_text_atomically(path, "one line\n"),
    "json": lambda path: write_json_atomically(path, {"a": [1, 2]}),
    "safetensors": lambda path: save_tensors_atomically(path, {"x": torch.arange(6.0)}, {"k": "v"}),
}
"""Every way sdlkit replaces a single file; each goes through the one writer, io.write_atomically."""


@pytest.mark.parametrize("kind", list(WRITERS))
def test_atomic_writes_fsync_the_new_file_before_the_rename_then_the_folder(tmp_path, monkeypatch, kind):
    path = tmp_path / "out.file"
    synced = []  # (inode, was the target in place yet) per fsync
    real_fsync = os.fsync

    def counting_fsync(fd):
        synced.append((os.fstat(fd).st_ino, path.exists()))
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", counting_fsync)
    WRITERS[kind](path)
    assert synced == [(path.stat().st_ino, False), (tmp_path.stat().st_ino, True)]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.file"]


def test_atomic_writes_round_trip_and_replace(tmp_path):
    path = tmp_path / "t.safetensors"
    path.write_bytes(b"old")
    base = torch.arange(6.0)
    save_tensors_atomically(path, {"x": base, "view": base[2:4], "again": base})  # shared memory is copied
    loaded = load_tensors(path)
    assert torch.equal(loaded["x"], base) and torch.equal(loaded["again"], base)
    assert torch.equal(loaded["view"], torch.tensor([2.0, 3.0]))
    write_json_atomically(tmp_path / "r.json", {"a": 1})
    write_json_atomically(tmp_path / "r.json", {"a": 2})
    assert json.loads((tmp_path / "r.json").read_text()) == {"a": 2}


def test_a_failed_atomic_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path):
    path = tmp_path / "results.json"
    write_json_atomically(path, [1])
    with pytest.raises(TypeError):
        write_json_atomically(path, [object()])  # not JSON: fails before anything is written

    def half_write(tmp):
        tmp.write_text("[2, ")
        raise OSError(28, "No space left on device", str(tmp))  # the disk filled mid-write

    with pytest.raises(OSError, match="No space left"):
        write_atomically(path, half_write)
    assert json.loads(path.read_text()) == [1]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["results.json"]


@pytest.mark.parametrize("umask", [0o022, 0o027])
def test_atomic_writes_give_the_modes_the_umask_allows(tmp_path, umask):
    """Files 0666 and folders 0777 less the umask, as open() and mkdir give, whatever was there before."""
    (tmp_path / ".stale.json.tmp").write_text("left by a killed write")
    os.chmod(tmp_path / ".stale.json.tmp", 0o600)
    old = os.umask(umask)
    try:
        for kind, write in WRITERS.items():
            write(tmp_path / kind)
        write_json_atomically(tmp_path / "stale.json", {})
        sdlkit.save(randomised("relu"), tmp_path / "ckpt")
    finally:
        os.umask(old)
    mode = lambda path: stat.S_IMODE(path.stat().st_mode)  # noqa: E731
    for name in [*WRITERS, "stale.json", "ckpt/config.json", "ckpt/weights.safetensors"]:
        assert mode(tmp_path / name) == 0o666 & ~umask, name
    assert mode(tmp_path / "ckpt") == 0o777 & ~umask


def test_flatten_state_round_trip():
    state = {"a": torch.arange(3), "b": [1, 2.5, None, {"c": torch.ones(2)}], 7: "x", "t": (True, "s")}
    skeleton, tensors = flatten_state(state)
    json.dumps(skeleton)  # JSON-serialisable
    back = unflatten_state(skeleton, tensors)
    assert torch.equal(back["a"], state["a"]) and back[7] == "x" and back["t"] == [True, "s"]
    assert torch.equal(back["b"][3]["c"], torch.ones(2)) and back["b"][:3] == [1, 2.5, None]


def test_flatten_state_refuses_what_needs_pickle():
    with pytest.raises(TypeError, match="without pickle"):
        flatten_state({"f": object()})
