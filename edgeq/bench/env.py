"""The environment fingerprint every result carries: where and with what it was measured."""

from __future__ import annotations

import os
import platform
import subprocess
from functools import lru_cache
from pathlib import Path

from edgeq import __version__
from edgeq.util import cpuinfo, installed_versions

# Flags that change how fast quantized kernels are; the full list is kept too.
KEY_FLAGS = (
    "avx", "avx2", "fma", "f16c", "avx512f", "avx512bw", "avx512vl", "avx512_vnni", "avx_vnni",
    "avx512_bf16", "amx_int8", "amx_bf16", "asimd", "asimddp", "i8mm", "sve", "bf16", "neon",
)
LIBRARIES = (
    "numpy", "onnxruntime", "onnxruntime-gpu", "tokenizers", "safetensors", "torch", "transformers", "optimum-quanto",
    "hqq", "bitsandbytes", "onnx", "faster-whisper", "ctranslate2", "pywhispercpp",
)


def _device_tree_model() -> str | None:
    # Raspberry Pi and Jetson name themselves here; /proc/cpuinfo only says "Cortex-A76".
    try:
        return Path("/proc/device-tree/model").read_text().strip("\x00\n ") or None
    except OSError:
        return None


def _read(path: str) -> str | None:
    try:
        return Path(path).read_text().strip() or None
    except OSError:
        return None


def cpu_clock() -> dict:
    """Frequency governor, current/max clock and SoC temperature where Linux exposes them (a Pi or Jetson
    that throttles when hot runs slower than the same board cold: results must say which)."""
    freq = _read("/sys/devices/system/cpu/cpu0/cpufreq/scaling_cur_freq")
    top = _read("/sys/devices/system/cpu/cpu0/cpufreq/cpuinfo_max_freq")
    temps = []
    for zone in sorted(Path("/sys/class/thermal").glob("thermal_zone*")):
        t = _read(str(zone / "temp"))
        if t and t.lstrip("-").isdigit():
            temps.append(int(t) / 1000)
    return {
        "governor": _read("/sys/devices/system/cpu/cpu0/cpufreq/scaling_governor"),
        "freq_mhz": int(freq) // 1000 if freq and freq.isdigit() else None,
        "max_freq_mhz": int(top) // 1000 if top and top.isdigit() else None,
        "temperature_c": max(temps) if temps else None,
    }


def _git_commit() -> str | None:
    repo = Path(__file__).resolve().parents[2]
    if not (repo / ".git").exists():
        return None
    try:
        out = subprocess.run(["git", "-C", str(repo), "rev-parse", "--short", "HEAD"],
                             capture_output=True, text=True, timeout=5)
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


@lru_cache(maxsize=1)
def fingerprint() -> dict:
    import psutil

    model, flags = cpuinfo()
    versions = installed_versions(LIBRARIES)
    return {
        "cpu": {
            "model": model,
            "board": _device_tree_model(),
            "key_flags": [f for f in KEY_FLAGS if f in flags],
            "flags": flags,
            "logical_cores": os.cpu_count(),
            "physical_cores": psutil.cpu_count(logical=False),
            **cpu_clock(),
        },
        "memory_total_mb": round(psutil.virtual_memory().total / 2**20),
        "os": f"{platform.system()} {platform.release()}",
        "arch": platform.machine(),
        "python": platform.python_version(),
        "libraries": versions,
        "edgeq": {"version": __version__, "commit": _git_commit()},
    }


def gpu_info() -> dict | None:
    """Name and memory of the CUDA device, when torch sees one (never imports torch itself)."""
    import sys

    torch = sys.modules.get("torch")
    if torch is None or not torch.cuda.is_available():
        return None
    props = torch.cuda.get_device_properties(0)
    return {"name": props.name, "memory_mb": round(props.total_memory / 2**20), "cuda": torch.version.cuda}
