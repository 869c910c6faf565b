"""What several test modules share (imported as `helpers`; conftest puts tests/ on sys.path)."""

from __future__ import annotations

import json
import os
import platform
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np

TESTS = Path(__file__).resolve().parent
REPO = TESTS.parent
SHARED = Path(os.environ.get("EDGEQ_SHARED", REPO.parent / "shared"))
WHISPER_BASE = SHARED / "models" / "whisper-base"
SPEECH_DEV = SHARED / "data" / "speech-dev"
PROBE = TESTS / "probe.py"
# The emulated AVX2 CPU (qemu-x86_64-static -cpu Haswell) of the int8-kernel tests
QEMU = shutil.which("qemu-x86_64-static")
X86 = platform.machine().lower() in ("x86_64", "amd64")
NO_EMULATED_AVX2 = "needs an x86-64 host with qemu-x86_64-static (apt-get install qemu-user-static)"
# The masked CPUID of benchmarks/cpuid_mask.c: another CPU's kernels at native speed
NO_CPUID_MASK = "needs an x86-64 Linux CPU with CPUID faulting (cpuid_fault in /proc/cpuinfo) and gcc"


def cpuid_fault() -> bool:
    from edgeq.util import cpuinfo

    return X86 and "cpuid_fault" in cpuinfo()[1] and shutil.which("gcc") is not None


def masked_cpu_env(mask: str, folder: Path) -> dict:
    """This process's environment, with CPUID masked to `mask` ("avx2" or "vnni") for a child."""
    sys.path.insert(0, str(REPO / "benchmarks"))
    try:
        from _common import cpuid_mask_env
    finally:
        sys.path.remove(str(REPO / "benchmarks"))
    return {**os.environ, **cpuid_mask_env(mask, folder)}


def real_data_available() -> bool:
    return (WHISPER_BASE / "model.safetensors").is_file() and SPEECH_DEV.is_dir()


def tone(seconds: float, rate: int = 16000, freq: float = 440.0, channels: int = 1) -> np.ndarray:
    t = np.arange(int(seconds * rate)) / rate
    rng = np.random.default_rng(0)
    x = 0.2 * np.sin(2 * np.pi * freq * t) * (1 + 0.5 * np.sin(2 * np.pi * 3 * t)) + 0.01 * rng.standard_normal(t.size)
    x = x.astype(np.float32)
    return np.stack([x] * channels, axis=1) if channels > 1 else x


def tone_dataset(folder: Path, n: int) -> Path:
    """A manifest dataset of `n` tones of growing length and pitch, each with a reference text."""
    import soundfile as sf

    rows = []
    for i in range(n):
        sf.write(folder / f"u{i}.wav", tone(1.0 + 0.25 * i, freq=200 + 60 * i), 16000)
        rows.append(f"u{i}.wav\thello world number {i}\n")
    (folder / "manifest.tsv").write_text("file\ttranscript\n" + "".join(rows))
    return folder / "manifest.tsv"


def each(names, make) -> dict:
    """name -> make(name), or the exception it raised: a module-scoped fixture builds every recipe
    once, and a broken recipe fails its own tests (through `outcome`), not the whole module."""
    out = {}
    for name in names:
        try:
            out[name] = make(name)
        except Exception as err:
            out[name] = err
    return out


def outcome(results: dict, name: str):
    item = results[name]
    if isinstance(item, Exception):
        raise item
    return item


def edgeq(*args, cwd=None, env=None) -> subprocess.CompletedProcess:
    """The CLI in a fresh process, as a user runs it."""
    return subprocess.run([sys.executable, "-m", "edgeq.cli", *map(str, args)], capture_output=True,
                          text=True, cwd=cwd, env=env, timeout=600)


def assert_one_line_error(proc: subprocess.CompletedProcess, pattern: str) -> None:
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr + proc.stdout
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, proc.stderr
    assert re.search(pattern, lines[0]), lines[0]


def manifest_fields(name: str = "demo", backend: str = "float", weights: str = "float32") -> dict:
    """What a builder's populate() returns for a bundle written by hand in a test (write_bundle
    adds `files` and the size totals, then validates the whole manifest)."""
    from edgeq.spec.catalogue import BACKENDS

    scheme = "none" if weights.startswith("float") else "dynamic"
    return {
        "edgeq_version": "0", "created": "2026-01-01T00:00:00+00:00", "runtime": BACKENDS[backend].runtime,
        "source": {"model": "test", "revision": None, "weights_sha256": "0" * 64},
        "recipe": {"name": name, "backend": backend, "scheme": scheme, "weights": {"format": weights}},
        "backend": {"name": backend, "library": BACKENDS[backend].library, "version": None},
        "requires": {"extra": BACKENDS[backend].device_extra, "packages": {}, "devices": ["cpu"]},
        "decoding": {"language": None, "task": "transcribe"},
        "build": {"seconds": 1.0, "host": {}, "libraries": {}},
        "size": {"reference_fp32_weights_bytes": 4000},
    }


def json_values(max_leaves: int = 20):
    """Hypothesis: any JSON document (for readers that must answer with a result or an EdgeqError)."""
    from hypothesis import strategies as st

    leaves = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20)
    return st.recursive(leaves, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner,
                                                                                            max_size=4),
                        max_leaves=max_leaves)


def mutated(valid, data):
    """Hypothesis: `valid` (a JSON document) with one value somewhere replaced, or one key dropped or
    added. Random documents rarely get past a reader's first check; these reach every later one."""
    from hypothesis import strategies as st

    doc = json.loads(json.dumps(valid))
    node, path = doc, []
    while isinstance(node, (dict, list)) and node and data.draw(st.booleans(), "descend"):
        key = data.draw(st.sampled_from(sorted(node) if isinstance(node, dict) else range(len(node))), "key")
        path.append(key)
        node = node[key]
    action = data.draw(st.sampled_from(["replace", "drop", "add"]), "action")
    if not path:
        return data.draw(json_values(), "document") if action == "replace" else doc
    parent = doc
    for key in path[:-1]:
        parent = parent[key]
    if action == "replace" or not isinstance(parent, dict):
        parent[path[-1]] = data.draw(json_values(), "value")
    elif action == "drop":
        del parent[path[-1]]
    else:
        parent[data.draw(st.text(max_size=10), "new key")] = data.draw(json_values(), "value")
    return doc


def answers_or_one_line_error(read):
    """Property tests: `read()` returns a result or raises an EdgeqError of one non-empty line;
    any other exception propagates and fails the test."""
    from edgeq.errors import EdgeqError

    try:
        return read()
    except EdgeqError as err:
        assert "\n" not in str(err) and str(err)
        return None


def with_file(name: str, content: bytes, run) -> None:
    """Call `run(path)` with `content` written to a fresh temporary folder as `name`, then remove it
    (hypothesis calls a test many times per pytest invocation, so tmp_path cannot be used)."""
    import shutil
    import tempfile

    folder = Path(tempfile.mkdtemp())
    try:
        (folder / name).write_bytes(content)
        run(folder / name)
    finally:
        shutil.rmtree(folder)


def property_settings():
    """Hypothesis settings of the fast tier's property tests: 150 examples, no deadline (a
    loaded CI machine is slow, not wrong)."""
    from hypothesis import HealthCheck, settings

    return settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
