"""Quanto's packed 4/2-bit weights on CUDA: the kernel compile quanto does on first use is announced,
and refused in one line where it cannot happen. No GPU here: quanto's extension registry and torch's
CUDA_HOME are set the way a CUDA machine has them."""

from __future__ import annotations

import logging
from types import SimpleNamespace

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("optimum.quanto")

from optimum.quanto.library import extensions  # noqa: E402
from torch.utils import cpp_extension  # noqa: E402

from edgeq.backends.quanto import _check_cuda_kernels  # noqa: E402
from edgeq.errors import DeviceError  # noqa: E402


def _meta(*weights):
    return {"layers": {f"layer{i}": {"weights": w} for i, w in enumerate(weights)}}


@pytest.fixture
def cuda_machine(monkeypatch, tmp_path):
    """quanto_cuda registered, never compiled, in tmp_path; the CUDA toolkit installed."""
    monkeypatch.setattr(extensions, "is_extension_available", lambda name: name == "quanto_cuda")
    monkeypatch.setattr(extensions, "get_extension", lambda name: SimpleNamespace(build_directory=str(tmp_path)))
    monkeypatch.setattr(cpp_extension, "CUDA_HOME", "/usr/local/cuda")
    return tmp_path


def test_the_first_compile_is_announced_for_packed_weights_on_cuda(cuda_machine, caplog):
    with caplog.at_level(logging.WARNING, logger="edgeq.backends.quanto"):
        _check_cuda_kernels(_meta("qint8", "qint4", "qint2"), "cuda")
    assert "compiles its CUDA kernels for qint2/qint4 weights" in caplog.text


@pytest.mark.parametrize("weights, device", [(("qint4",), "cpu"), (("qint8", "qfloat8_e4m3fn", "none"), "cuda")])
def test_nothing_is_said_off_cuda_or_without_packed_weights(cuda_machine, caplog, weights, device):
    with caplog.at_level(logging.WARNING, logger="edgeq.backends.quanto"):
        _check_cuda_kernels(_meta(*weights), device)
    assert caplog.text == ""


def test_nothing_is_said_once_compiled_for_this_torch(cuda_machine, caplog):
    stamp = cuda_machine / "pytorch_version.txt"
    stamp.write_text("0.0.1\n")  # compiled for another torch: quanto compiles again
    with caplog.at_level(logging.WARNING, logger="edgeq.backends.quanto"):
        _check_cuda_kernels(_meta("qint4"), "cuda:0")
    assert "compiles its CUDA kernels" in caplog.text
    caplog.clear()
    stamp.write_text(torch.__version__ + "\n")
    with caplog.at_level(logging.WARNING, logger="edgeq.backends.quanto"):
        _check_cuda_kernels(_meta("qint4"), "cuda:0")
    assert caplog.text == ""


def test_without_the_cuda_toolkit_it_is_one_line(cuda_machine, monkeypatch):
    monkeypatch.setattr(cpp_extension, "CUDA_HOME", None)
    with pytest.raises(DeviceError, match=r"^qint4 weights on CUDA need optimum-quanto's CUDA kernels.*--device cpu"):
        _check_cuda_kernels(_meta("qint4"), "cuda")
