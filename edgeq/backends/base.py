"""What the torch-side backends share: torch dtype names, calibration audio, the state to save.

Every backend module here implements `edgeq.spec.protocols.TorchBackend` (quantize / export /
restore), except `onnx`, which is the `BundleWriter` of the onnxruntime runtime.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import torch

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


@dataclass
class Calibration:
    """Real audio for static schemes: features per utterance and a way to run a model on them."""

    features: Sequence[np.ndarray]
    # run(model) passes every utterance through `model`'s encoder and decoder (the float model's
    # transcript, teacher-forced), so observers see the activations of real transcription.
    run: Callable[[torch.nn.Module], None]


def state_tensors(model: torch.nn.Module, tensors: dict[str, torch.Tensor],
                  handled: Sequence[str] = ()) -> dict[str, torch.Tensor]:
    """Complete `tensors` with the model's float parameters and buffers, one copy of each.

    Modules named in `handled` were saved by the backend in its own form; their state-dict
    entries (bitsandbytes' weight_format, HQQ's packed meta, ...) are left out.

    Tied parameters (proj_out.weight and the token embedding) share storage; safetensors refuses
    shared tensors and a bundle should hold a matrix once, so only the first name is kept and
    the restore re-ties them.
    """
    out = dict(tensors)
    seen = {t.data_ptr() for t in out.values() if t.device.type != "meta" and t.numel()}
    prefixes = tuple(f"{h}." for h in handled)
    for name, t in model.state_dict().items():
        if name.startswith(prefixes):
            continue
        if name in out or not isinstance(t, torch.Tensor) or type(t) is not torch.Tensor:
            continue
        if t.numel() and t.data_ptr() in seen:
            continue
        seen.add(t.data_ptr())
        out[name] = t.detach().contiguous()
    return out


@contextmanager
def quantized_tensors_allowed():
    """Create torch.ao quantized (qint8) tensors without PyTorch's deprecation notice.

    PyTorch 2.13 deprecates creating them (pytorch#184982) and says so, as a UserWarning attributed
    to our code, on the first one a process makes: in every transcription of a torch.ao or an
    int8-embedding (quanto, hqq, bnb) bundle. The dynamic int8 GEMM (quantized.linear_prepack /
    linear_dynamic) takes nothing else, so edgeq keeps them; the notice is for PyTorch code, not
    our users, and only that message, at these calls, is ignored.
    """
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r"torch\.quantize_per_tensor, torch\.quantize_per_channel",
                                category=UserWarning)
        yield
