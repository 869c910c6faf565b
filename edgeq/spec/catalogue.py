"""The static catalogue of runtimes and quantization backends.

One row per runtime (what loads a bundle on the device: its engine module, the module that writes
its bundles, the extra a device installs, the packages a manifest records) and one row per backend
(the module that implements it, the library it needs and the `edgeq[...]` extra that installs it,
the runtime its bundles need, and which schemes and weight formats it supports). The tables are
plain data so that recipes can be validated, and `edgeq recipes` listed, without importing any
quantization library; a module named here is imported only when it is used. The builder and the
loader ask these rows instead of comparing runtime names.

The modules named here implement the protocols in `edgeq.spec.protocols`;
tests/spec/test_catalogue.py imports each one (where its library is installed) and checks it.
"""

from __future__ import annotations

import importlib
import importlib.util
from dataclasses import dataclass

from edgeq.errors import MissingDependencyError, RecipeError
from edgeq.util import installed_version


@dataclass(frozen=True)
class RuntimeSpec:
    name: str  # the manifest's "runtime"
    engine: str  # module with `load_engine(bundle, device, threads)` (protocols.EngineModule)
    writer: str  # module with `write(model, recipe, calibration, folder, progress)` (protocols.BundleWriter)
    # What must import before `engine` is imported: (import name, pip distribution).
    imports: tuple[tuple[str, str], ...]
    # The `edgeq[...]` extra a device installs; None: the backend's own extra (its library runs there).
    extra: str | None
    packages: tuple[str, ...]  # distributions whose versions the manifest records
    # Static calibration replays the float model's transcript through the model being calibrated
    # (torch modules observe activations in place); ONNX calibration reads only the features.
    teacher_forced_calibration: bool


RUNTIMES: dict[str, RuntimeSpec] = {
    spec.name: spec
    for spec in (
        RuntimeSpec(
            name="torch",
            engine="edgeq.torch_runtime",
            writer="edgeq.builder.torch_writer",
            imports=(("torch", "torch"), ("transformers", "transformers")),
            extra=None,
            packages=("torch", "transformers", "safetensors", "numpy"),
            teacher_forced_calibration=True,
        ),
        RuntimeSpec(
            name="onnxruntime",
            engine="edgeq.runtime.onnx_engine",
            writer="edgeq.backends.onnx",
            imports=(("onnxruntime", "onnxruntime"),),
            extra="runtime",
            packages=("onnxruntime", "numpy"),
            teacher_forced_calibration=False,
        ),
    )
}


@dataclass(frozen=True)
class BackendSpec:
    name: str
    module: str
    library: str  # the pip distribution whose version goes into the manifest
    import_name: str  # what to look for with importlib to tell whether it is installed
    extra: str  # pip install 'edgeq[<extra>]'
    runtime: str  # a key of RUNTIMES: what loads the bundle on the device
    # (scheme, weight format) pairs the backend implements.
    supports: frozenset[tuple[str, str]]
    summary: str
    # Devices its bundles can run on. bitsandbytes >= 0.48 has CPU kernels, so none is CUDA-only
    # today; a recipe narrows this further with `devices`.
    devices: tuple[str, ...] = ("cpu", "cuda")

    @property
    def runtime_spec(self) -> RuntimeSpec:
        return RUNTIMES[self.runtime]

    @property
    def device_extra(self) -> str:
        """What `pip install 'edgeq[...]'` a device needs to run this backend's bundles."""
        return self.runtime_spec.extra or self.extra

    @property
    def device_packages(self) -> tuple[str, ...]:
        """Distributions a device runs these bundles with (the manifest records their versions)."""
        extra = (self.library,) if self.runtime_spec.extra is None and self.library not in self.runtime_spec.packages else ()
        return self.runtime_spec.packages + extra

    def needs_calibration(self, scheme: str) -> bool:
        return scheme == "static"


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
                # dynamic int4: int8 encoder, 4-bit decoder (backends/onnx.py)
                | _pairs("dynamic", "int8", "int4")
                | _pairs("static", "int8")
                | _pairs("weight-only", "int4", "int8", "int2")
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
    return installed_version(spec.library)


def _importable(name: str) -> bool:
    """Installed, without importing it (torch takes seconds). A finder that refuses the name
    (ImportError, as an import blocker in a test or a sandbox does) counts as not installed."""
    try:
        if importlib.util.find_spec(name.split(".")[0]) is None:
            return False
        return "." not in name or importlib.util.find_spec(name) is not None
    except ImportError:
        return False


def require_library(spec: BackendSpec, what: str) -> None:
    """Fail with the pip extra to install when the backend's library is missing."""
    if not _importable(spec.import_name):
        raise MissingDependencyError(
            f"{what} needs {spec.library}, which is not installed: pip install 'edgeq[{spec.extra}]'"
        )


def require_runtime(spec: BackendSpec, what: str) -> None:
    """Fail with the extra to install when a device lacks what runs this backend's bundles."""
    for import_name, dist in spec.runtime_spec.imports:
        if not _importable(import_name):
            hint = " (or build an ONNX bundle, e.g. --recipe onnx-int8-dynamic, to run without PyTorch)" \
                if spec.runtime == "torch" else ""
            raise MissingDependencyError(
                f"{what} runs on {spec.runtime}, which needs {dist}, not installed: "
                f"pip install 'edgeq[{spec.device_extra}]'{hint}"
            )
    require_library(spec, what)


def load_backend(name: str):
    """Import and return the backend module for `name` (after checking its library)."""
    spec = backend_spec(name)
    require_library(spec, f"backend {name!r}")
    return importlib.import_module(spec.module)


def load_engine_module(spec: BackendSpec, what: str):
    """The engine module that runs `spec`'s bundles (after checking the device has its libraries)."""
    require_runtime(spec, what)
    return importlib.import_module(spec.runtime_spec.engine)


def load_writer(spec: BackendSpec, what: str):
    """The module that writes `spec`'s bundles on the workstation."""
    require_library(spec, what)
    if spec.runtime == "torch":
        require_library(BACKENDS["float"], what)  # torch + transformers, whatever the library
    return importlib.import_module(spec.runtime_spec.writer)
