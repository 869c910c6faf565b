"""The catalogue names modules by string; these tests import each one and check its protocol."""

from __future__ import annotations

import importlib
import importlib.util

import pytest

from edgeq.errors import MissingDependencyError
from edgeq.spec import catalogue
from edgeq.spec.catalogue import BACKENDS, RUNTIMES
from edgeq.spec.protocols import BundleWriter, EngineModule, TorchBackend
from edgeq.spec.recipe import list_recipes


def _installed(import_name: str) -> bool:
    return importlib.util.find_spec(import_name.split(".")[0]) is not None


def test_every_backend_runs_on_a_known_runtime_and_has_an_extra():
    assert set(BACKENDS) == {"float", "torch", "quanto", "hqq", "bnb", "onnx"}
    for spec in BACKENDS.values():
        assert spec.runtime in RUNTIMES, spec.name
        assert spec.extra and spec.module.startswith("edgeq.backends."), spec.name
        assert spec.device_extra in ("runtime", spec.extra), spec.name
        assert spec.library in spec.device_packages or spec.runtime == "onnxruntime", spec.name


@pytest.mark.parametrize("name", sorted(BACKENDS))
def test_backend_module_imports_and_implements_its_protocol(name):
    spec = BACKENDS[name]
    if not _installed(spec.import_name):
        pytest.skip(f"{spec.library} is not installed")
    module = importlib.import_module(spec.module)
    protocol = TorchBackend if spec.runtime == "torch" else BundleWriter
    assert isinstance(module, protocol), f"{spec.module} does not implement {protocol.__name__}"


@pytest.mark.parametrize("name", sorted(RUNTIMES))
def test_runtime_modules_import_and_implement_their_protocols(name):
    spec = RUNTIMES[name]
    if not all(_installed(i) for i, _ in spec.imports):
        pytest.skip(f"{name} is not installed")
    assert isinstance(importlib.import_module(spec.engine), EngineModule), spec.engine
    assert isinstance(importlib.import_module(spec.writer), BundleWriter), spec.writer


def test_every_shipped_recipe_is_supported_by_its_backend():
    for r in list_recipes():
        assert (r.scheme, r.weights.format) in BACKENDS[r.backend].supports, r.name


def test_a_missing_runtime_library_names_the_extra_a_device_installs(monkeypatch):
    real = catalogue._importable
    monkeypatch.setattr(catalogue, "_importable", lambda name: name != "onnxruntime" and real(name))
    with pytest.raises(MissingDependencyError, match=r"pip install 'edgeq\[runtime\]'"):
        catalogue.require_runtime(BACKENDS["onnx"], "bundle x")
    monkeypatch.setattr(catalogue, "_importable", lambda name: name != "torch" and real(name))
    with pytest.raises(MissingDependencyError, match=r"pip install 'edgeq\[quanto\]'.*onnx-int8-dynamic"):
        catalogue.require_runtime(BACKENDS["quanto"], "bundle y")
