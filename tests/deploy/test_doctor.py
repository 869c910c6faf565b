"""`edgeq doctor`: the host against what a bundle or target needs, one fix per problem."""

from __future__ import annotations

import json
import platform
import shutil

import pytest
from helpers import assert_one_line_error, edgeq

from edgeq.deploy import doctor as doctor_module
from edgeq.deploy import host
from edgeq.format.bundle import MANIFEST
from edgeq.util import installed_version

X86 = platform.machine() == "x86_64"


def report(*args) -> tuple[int, dict]:
    proc = edgeq("doctor", "--json", *args)
    assert "Traceback" not in proc.stderr, proc.stderr
    return proc.returncode, json.loads(proc.stdout)


def checks(rep: dict) -> dict:
    return {c["name"]: c for c in rep["checks"]}


def test_a_bundle_this_host_can_run_passes(tiny_onnx):
    rc, rep = report(tiny_onnx.path)
    assert rc == 0 and rep["ok"], rep["checks"]
    c = checks(rep)
    assert c["bundle"]["status"] == "ok" and "every file matches its sha256" in c["bundle"]["message"]
    assert c["runtime"]["status"] == "ok" and "onnxruntime" in c["runtime"]["message"]
    assert rep["needs"]["runtime"] == "onnxruntime" and rep["needs"]["peak_memory_mb_estimated"] > 100
    assert rep["host"]["memory_available_mb"] > 0 and rep["host"]["disk_free_mb"] > 0
    assert "CPUExecutionProvider" in rep["host"]["onnxruntime_providers"]
    text = edgeq("doctor", tiny_onnx.path)
    assert text.returncode == 0 and "ok    runtime" in text.stdout, text.stdout


def test_a_torch_runtime_bundle_this_host_can_run_passes(tiny_model, tmp_path):
    # The torch runtime's packages (safetensors among them) are read from this host, not from a list
    # of libraries kept for benchmark fingerprints: doctor once failed every torch bundle that way.
    import edgeq as lib

    b = lib.build("quanto-int8-dynamic", model=str(tiny_model), out=tmp_path / "q", language="en")
    rc, rep = report(b.path)
    assert rc == 0 and rep["ok"], rep["checks"]
    c = checks(rep)
    assert c["runtime"]["status"] == "ok" and "optimum-quanto" in c["runtime"]["message"]
    assert rep["needs"]["runtime"] == "torch"


@pytest.mark.skipif(not X86, reason="checks an x86 host against an arm64 target")
def test_wrong_arch_for_the_target_fails_with_the_fix(tiny_onnx):
    rc, rep = report(tiny_onnx.path, "--target", "rpi5")
    assert rc == 1 and not rep["ok"]
    arch = checks(rep)["arch"]
    assert arch["status"] == "fail" and arch["message"] == "this host is x86_64, target rpi5 is arm64"
    assert "edgeq doctor" in arch["fix"]


def test_unknown_target_suggests_close_names():
    assert_one_line_error(edgeq("doctor", "--target", "rpi6"), r"unknown target 'rpi6'; did you mean rpi5, rpi4\?")
    assert_one_line_error(edgeq("doctor", "--target", "jetson-orin"), r"did you mean jetson-orin-nano")


def test_cuda_on_a_host_without_a_gpu_fails_instead_of_falling_back(tiny_onnx):
    if host.cuda()["gpu"]:
        pytest.skip("this host has an NVIDIA GPU")
    rc, rep = report(tiny_onnx.path, "--device", "cuda")
    assert rc == 1
    c = checks(rep)["cuda"]
    assert c["status"] == "fail" and "no NVIDIA GPU" in c["message"] and "edgeq build" in c["fix"]
    rc, rep = report("--target", "jetson-orin-nano")
    assert rc == 1 and checks(rep)["cuda"]["status"] == "fail"
    assert "target jetson-orin-nano runs on cuda" in checks(rep)["cuda"]["message"]


def test_a_corrupt_or_newer_bundle_is_a_failed_check_with_its_fix(tiny_onnx, tmp_path):
    broken = tmp_path / "b"
    shutil.copytree(tiny_onnx.path, broken)
    with open(broken / "decoder.onnx", "r+b") as f:
        f.seek(100)
        byte = f.read(1)
        f.seek(100)
        f.write(bytes([byte[0] ^ 1]))
    rc, rep = report(broken)
    assert rc == 1 and checks(rep)["bundle"]["status"] == "fail"
    assert "decoder.onnx does not match its sha256" in checks(rep)["bundle"]["message"]
    assert "edgeq push" in checks(rep)["bundle"]["fix"]
    newer = tmp_path / "v2"
    shutil.copytree(tiny_onnx.path, newer)
    m = json.loads((newer / MANIFEST).read_text())
    m["format_version"] = 2
    (newer / MANIFEST).write_text(json.dumps(m))
    rc, rep = report(newer)
    assert rc == 1 and "bundle format version 2 is not supported" in checks(rep)["bundle"]["message"]
    assert "pip install -U" in checks(rep)["bundle"]["fix"]
    text = edgeq("doctor", newer)  # the text view keeps "[runtime]" (rich markup must not eat it)
    assert "edgeq[runtime]" in text.stdout, text.stdout


# --------------------------------------------------------------------------- a Jetson, from its facts

TEGRA = "# R36 (release), REVISION: 4.0, GCID: 37537400, BOARD: generic, EABI: aarch64, DATE: Fri Sep 13 04:36:44 UTC 2024\n"


def test_jetpack_is_read_from_nv_tegra_release(tmp_path, monkeypatch):
    release = tmp_path / "nv_tegra_release"
    release.write_text(TEGRA)
    monkeypatch.setattr(host, "TEGRA_RELEASE", release)
    assert host.jetson() == {"l4t": "36.4.0", "jetpack": "6.1"}
    release.write_text("# R35 (release), REVISION: 4.1, GCID: 33958178, BOARD: t186ref, EABI: aarch64\n")
    assert host.jetson() == {"l4t": "35.4.1", "jetpack": "5.1.2"}
    monkeypatch.setattr(host, "TEGRA_RELEASE", tmp_path / "absent")
    assert host.jetson() is None


def jetson_host(providers, ctranslate2=None) -> dict:
    """The facts `edgeq.deploy.host.describe()` reports on a Jetson Orin Nano with PyPI's wheels."""
    return {
        "arch": "arm64", "os": "Linux 5.15.148-tegra", "python": "3.10.12", "edgeq": "0.1.0",
        "cpu": {"model": "ARMv8 Processor rev 1 (v8l)", "board": "NVIDIA Jetson Orin Nano Developer Kit",
                "flags": ["fp", "asimd", "asimddp", "i8mm"], "key_flags": ["asimd", "asimddp", "i8mm"], "logical_cores": 6},
        "jetson": {"l4t": "36.4.0", "jetpack": "6.1"},
        "cuda": {"gpu": None, "driver_cuda": None, "toolkit": "12.6.68"},
        "libraries": {"onnxruntime": "1.32.0", "numpy": "2.2.0"}, "onnxruntime_providers": providers,
        "torch_cuda": False, "ctranslate2_cuda_devices": ctranslate2,
        "memory_total_mb": 7620, "memory_available_mb": 5000, "disk_free_mb": 20000,
    }


def test_on_a_jetson_pypi_onnxruntime_is_named_cpu_only_with_the_jetpack_wheel_as_fix(tiny_onnx, monkeypatch):
    monkeypatch.setattr(host, "describe", lambda _path=None: jetson_host(["CPUExecutionProvider"], ctranslate2=0))
    rep = doctor_module.doctor(tiny_onnx.path, target="jetson-orin-nano")
    c = {x.name: x for x in rep.checks}
    assert not rep.ok
    assert c["jetpack"].status == "ok" and "JetPack 6.1" in c["jetpack"].message
    assert c["cuda-runtime"].status == "fail"
    assert "PyPI's aarch64 onnxruntime wheels are CPU-only" in c["cuda-runtime"].message
    assert "refuses to fall back to the CPU" in c["cuda-runtime"].message
    assert "onnxruntime-gpu" in c["cuda-runtime"].fix and "jp6" in c["cuda-runtime"].fix
    assert c["ctranslate2"].status == "warn" and "CPU-only" in c["ctranslate2"].message
    monkeypatch.setattr(host, "describe", lambda _path=None: jetson_host(["CUDAExecutionProvider", "CPUExecutionProvider"]))
    rep = doctor_module.doctor(tiny_onnx.path, target="jetson-orin-nano")
    assert rep.ok, [x for x in rep.checks if x.status == "fail"]


def test_torch_cuda_build_is_read_without_importing_torch():
    import subprocess
    import sys

    code = ("import sys; from edgeq.deploy.host import torch_cuda; v = torch_cuda(); "
            "print(repr(v), 'torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out[-1] == "False"  # torch was not imported
    installed = installed_version("torch")
    if installed is None:
        assert out[0] == "False"
    elif "+cpu" in installed:  # this checkout's venv: the CPU build
        assert out[0] == "None"


def test_doctor_without_a_bundle_describes_the_host_and_its_runtime():
    rc, rep = report()
    assert rc == 0, rep["checks"]
    c = checks(rep)
    assert c["runtime"]["status"] == "ok" and "CPUExecutionProvider" in c["runtime"]["message"]
    assert rep["reads_format_version"] == 1 and rep["host"]["arch"] in ("x86_64", "arm64")
