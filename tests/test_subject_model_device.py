"""Which torch device the subject model goes to (no model is loaded)."""

import pytest
import torch

from neuron_assets.recording.subject_model import SubjectModelError, resolve_device
from neuron_assets.settings import Settings


def test_device_auto_is_the_cpu_where_torch_sees_no_gpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device("auto") == "cpu"
    assert resolve_device("cpu") == "cpu"


def test_device_auto_is_the_gpu_where_torch_sees_one(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert resolve_device("auto") == "cuda"


@pytest.mark.parametrize(
    ("setting", "message"),
    [
        ("gpu", "not a torch device"),
        ("cuda", "no CUDA GPU"),
        ("cuda:0", "no CUDA GPU"),
        ("meta", "only 'cpu' and 'cuda'"),
    ],
)
def test_a_device_that_cannot_be_used_is_refused_by_name(monkeypatch, setting, message):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(SubjectModelError, match=message):
        resolve_device(setting)


def test_a_device_setting_of_another_form_is_refused_when_the_definitions_load(tmp_path):
    with pytest.raises(ValueError, match="device 'gpu0' is not one of auto, cpu, cuda, cuda:N"):
        Settings(("smollm2-135m-instruct-gguf",), tmp_path, None, None, None, device="gpu0")
