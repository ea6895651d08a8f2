"""The CLI keeps its promises: --version, a description on every subcommand's --help, --json is JSON on
stdout wherever it exists, --device is checked the same way everywhere, --seed only where it matters."""

import json

import pytest
import yaml

import sdlkit
from conftest import tiny_values
from sdlkit.cli.main import build_parser, main


def subcommands() -> dict:
    parser = build_parser()
    action = next(a for a in parser._actions if a.dest == "command")
    return dict(action.choices)


def options(parser) -> set[str]:
    return {flag for action in parser._actions for flag in action.option_strings}


def test_version(capsys):
    assert main(["--version"]) == 0
    assert capsys.readouterr().out.strip() == f"sdlkit {sdlkit.__version__}"


@pytest.mark.parametrize("name", sorted(subcommands()))
def test_every_subcommand_describes_itself(name, capsys):
    assert main([name, "--help"]) == 0
    help_text = capsys.readouterr().out
    description = help_text.split("\n\n")[1]  # after the usage block
    assert not description.startswith(("positional arguments", "options")), f"{name} --help has no description"
    assert len(description) > 20


def test_seed_only_where_it_changes_something():
    with_seed = {name for name, parser in subcommands().items() if "--seed" in options(parser)}
    assert with_seed == {"train", "theory"}


@pytest.mark.parametrize("name", sorted(n for n, p in subcommands().items() if "--device" in options(p)))
def test_every_device_option_is_checked_the_same_way(name, tmp_path, capsys):
    argv = {
        "train": ["train", "--config", "c.yaml"],
        "bench": ["bench", "--out", str(tmp_path / "b")],
        "theory": ["theory", "--out", str(tmp_path / "t")],
        "diagnose": ["diagnose", "ckpt"],
        "harvest": ["harvest", "--model", "m", "--modules", "x", "--data", "d", "--out", str(tmp_path / "s")],
        "eval": ["eval", "ckpt", "--store", "s"],
        "browse": ["browse", "run", "--store", "s", "--out", str(tmp_path / "w")],
        "compare": ["compare", "run1", "run2"],
    }[name]
    if name == "train":
        (tmp_path / "c.yaml").write_text(yaml.safe_dump(tiny_values(steps=1)))
        argv[2] = str(tmp_path / "c.yaml")
    assert main([*argv, "--device", "tpu"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "'tpu'" in err and "use cpu, cuda, cuda:N or auto" in err


def test_json_is_json_on_stdout(tmp_path, capsys):
    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump(tiny_values(steps=5)))
    assert main(["train", "--config", str(config), "--out", str(tmp_path / "run"), "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["steps"] == 5 and result["checkpoint"].endswith("step-00000005") and result["method"] == "topk"
    assert main(["info", str(tmp_path / "run"), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["step"] == 5 and info["tensors"]["W_E"] == [64, 20]


def test_bench_stack_replaces_batch(capsys):
    assert main(["bench", "--batch", "never"]) == 2
    assert "unrecognized arguments: --batch" in capsys.readouterr().err
