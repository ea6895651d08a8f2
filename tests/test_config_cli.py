"""`sdlkit config show` lists every field of a run config from the classes and registries; `sdlkit config example`
gives the shipped examples, each of which validates and the quick one trains."""

import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch

import sdlkit
from sdlkit.cli.main import main
from sdlkit.config import TrainConfig, load_yaml, parse_yaml, run_config
from sdlkit.config_docs import EXAMPLES, example_names, example_text, run_config_fields
from sdlkit.core.method import METHODS
from sdlkit.data.source import SOURCES
from sdlkit.methods.jumprelu import JumpReLUConfig
from sdlkit.store import StoreWriter
from sdlkit.store.config import StoreDataConfig

REPO = Path(__file__).resolve().parents[1]


def run(capsys, *argv: str) -> str:
    assert main(["config", *argv]) == 0
    return capsys.readouterr().out


def one_line_error(capsys, argv: list[str], message: str) -> None:
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err == f"sdlkit: error: {message}\n"


def block(listing: str, section: str) -> list[str]:
    """The rows of one section of `config show`'s listing (the lines after its `section:` title)."""
    blocks = {b.split(":", 1)[0]: b.splitlines()[1:] for b in listing.split("\n\n")}
    return [line for line in blocks[section] if line.startswith("  ") and not line.startswith("    ")]


# ----- config show ---------------------------------------------------------------------------------------
def test_show_lists_a_field_with_its_type_default_and_doc(capsys):
    listing = run(capsys, "show")
    train = block(listing, "train")
    assert (
        "  lr                float > 0           0.0004        Adam's peak learning rate (after warm-up, before decay)."
        in train
    )
    assert any(re.fullmatch(r"  lr_decay_start +float in \[0, 1\] +0\.8 +Fraction of `steps` .*", r) for r in train)
    assert any(
        re.fullmatch(r"  checkpoint_every +int > 0 \| null +null +Steps between checkpoints.*", r) for r in train
    )
    assert [r.split()[0] for r in train] == list(TrainConfig.model_fields)  # every field, in the class's order
    assert any(
        re.fullmatch(r"  count +int > 0 +required +k, the number of anchored latents.*", r)
        for r in block(listing, "train.anchors")
    )
    assert [r.split()[0] for r in block(listing, "model.method")] == ["name", "k", "auxk"]  # topk by default


def test_show_with_a_method_and_a_data_kind_lists_their_own_fields(capsys):
    listing = run(capsys, "show", "--method", "jumprelu", "--data", "store")
    method = block(listing, "model.method")
    assert [r.split()[0] for r in method] == list(JumpReLUConfig.model_fields)
    assert any(re.fullmatch(r"  l0_coefficient +float >= 0 +0\.01 +λ of the L0 penalty\.", r) for r in method)
    assert any(re.fullmatch(r"  l0_form +step\|tanh +\"step\" +'step': Heaviside .*", r) for r in method)
    data = block(listing, "data")
    assert [r.split()[0] for r in data] == list(StoreDataConfig.model_fields)
    assert any(
        re.fullmatch(r"  store +str +required +Path of the store folder \(written by the harvester\)\.", r)
        for r in data
    )
    assert "data.hierarchy" not in listing  # the bench's section is not the store's


def test_show_json_matches_the_classes(capsys):
    rows = json.loads(run(capsys, "show", "--json", "--method", "jumprelu"))
    assert all(set(row) == {"path", "type", "default", "required", "doc"} for row in rows)
    by_path = {row["path"]: row for row in rows}
    for prefix, instance in (("train.", TrainConfig()), ("model.method.", JumpReLUConfig())):
        leaves = {
            p.removeprefix(prefix): r
            for p, r in by_path.items()
            if p.startswith(prefix) and "." not in p.removeprefix(prefix)
        }
        assert list(leaves) == list(type(instance).model_fields)
        for name, value in instance.model_dump(mode="json").items():
            assert leaves[name]["default"] == value and not leaves[name]["required"], name
            assert leaves[name]["doc"] == " ".join(type(instance).model_fields[name].description.split())
    assert by_path["data.n_features"] == {**by_path["data.n_features"], "required": True, "default": None}
    assert by_path["model.method"]["default"] == {"name": "topk"}  # the model's default method, whatever is listed
    assert by_path["train"]["default"] == {} and by_path["train.resample"]["type"] == "section | null"
    assert by_path["data.mode"]["type"] == "sae|transcoder|crosscoder"


@pytest.mark.parametrize("kind", sorted(SOURCES))
def test_every_field_of_every_registered_config_has_a_doc(kind):
    missing = {
        field.path.replace("model.method", f"model.method[{method}]")
        for method in METHODS
        for field in run_config_fields(method, kind)
        if not field.doc or field.about == ""
    }
    assert sorted(missing) == [], "write a one-line docstring under each of these fields (or its section's class)"


def test_attribute_docstrings_are_the_pydantic_descriptions():
    assert TrainConfig.model_json_schema()["properties"]["steps"]["description"] == "Optimiser steps."
    assert StoreDataConfig.model_fields["store"].description == "Path of the store folder (written by the harvester)."


def test_show_refuses_unknown_names_with_the_known_ones(capsys):
    one_line_error(
        capsys,
        ["config", "show", "--method", "nope"],
        f"unknown method 'nope'; known methods: {', '.join(sorted(METHODS))}",
    )
    one_line_error(
        capsys, ["config", "show", "--data", "nope"], f"unknown data kind 'nope'; known kinds: {', '.join(SOURCES)}"
    )


# ----- config example ------------------------------------------------------------------------------------
def test_examples_ship_inside_the_package_and_the_clone_copy_is_the_same_file():
    assert EXAMPLES.parent == Path(sdlkit.__file__).parent
    assert {"quick-topk", "store", "array", "transcoder", "batchtopk-65k"} <= set(example_names())
    assert (REPO / "configs" / "quick-topk.yaml").read_text() == example_text("quick-topk")
    assert '"sdlkit" = ["configs/*.yaml"]' in (REPO / "pyproject.toml").read_text()


def tiny_store(path: Path, modules: list[str], width: int = 8) -> Path:
    writer = StoreWriter.create(
        path, dict.fromkeys(modules, width), torch.float32, labels=None, source={"models": ["t"]}
    )
    rows = torch.arange(16)
    writer.append({name: torch.randn(16, width) for name in modules}, rows, None)
    writer.end_batch(16)
    writer.close()
    return path


@pytest.mark.parametrize("name", example_names())
def test_every_example_validates(name, tmp_path, monkeypatch):
    values = parse_yaml(example_text(name))
    run_config({**values, "data": {"preset": "tiny"}})  # every section but data, on data that needs no file
    data = dict(values["data"])
    if data.get("kind") == "store":
        modules = [*(data.get("inputs") or ["x"]), *(data.get("targets") or [])]
        data["store"] = str(tiny_store(tmp_path / "store", list(dict.fromkeys(modules))))
    elif data.get("kind") == "array":
        if "array" not in SOURCES:
            pytest.skip("data kind 'array' is not registered yet")
        monkeypatch.chdir(tmp_path)
        np.save(data["path"], np.random.default_rng(0).standard_normal((64, 8)).astype(np.float32))
    config = run_config({**values, "data": data})
    assert config.model.n_latents == values["model"]["n_latents"]
    assert config.model.method.name == values["model"]["method"]["name"]


def test_example_lists_prints_and_writes(tmp_path, capsys):
    listing = run(capsys, "example")
    assert [line.split()[0] for line in listing.splitlines()] == example_names()
    assert run(capsys, "example", "store") == example_text("store")
    out = tmp_path / "store.yaml"
    assert f"wrote {out}" in run(capsys, "example", "store", "--out", str(out))
    assert out.read_text() == example_text("store")
    one_line_error(
        capsys,
        ["config", "example", "array", "--out", str(out)],
        f"--out {out} exists; choose another file or add --overwrite",
    )
    assert out.read_text() == example_text("store")  # nothing lost
    run(capsys, "example", "array", "--out", str(out), "--overwrite")
    assert out.read_text() == example_text("array")
    one_line_error(
        capsys, ["config", "example", "nope"], f"no example config 'nope'; examples: {', '.join(example_names())}"
    )


def test_the_quick_example_trains(tmp_path, capsys):
    config = tmp_path / "quick.yaml"
    run(capsys, "example", "quick-topk", "--out", str(config))
    assert load_yaml(config) == load_yaml(EXAMPLES / "quick-topk.yaml")
    argv = ["train", "--config", str(config), "--out", str(tmp_path / "run"), "--set", "train.steps=5"]
    assert main([*argv, "--set", "train.progress=false", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["steps"] == 5 and result["method"] == "topk"
    assert sdlkit.load(tmp_path / "run").n_latents == 512
