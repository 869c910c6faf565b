"""The static catalogue of quantization backends.

One row per backend: the module that implements it, the library (pip distribution) it needs and
the `edgeq[...]` extra that installs it, and which schemes and weight formats it supports. The
table is plain data so that recipes can be validated, and `edgeq recipes` listed, without
importing any quantization library; a backend module is imported only when it is used.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import importlib.util
from dataclasses import dataclass

from edgeq.errors import MissingDependencyError, RecipeError


@dataclass(frozen=True)
class BackendSpec:
    name: str
    module: str
    library: str  # the pip distribution whose version goes into the manifest
    import_name: str  # what to look for with importlib to tell whether it is installed
    extra: str  # pip install 'edgeq[<extra>]'
    runtime: str  # "torch" or "onnxruntime": what loads the bundle on the device
    # (scheme, weight format) pairs the backend implements.
    supports: frozenset[tuple[str, str]]
    summary: str


def _pairs(scheme: str, *formats: str) -> set[tuple[str, str]]:
    return {(scheme, f) for f in formats}


BACKENDS: dict[str, BackendSpec] = {
    spec.name: spec
    for spec in (
        BackendSpec(
            name="float",
            module="edgeq.backends.floating",
            library="torch",
            import_name="torch",
            extra="torch",
            runtime="torch",
            supports=frozenset(_pairs("none", "float32", "float16", "bfloat16")),
            summary="unquantized reference (fp32 / fp16), packaged like every other bundle",
        ),
        BackendSpec(
            name="torch",
            module="edgeq.backends.torch_ao",
            library="torch",
            import_name="torch",
            extra="torch",
            runtime="torch",
            supports=frozenset(_pairs("dynamic", "int8") | _pairs("static", "int8")),
            summary="PyTorch torch.ao quantized Linear (dynamic or calibrated static int8)",
        ),
        BackendSpec(
            name="quanto",
            module="edgeq.backends.quanto",
            library="optimum-quanto",
            import_name="optimum.quanto",
            extra="quanto",
            runtime="torch",
            supports=frozenset(
                _pairs("weight-only", "int8", "int4", "int2", "float8")
                | _pairs("dynamic", "int8")
                | _pairs("static", "int8", "float8")
            ),
            summary="Optimum-Quanto QLinear (weight-only, or with calibrated int8/float8 activations)",
        ),
        BackendSpec(
            name="hqq",
            module="edgeq.backends.hqq",
            library="hqq",
            import_name="hqq",
            extra="hqq",
            runtime="torch",
            supports=frozenset(_pairs("weight-only", "int8", "int4", "int3", "int2", "int1")),
            summary="Half-Quadratic Quantization, calibration-free group-wise weights",
        ),
        BackendSpec(
            name="bnb",
            module="edgeq.backends.bnb",
            library="bitsandbytes",
            import_name="bitsandbytes",
            extra="bnb",
            runtime="torch",
            supports=frozenset(_pairs("dynamic", "int8") | _pairs("weight-only", "nf4", "fp4")),
            summary="bitsandbytes LLM.int8() and 4-bit NF4/FP4 Linear layers",
        ),
        BackendSpec(
            name="onnx",
            module="edgeq.backends.onnx",
            library="onnxruntime",
            import_name="onnxruntime",
            extra="onnx",
            runtime="onnxruntime",
            supports=frozenset(
                _pairs("none", "float32", "float16")
                | _pairs("dynamic", "int8")
                | _pairs("static", "int8")
                | _pairs("weight-only", "int4", "int8")
            ),
            summary="ONNX export + ONNX Runtime quantization; runs without PyTorch",
        ),
    )
}


def backend_spec(name: str) -> BackendSpec:
    try:
        return BACKENDS[name]
    except KeyError:
        raise RecipeError(
            f"unknown backend {name!r}; choose one of {', '.join(BACKENDS)}"
        ) from None


def library_version(spec: BackendSpec) -> str | None:
    try:
        return importlib.metadata.version(spec.library)
    except importlib.metadata.PackageNotFoundError:
        return None


def require_library(spec: BackendSpec, what: str) -> None:
    """Fail with the pip extra to install when the backend's library is missing."""
    found = importlib.util.find_spec(spec.import_name.split(".")[0]) is not None
    if found and "." in spec.import_name:
        found = importlib.util.find_spec(spec.import_name) is not None
    if not found:
        raise MissingDependencyError(
            f"{what} needs {spec.library}, which is not installed: pip install 'edgeq[{spec.extra}]'"
        )


def load_backend(name: str):
    """Import and return the backend module for `name` (after checking its library)."""
    spec = backend_spec(name)
    require_library(spec, f"backend {name!r}")
    return importlib.import_module(spec.module)
