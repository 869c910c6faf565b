"""What this host has for running bundles: CPU and its flags, CUDA, a Jetson's JetPack, libraries, RAM, disk.

Read from files the OS exposes (/proc, /etc/nv_tegra_release, /usr/local/cuda, the installed
distributions' metadata) and from `nvidia-smi` where it exists; never by importing torch.
"""

from __future__ import annotations

import importlib.util
import json
import platform
import re
import shutil
import subprocess
from pathlib import Path

from edgeq import __version__
from edgeq.bench.env import fingerprint

TEGRA_RELEASE = Path("/etc/nv_tegra_release")
CUDA_HOME = Path("/usr/local/cuda")

# L4T (Linux for Tegra) release -> JetPack, from NVIDIA's JetPack release notes (not checked on a
# Jetson here). CUDA builds of onnxruntime, torch and CTranslate2 must match the JetPack release.
JETPACK = {
    "32.7": "4.6", "35.1": "5.0.2", "35.2": "5.1", "35.3": "5.1.1", "35.4": "5.1.2", "35.5": "5.1.3",
    "35.6": "5.1.4", "36.2": "6.0 DP", "36.3": "6.0", "36.4": "6.1",
}


def jetson() -> dict | None:
    """{"l4t": "36.4.0", "jetpack": "6.1"} on a Jetson (from /etc/nv_tegra_release), else None."""
    try:
        text = TEGRA_RELEASE.read_text()
    except OSError:
        return None
    m = re.search(r"R(\d+)\s*\(release\),\s*REVISION:\s*([\d.]+)", text)
    if not m:
        return {"l4t": None, "jetpack": None, "raw": text.strip().splitlines()[0] if text.strip() else ""}
    major, revision = m.group(1), m.group(2)
    l4t = f"{major}.{revision}"
    minor = revision.split(".")[0]
    return {"l4t": l4t, "jetpack": JETPACK.get(f"{major}.{minor}")}


def cuda() -> dict:
    """The GPU and CUDA this host has: toolkit version (/usr/local/cuda), driver's CUDA (nvidia-smi)."""
    info: dict = {"gpu": None, "driver_cuda": None, "toolkit": None}
    for name in ("version.json", "version.txt"):
        f = CUDA_HOME / name
        if f.is_file():
            text = f.read_text(errors="replace")
            if name.endswith(".json"):
                try:
                    info["toolkit"] = json.loads(text).get("cuda", {}).get("version")
                except json.JSONDecodeError:
                    pass
            elif m := re.search(r"CUDA Version\s+([\d.]+)", text):
                info["toolkit"] = m.group(1)
            break
    smi = shutil.which("nvidia-smi")
    if smi:
        try:
            out = subprocess.run([smi], capture_output=True, text=True, timeout=20).stdout
            names = subprocess.run([smi, "--query-gpu=name", "--format=csv,noheader"], capture_output=True,
                                   text=True, timeout=20).stdout.strip().splitlines()
            info["gpu"] = names[0].strip() if names else None
            if m := re.search(r"CUDA Version:\s*([\d.]+)", out):
                info["driver_cuda"] = m.group(1)
        except (OSError, subprocess.SubprocessError):
            pass
    if info["gpu"] is None and (Path("/dev/nvidia0").exists() or Path("/dev/nvhost-gpu").exists()
                                or Path("/dev/nvgpu").exists()):
        info["gpu"] = "NVIDIA GPU (device node present)"
    return info


def onnxruntime_providers() -> list[str] | None:
    """ONNX Runtime's execution providers, or None when it is not installed (onnxruntime is the runtime
    itself, allowed on the device; importing it takes ~0.2 s)."""
    if importlib.util.find_spec("onnxruntime") is None:
        return None
    import onnxruntime

    return list(onnxruntime.get_available_providers())


def torch_cuda() -> str | None | bool:
    """The CUDA version the installed torch was built with, read from torch/version.py without importing
    torch; None: a CPU build; False: torch is not installed."""
    spec = importlib.util.find_spec("torch")
    if spec is None or not spec.origin:
        return False
    try:
        text = (Path(spec.origin).parent / "version.py").read_text()
    except OSError:
        return None
    m = re.search(r"^cuda\s*(?::[^=]*)?=\s*['\"]([\d.]+)['\"]", text, re.M)
    return m.group(1) if m else None


def ctranslate2_cuda() -> int | None:
    """CUDA devices CTranslate2 sees (0 for PyPI's CPU-only aarch64 wheels); None when not installed."""
    if importlib.util.find_spec("ctranslate2") is None:
        return None
    import ctranslate2

    return int(ctranslate2.get_cuda_device_count())


def describe(disk_path: Path | None = None) -> dict:
    import psutil

    fp = fingerprint()
    vm = psutil.virtual_memory()
    disk = shutil.disk_usage(disk_path or Path.cwd())
    return {
        "arch": _arch(),
        "cpu": fp["cpu"],
        "os": fp["os"],
        "python": platform.python_version(),
        "jetson": jetson(),
        "cuda": cuda(),
        "libraries": fp["libraries"],
        "onnxruntime_providers": onnxruntime_providers(),
        "torch_cuda": torch_cuda(),
        "ctranslate2_cuda_devices": ctranslate2_cuda(),
        "memory_total_mb": round(vm.total / 2**20),
        "memory_available_mb": round(vm.available / 2**20),
        "disk_free_mb": round(disk.free / 2**20),
        "edgeq": __version__,
    }


def _arch() -> str:
    machine = platform.machine().lower()
    return {"aarch64": "arm64", "arm64": "arm64", "x86_64": "x86_64", "amd64": "x86_64"}.get(machine, machine)
