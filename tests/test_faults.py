"""Faults a new user runs into: nothing is lost, nothing is silently wrong, and every failure is one line.

One test (or one parametrised test) per class of the fault probe of issue 11. Each asserts the exit status,
the one-line message, and that what was there before is still there (file hashes equal). Disk-full and
read-only faults are simulated by making the writer raise the error safetensors or the OS would raise.
"""

from __future__ import annotations

import errno
import hashlib
import json
import shutil
from pathlib import Path

import pytest
import torch
import yaml
from safetensors import SafetensorError

import sdlkit
from conftest import tiny_values
from sdlkit.cli.main import main
from sdlkit.train.checkpoint import STATE_HASHES, STATE_JSON, STATE_TENSORS, list_checkpoints
from test_store_training import class_store
from test_store_training import values as store_values


# ----- helpers ------------------------------------------------------------------------------------------
def fails(capsys, argv: list, status: int, *fragments: str) -> str:
    """Run `sdlkit argv`: it must exit with `status` and print one line on stderr holding `fragments`."""
    capsys.readouterr()
    assert main([str(a) for a in argv]) == status
    err = capsys.readouterr().err
    lines = [line for line in err.split("\n") if line and "\r" not in line]  # progress bars aside
    assert len(lines) == 1 and lines[0].startswith("sdlkit: error: "), f"expected one error line, got {err!r}"
    for fragment in fragments:
        assert fragment in err, err
    return err


def hashes(folder: Path) -> dict[str, str]:
    """Relative path -> SHA-256 of every file under `folder`."""
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(Path(folder).rglob("*"))
        if p.is_file()
    }


def write_config(path: Path, **train) -> Path:
    path.write_text(yaml.safe_dump(tiny_values(steps=20, **train)))
    return path


def train(config: Path, out: Path, *extra: str) -> int:
    return main(["train", "--config", str(config), "--out", str(out), *extra])


def weights(run: Path) -> dict[str, torch.Tensor]:
    return sdlkit.load(run).named_tensors()


def assert_same_weights(a: Path, b: Path) -> None:
    wa, wb = weights(a), weights(b)
    assert all(torch.equal(wa[name], wb[name]) for name in wa)


@pytest.fixture(scope="module")
def config(tmp_path_factory) -> Path:
    return write_config(tmp_path_factory.mktemp("config") / "c.yaml", checkpoint_every=10)


@pytest.fixture(scope="module")
def reference_run(tmp_path_factory, config) -> Path:
    """An uninterrupted 20-step run (checkpoints at 10 and 20): what every recovered run must equal. Read only."""
    out = tmp_path_factory.mktemp("reference") / "run"
    assert train(config, out) == 0
    return out


@pytest.fixture
def full_run(tmp_path, reference_run) -> Path:
    """A copy of the reference run, for a test to damage."""
    return Path(shutil.copytree(reference_run, tmp_path / "full"))


@pytest.fixture
def store_run(tmp_path) -> tuple[Path, Path]:
    """(a labelled activation store, a run trained on it)."""
    store, _ = class_store(tmp_path / "store")
    config = tmp_path / "store.yaml"
    config.write_text(yaml.safe_dump(store_values(store, steps=5)))
    assert train(config, tmp_path / "store-run") == 0
    return store, tmp_path / "store-run"


# ----- 1. --overwrite deletes only what sdlkit wrote --------------------------------------------------------
def test_train_overwrite_never_deletes_the_store_it_trains_on(tmp_path, capsys, store_run):
    store, _ = store_run
    config = tmp_path / "store.yaml"
    before = hashes(store)
    fails(capsys, ["train", "--config", config, "--out", store, "--overwrite"], 2, f"refusing to overwrite {store}")
    fails(capsys, ["train", "--config", config, "--out", store], 2, "holds an sdlkit store folder, not a run folder")
    assert hashes(store) == before


@pytest.mark.parametrize("command", ["train", "bench", "theory", "export", "import"])
def test_overwrite_refuses_folders_sdlkit_did_not_write(tmp_path, capsys, config, reference_run, command):
    mine = tmp_path / "mine"
    (mine / "checkpoints").mkdir(parents=True)  # looks like a run folder, but sdlkit did not write it
    (mine / "notes.txt").write_text("keep me")
    (mine / "results.json").write_text("[]")
    before = hashes(mine)
    argv = {
        "train": ["train", "--config", config, "--out", mine],
        "bench": [
            "bench",
            "--methods",
            "topk",
            "--steps",
            "1",
            "--frames",
            "tight",
            "--no-references",
            "--no-progress",
            "--out",
            mine,
        ],
        "theory": ["theory", "--quick", "--only", "thm-3.4", "--out", mine],
        "export": ["export", reference_run, "--format", "saelens", "--out", mine],
        "import": ["import", reference_run, "--format", "saelens", "--out", mine],
    }[command]
    fails(capsys, [*argv, "--overwrite"], 2, f"refusing to overwrite {mine}", "delete it yourself")
    assert hashes(mine) == before


def test_overwrite_replaces_sdlkit_runs_old_and_new(tmp_path, capsys, config, full_run):
    assert (full_run / ".sdlkit").is_file()
    assert train(config, full_run, "--overwrite") == 0
    (full_run / ".sdlkit").unlink()  # a run written before the marker: recognised by its checkpoints
    assert train(config, full_run, "--overwrite") == 0
    assert main(["export", str(full_run), "--format", "saelens", "--out", str(tmp_path / "exp")]) == 0
    assert main(["export", str(full_run), "--format", "saelens", "--out", str(tmp_path / "exp"), "--overwrite"]) == 0


# ----- 2. contradicting flags -------------------------------------------------------------------------------
def test_bench_overwrite_with_resume_is_refused_and_deletes_nothing(tmp_path, capsys):
    out = tmp_path / "bench"
    assert (
        main(
            [
                "bench",
                "--methods",
                "topk",
                "--steps",
                "1",
                "--frames",
                "tight",
                "--no-references",
                "--no-progress",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    before = hashes(out)
    argv = [
        "bench",
        "--methods",
        "topk",
        "--steps",
        "1",
        "--frames",
        "tight",
        "--no-references",
        "--no-progress",
        "--out",
        out,
        "--overwrite",
        "--resume",
    ]
    fails(capsys, argv, 2, "--overwrite and --resume contradict each other")
    assert hashes(out) == before


# ----- 3. a resumed harvest refuses changed data ------------------------------------------------------------
def test_harvest_resume_refuses_data_that_changed(tmp_path, capsys, monkeypatch):
    """A harvest cut by a full disk while writing its second shard, resumed on changed data (refused) and
    then on the original data (the whole harvest's rows)."""
    pytest.importorskip("transformers")
    import sdlkit.io
    from hf_tiny import TEXTS, tiny_lm
    from sdlkit.store.reader import ActivationStore

    model, data, out = tiny_lm(tmp_path / "lm"), tmp_path / "texts.txt", tmp_path / "store"
    data.write_text("\n".join(TEXTS) + "\n")

    def harvest(store: Path, *extra: str) -> list:
        options = [
            "--batch-size",
            "4",
            "--sort-window",
            "1",
            "--shard-rows",
            "8",
            "--no-progress",
            "--device",
            "cpu",
            *extra,
        ]
        return ["harvest", "--model", model, "--modules", "transformer.h.0", "--data", data, "--out", store, *options]

    save_file = sdlkit.io.save_file

    def disk_full_at_the_second_shard(tensors, path, metadata=None):
        if "shard-000001" in str(path):
            Path(path).write_bytes(b"half a shard")  # safetensors leaves what it wrote before the error
            raise SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)")
        return save_file(tensors, path, metadata=metadata)

    monkeypatch.setattr(sdlkit.io, "save_file", disk_full_at_the_second_shard)
    fails(capsys, harvest(out), 1, "shard-000001.safetensors.tmp: No space left on device", "free some space")
    monkeypatch.setattr(sdlkit.io, "save_file", save_file)
    assert not [p.name for p in out.iterdir() if "tmp" in p.name]  # nothing half-written left behind
    before = hashes(out)
    data.write_text("\n".join(reversed(TEXTS)) + "\n")  # same size, other samples
    fails(capsys, harvest(out, "--resume"), 2, f"cannot resume {out}", "not those the harvest began with")
    assert hashes(out) == before
    data.write_text("\n".join(TEXTS) + "\n")  # the original data: the store resumes to the whole harvest
    assert main([str(a) for a in harvest(out, "--resume")]) == 0
    assert main([str(a) for a in harvest(tmp_path / "whole")]) == 0
    a, b = ActivationStore(out), ActivationStore(tmp_path / "whole")
    assert a.rows == b.rows and torch.equal(
        a.read_rows(0, a.rows)["transformer.h.0"], b.read_rows(0, b.rows)["transformer.h.0"]
    )


# ----- 4. resume checks the trainer state against the weights ------------------------------------------------
def test_a_trainer_state_copied_from_another_step_is_refused(tmp_path, capsys, config, full_run):
    early, late = list_checkpoints(full_run)
    for name in (STATE_JSON, STATE_TENSORS):
        shutil.copy(early / name, late / name)
    before = hashes(early)
    fails(capsys, ["train", "--config", config, "--out", full_run, "--resume"], 2, "is not the trainer state")
    # a checkpoint without recorded state hashes (as written before them) is caught by its step
    record = json.loads((late / "config.json").read_text())
    del record[STATE_HASHES]
    (late / "config.json").write_text(json.dumps(record))
    fails(capsys, ["train", "--config", config, "--out", full_run, "--resume"], 2, "trainer state of step 10")
    # valid JSON with the wrong contents: one line, not a KeyError
    (late / STATE_JSON).write_text(json.dumps({"__dict__": [["step", 20]]}))
    fails(capsys, ["train", "--config", config, "--out", full_run, "--resume"], 2, "not hold a usable trainer state")
    assert hashes(early) == before


# ----- 5. a torn metrics.jsonl line -----------------------------------------------------------------------
def test_resume_drops_a_torn_metrics_line(capsys, config, reference_run, full_run):
    shutil.rmtree(list_checkpoints(full_run)[-1])  # killed after the checkpoint of step 10 ...
    with open(full_run / "metrics.jsonl", "a") as handle:
        handle.write('{"step": 30, "loss": 0.1')  # ... with a line torn by a full disk
    assert train(config, full_run, "--resume") == 0
    lines = (full_run / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["step"] for line in lines] == [10, 20]
    assert_same_weights(full_run, reference_run)


# ----- 6. falsy values are values ---------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--steps", "0"], "--steps 0 is not allowed"),
        (["--steps", "-5"], "--steps -5 is not allowed"),
        (["--rows", ","], "--rows is empty"),
        (["--seeds", ","], "--seeds is empty"),
    ],
)
def test_bench_refuses_zero_and_empty_values_instead_of_defaults(tmp_path, capsys, args, message):
    fails(capsys, ["bench", "--out", tmp_path / "b", "--no-progress", *args], 2, message)
    assert not (tmp_path / "b").exists()


# ----- 7. strict config types -------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("assignment", "message"),
    [
        ("model.method.k=true", "method.k = True is not allowed: Input should be a valid integer"),
        ("train.steps=20.0", "train.steps = 20.0 is not allowed: Input should be a valid integer"),
        ("train.batch_size=true", "train.batch_size = True is not allowed: Input should be a valid integer"),
        ("train.lr=.inf", "train.lr = inf is not allowed: Input should be a finite number"),
        ("train.grad_clip=.nan", "train.grad_clip = nan is not allowed: Input should be a finite number"),
        ("seed=false", "seed = False is not allowed"),
        ("model.method.auxk.k_aux=0", "k_aux = 0 is not allowed"),
    ],
)
def test_config_values_have_strict_types(tmp_path, capsys, config, assignment, message):
    fails(capsys, ["train", "--config", config, "--out", tmp_path / "run", "--set", assignment], 2, message)
    assert not (tmp_path / "run").exists()


def test_duplicate_yaml_keys_are_refused_and_exponents_are_numbers(tmp_path, capsys, config):
    text = config.read_text()
    duplicated = tmp_path / "dup.yaml"
    duplicated.write_text(text.replace("  lr: 0.003\n", "  lr: 0.003\n  lr: 0.1\n"))
    fails(capsys, ["train", "--config", duplicated, "--out", tmp_path / "run"], 2, "key 'lr' is given twice (line")
    exponent = tmp_path / "exp.yaml"
    exponent.write_text(text.replace("  lr: 0.003\n", "  lr: 3e-3\n"))  # PyYAML alone reads "3e-3" as a string
    assert train(exponent, tmp_path / "run") == 0
    assert (
        json.loads((list_checkpoints(tmp_path / "run")[-1] / "config.json").read_text())["run"]["train"]["lr"] == 3e-3
    )


# ----- tracebacks where one line is promised ----------------------------------------------------------------
def test_undecodable_config_files_are_one_line(tmp_path, capsys, reference_run):
    binary = tmp_path / "binary.yaml"
    binary.write_bytes(b"\xff\xfe\x00model: {n_latents: 8}\x80\x81")
    fails(capsys, ["train", "--config", binary, "--out", tmp_path / "run"], 2, "is not UTF-8 text")
    fails(capsys, ["diagnose", reference_run, "--bench-config", binary], 2, "is not UTF-8 text")


@pytest.mark.parametrize("writer", ["safetensors", "json"])
def test_a_full_disk_during_a_checkpoint_is_one_line_and_resumable(
    tmp_path, capsys, monkeypatch, config, reference_run, writer
):
    """The checkpoint of step 20 fails as a full disk makes it fail: safetensors' own error, or Python's
    (an OSError without a file name), at the trainer state's file."""
    import sdlkit.io

    save_file, real_open = sdlkit.io.save_file, open

    def safetensors_disk_full(tensors, path, metadata=None):
        if "step-00000020" in str(path):
            raise SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)")
        return save_file(tensors, path, metadata=metadata)

    def python_disk_full(path, *args, **kwargs):
        if "step-00000020" in str(path):
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_open(path, *args, **kwargs)

    if writer == "safetensors":
        monkeypatch.setattr(sdlkit.io, "save_file", safetensors_disk_full)
    else:
        monkeypatch.setattr(sdlkit.io, "open", python_disk_full, raising=False)
    run = tmp_path / "run"
    err = fails(capsys, ["train", "--config", config, "--out", run], 1, "No space left on device", "free some space")
    assert f"{run / 'checkpoints'}/.tmp-step-00000020-" in err and "/trainer_state." in err  # the file is named
    assert [p.name for p in (run / "checkpoints").iterdir()] == ["step-00000010"]  # no half-written folder
    monkeypatch.undo()  # space freed
    assert train(config, run, "--resume") == 0
    assert_same_weights(run, reference_run)


@pytest.mark.parametrize("command", ["train", "bench", "theory"])
def test_an_out_that_is_a_file_is_one_line(tmp_path, capsys, config, command):
    file = tmp_path / "file.txt"
    file.write_text("keep me")
    argv = {
        "train": ["train", "--config", config],
        "bench": [
            "bench",
            "--methods",
            "topk",
            "--steps",
            "1",
            "--frames",
            "tight",
            "--no-references",
            "--no-progress",
        ],
        "theory": ["theory", "--quick", "--only", "thm-3.4"],
    }[command]
    fails(capsys, [*argv, "--out", file], 2, f"{file} is a file")
    fails(capsys, [*argv, "--out", file / "sub"], 2, "Not a directory")
    assert file.read_text() == "keep me"


def test_a_read_only_output_folder_is_one_line(tmp_path, capsys, monkeypatch, config):
    import sdlkit.io

    def read_only(*args, dir=None, **kwargs):
        raise OSError(errno.EROFS, "Read-only file system", str(dir))

    monkeypatch.setattr(sdlkit.io.tempfile, "mkdtemp", read_only)
    fails(
        capsys, ["train", "--config", config, "--out", tmp_path / "run"], 2, "Read-only file system", "choose a folder"
    )
    assert not list_checkpoints(tmp_path / "run")


def test_a_model_too_large_for_memory_is_refused_before_allocating(tmp_path, capsys, config):
    argv = ["train", "--config", config, "--out", tmp_path / "run", "--set", "model.n_latents=100000000000"]
    fails(capsys, argv, 2, "model.n_latents = 100000000000", "TB", "free; lower model.n_latents")


def test_info_on_a_broken_safetensors_header_is_one_line(tmp_path, capsys, reference_run):
    checkpoint = Path(shutil.copytree(list_checkpoints(reference_run)[-1], tmp_path / "ckpt"))
    (checkpoint / "weights.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{broken header!}")
    record = json.loads((checkpoint / "config.json").read_text())
    del record["weights_sha256"]  # as a hand-made or foreign checkpoint may lack it
    (checkpoint / "config.json").write_text(json.dumps(record))
    fails(capsys, ["info", checkpoint], 2, "weights.safetensors is corrupt or truncated")


def test_a_missing_local_model_folder_is_named(tmp_path, capsys, monkeypatch):
    pytest.importorskip("transformers")
    monkeypatch.chdir(tmp_path)
    data = tmp_path / "texts.txt"
    data.write_text("a text\n")
    (tmp_path / "models").mkdir()
    for model in (tmp_path / "nope", "./nope/model", "models/nope"):
        argv = ["harvest", "--model", model, "--modules", "h.0", "--data", data, "--out", tmp_path / "store"]
        fails(capsys, argv, 2, f"model folder {model} does not exist")
    assert not (tmp_path / "store").exists()


def test_eval_device_auto_and_diagnose_on_a_store_run(capsys, store_run):
    store, run = store_run
    assert main(["eval", str(run), "--store", str(store), "--device", "auto"]) == 0
    fails(capsys, ["diagnose", run], 2, "has no ground truth: diagnose needs bench (LRB) data", "--bench-config")


def test_leftovers_of_interrupted_checkpoint_writes_are_cleaned(capsys, config, reference_run, full_run):
    checkpoints = full_run / "checkpoints"
    shutil.rmtree(list_checkpoints(full_run)[-1])
    (checkpoints / ".tmp-step-00000020-abc123").mkdir()  # killed while writing step 20
    (checkpoints / ".tmp-step-00000020-abc123" / "weights.safetensors").write_bytes(b"half")
    assert train(config, full_run, "--resume") == 0
    assert sorted(p.name for p in checkpoints.iterdir()) == ["step-00000010", "step-00000020"]
    assert_same_weights(full_run, reference_run)


def test_a_bench_that_never_finished_a_run_does_not_lock_its_folder(tmp_path, capsys):
    out = tmp_path / "bench"
    args = [
        "bench",
        "--methods",
        "topk",
        "--steps",
        "1",
        "--frames",
        "tight",
        "--no-references",
        "--no-progress",
        "--out",
        out,
    ]
    fails(capsys, [*args, "--set", "train.lr=-1"], 2, "train.lr = -1")  # fails at its first run
    assert (out / "bench.json").is_file()
    assert main([str(a) for a in args]) == 0  # the corrected command
    assert len(json.loads((out / "results.json").read_text())) == 2
    before = hashes(out)
    fails(capsys, [*args, "--set", "train.lr=0.01"], 2, "holds results of a different bench")  # finished runs lock it
    assert hashes(out) == before


def test_a_folder_sdlkit_did_not_create_never_becomes_its_own(tmp_path, capsys, config, store_run):
    """A run written by the library into an existing folder (here the store) does not mark it as a run,
    so `train --overwrite` still refuses to delete it."""
    from sdlkit.config import run_config
    from sdlkit.data import build_source
    from sdlkit.train import Trainer

    store, _ = store_run
    values = yaml.safe_load((tmp_path / "store.yaml").read_text())
    run = run_config(values)
    Trainer(run, build_source(run.data), store).fit()
    assert not (store / ".sdlkit").exists()
    before = hashes(store)
    fails(capsys, ["train", "--config", tmp_path / "store.yaml", "--out", store, "--overwrite"], 2, "refusing")
    assert hashes(store) == before
