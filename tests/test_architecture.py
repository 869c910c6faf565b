"""The package's layers, enforced by reading every import (module-level and inside functions).

`spec`, `format` and `runtime` are what a device with only `edgeq[runtime]` runs: they must never
import torch, transformers, onnx (the exporter's library; onnxruntime is the runtime's), the
quantization libraries, or the workstation side of edgeq. `data` and `bench` run on the device too
and may reach torch only through `edgeq.torch_runtime` (for torch bundles and `--model` baselines).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "edgeq"

# pydantic: 17 MB resident and ~0.06 s at a device's every load; edgeq's schemas are msgspec (edgeq/schema.py).
HEAVY = {"torch", "transformers", "onnx", "onnxscript", "optimum", "hqq", "bitsandbytes", "safetensors",
         "huggingface_hub", "pydantic"}
# sweep builds bundles (it calls edgeq.builder.pipeline.build): workstation side, never on a device.
WORKSTATION = {"edgeq.builder", "edgeq.backends", "edgeq.torch_runtime", "edgeq.sweep"}
# edgeq/__init__.py is the public facade: it imports each layer lazily, inside __getattr__, so
# `import edgeq` stays torch-free (tests/test_cli.py checks that in a fresh process).
TORCH_FREE = ("spec", "format", "runtime", "data", "deploy", "util.py", "errors.py", "schema.py")


def imports(path: Path) -> list[tuple[int, str]]:
    """Every module an import statement in `path` names (absolute; relative imports resolved)."""
    tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
    package = ".".join(path.relative_to(PACKAGE.parent).with_suffix("").parts[:-1])
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(parts + ([base] if base else []))
            found.append((node.lineno, base))
            # `from edgeq import builder` imports the submodule edgeq.builder.
            found += [(node.lineno, f"{base}.{alias.name}") for alias in node.names]
    return found


def _files(*roots: str) -> list[Path]:
    out = []
    for root in roots:
        p = PACKAGE / root
        out += sorted(p.rglob("*.py")) if p.is_dir() else [p]
    return out


def _forbidden(name: str, extra: set[str]) -> bool:
    top = name.split(".")[0]
    return top in HEAVY or any(name == w or name.startswith(w + ".") for w in extra)


@pytest.mark.parametrize("path", _files(*TORCH_FREE), ids=lambda p: str(p.relative_to(PACKAGE)))
def test_device_side_never_imports_torch_or_the_build_side(path):
    bad = [f"{path.name}:{line} imports {name}" for line, name in imports(path) if _forbidden(name, WORKSTATION)]
    assert not bad, bad


@pytest.mark.parametrize("path", _files("bench"), ids=lambda p: str(p.relative_to(PACKAGE)))
def test_bench_reaches_torch_only_through_the_torch_runtime(path):
    allowed = {"edgeq.torch_runtime"}
    bad = [f"{path.name}:{line} imports {name}" for line, name in imports(path)
           if _forbidden(name, WORKSTATION - allowed)]
    assert not bad, bad


def test_the_checker_sees_lazy_and_relative_imports(tmp_path):
    # The rule must catch an import hidden inside a function, or it would pass on anything.
    probe = PACKAGE / "runtime" / "_probe_for_test.py"
    probe.write_text("def f():\n    import torch\n    from ..builder import pipeline\n")
    try:
        names = [n for _, n in imports(probe)]
    finally:
        probe.unlink()
    assert "torch" in names and "edgeq.builder.pipeline" in names
    assert _forbidden("torch", set()) and _forbidden("edgeq.builder.pipeline", WORKSTATION)


def test_every_module_belongs_to_a_layer():
    # A new top-level module must be placed deliberately (and, if device-side, added to TORCH_FREE).
    top = sorted(p.name for p in PACKAGE.iterdir() if p.name != "__pycache__" and not p.name.startswith("_data"))
    assert top == sorted(["__init__.py", "backends", "bench", "builder", "cli.py", "data", "deploy", "errors.py", "format",
                          "runtime", "schema.py", "spec", "sweep", "torch_runtime.py", "util.py"])
