"""Loading a torch-runtime bundle into a `TorchEngine`."""

from __future__ import annotations

from edgeq.backends import BACKENDS, require_library
from edgeq.bundle import Bundle
from edgeq.errors import BundleError, DeviceError, MissingDependencyError


def load_engine(bundle: Bundle, device: str = "cpu", threads: int | None = None):
    if bundle.runtime != "torch":
        raise BundleError(
            f"{bundle.path}: bundle {bundle.name} runs on {bundle.runtime}, not PyTorch; "
            "load it with edgeq.load, which picks the runtime"
        )
    try:
        import torch  # noqa: F401
        import transformers  # noqa: F401
    except ImportError:
        raise MissingDependencyError(
            f"bundle {bundle.name} runs on PyTorch, which is not installed: pip install 'edgeq[torch]' "
            "(or build an ONNX bundle, e.g. --recipe onnx-int8-dynamic, to run without PyTorch)"
        ) from None
    import torch

    backend = bundle.recipe["backend"]
    require_library(BACKENDS[backend], f"bundle {bundle.name} (backend {backend})")
    if device == "cuda" and not torch.cuda.is_available():
        raise DeviceError("--device cuda asked for, but this PyTorch has no usable CUDA device")
    if threads:
        torch.set_num_threads(threads)
    from edgeq.backends.base import DTYPES
    from edgeq.engines.torch_engine import TorchEngine
    from edgeq.torch_bundle import load_model

    model = load_model(bundle, device)
    return TorchEngine(model, device, _activation_dtype(model, DTYPES[bundle.recipe["dtype"]]))


def _activation_dtype(model, recipe_dtype):
    # An fp16 reference bundle stores fp16 weights: its inputs must be fp16 too.
    import torch

    conv = model.model.encoder.conv1.weight
    return conv.dtype if conv.dtype in (torch.float16, torch.bfloat16) else recipe_dtype
