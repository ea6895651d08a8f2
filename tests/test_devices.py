"""The one device resolver: 'auto', names torch knows, and one-line errors naming the option they came from."""

import pytest
import torch

from sdlkit.config import run_config
from sdlkit.devices import resolve_device
from sdlkit.errors import ConfigError


def test_auto_is_cuda_when_there_is_one_else_cpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device("auto") == "cpu"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert resolve_device("auto") == "cuda"
    assert resolve_device(torch.device("cuda", 1)) == "cuda:1"


def test_a_device_this_machine_has_is_returned_as_given():
    assert resolve_device("cpu") == "cpu"
    assert resolve_device(torch.device("cpu")) == "cpu"


@pytest.mark.parametrize(
    ("device", "option", "message"),
    [
        ("tpu", "device", "device 'tpu' is unknown; use cpu, cuda, cuda:N or auto"),
        ("mps", "--device", "--device 'mps' is not supported; use cpu, cuda, cuda:N or auto"),
        ("cuda:0", "--device", "--device 'cuda:0' needs CUDA, which this machine does not have; use cpu or auto"),
    ],
)
def test_a_device_this_machine_lacks_is_a_config_error_naming_the_option(monkeypatch, device, option, message):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ConfigError) as raised:
        resolve_device(device, option)
    assert str(raised.value) == message


def test_a_run_config_names_its_device_field(make_config):
    values = make_config().model_dump(mode="json")
    with pytest.raises(ConfigError, match=r"^device 'tpu' is unknown; use cpu, cuda, cuda:N or auto$"):
        run_config({**values, "device": "tpu"})
