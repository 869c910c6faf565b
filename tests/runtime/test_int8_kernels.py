"""runtime.int8_kernels: the probe that decides whether int8 weights run exactly on this CPU.

The emulated tests run Python under `qemu-x86_64-static -cpu Haswell`: ONNX Runtime then sees an
AVX2 CPU (CPUID) and runs its AVX2 kernels, while /proc/cpuinfo still shows the host's flags, the
one case where the flags and the kernels disagree (installed by .ci/run; skipped without it).
The masked tests make the same case natively: benchmarks/cpuid_mask.c answers CPUID with the
AVX-512, VNNI and AMX bits cleared (on CPUs that let Linux make CPUID fault).
"""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest
from helpers import NO_CPUID_MASK, NO_EMULATED_AVX2, QEMU, X86, cpuid_fault, masked_cpu_env

pytest.importorskip("onnxruntime")

from edgeq.runtime import int8_kernels  # noqa: E402

needs_qemu = pytest.mark.skipif(not (QEMU and X86), reason=NO_EMULATED_AVX2)
needs_cpuid_mask = pytest.mark.skipif(not cpuid_fault(), reason=NO_CPUID_MASK)

CHOICE = ("from edgeq.runtime import int8_kernels as k, onnx_engine as e\n"
          "from edgeq.schema import replace\n"
          "from edgeq.format.layout import OnnxLayout\n"
          "layout = OnnxLayout.for_dims(n_mels=80, n_audio_ctx=1500, n_layers=1, heads=1, head_dim=8, vocab_size=10,\n"
          "                             max_target_positions=8)\n"
          "layout = replace(layout, encoder_vnni='encoder.vnni.onnx')\n"
          "print(k.cpu_has_vnni(), k.signed_weights_exact(), e._encoder_graph(layout, 'cpu'))\n")


def emulated_avx2(code: str, env: dict | None = None, timeout: float = 300) -> str:
    """Run `code` in this Python under an emulated AVX2 CPU (Haswell); its stdout."""
    proc = subprocess.run([QEMU, "-cpu", "Haswell", sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, **(env or {})})
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc.stdout


def test_the_probe_model_is_the_product_it_says():
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper, numpy_helper

    k, n = int8_kernels.K, int8_kernels.N
    weights = numpy_helper.from_array(np.full((k, n), 127, np.int8), "b")
    graph = helper.make_graph([helper.make_node("MatMulInteger", ["a", "b"], ["y"])], "u8s8",
                              [helper.make_tensor_value_info("a", TensorProto.UINT8, [1, k])],
                              [helper.make_tensor_value_info("y", TensorProto.INT32, [1, n])], [weights])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 10)], producer_name="edgeq")
    model.ir_version = 5
    onnx.checker.check_model(model)
    assert model.SerializeToString() == int8_kernels.PROBE_MODEL


@pytest.mark.skipif(not X86, reason="the flags that choose int8 weights are x86's")
def test_on_this_cpu_the_probe_and_the_flags_agree():
    # On a real CPU (or a VM) MLAS's dispatch and /proc/cpuinfo say the same: VNNI flags, exact
    # u8 x s8 products; none, saturating ones (AVX2 and AVX-512 without VNNI alike).
    assert int8_kernels.signed_weights_exact() == int8_kernels.cpu_has_vnni()
    assert not int8_kernels.flags_overstate_vnni()


def test_where_the_flags_overstate_vnni_prepared_copies_get_their_own_key(monkeypatch):
    from edgeq.runtime import prepared

    monkeypatch.setattr(int8_kernels, "flags_overstate_vnni", lambda: False)
    host = prepared._cpu()
    monkeypatch.setattr(int8_kernels, "flags_overstate_vnni", lambda: True)
    assert prepared._cpu() == host + "|u8s8 saturates"


@needs_qemu
def test_on_an_emulated_avx2_cpu_the_probe_saturates_and_the_portable_encoder_is_chosen():
    out = emulated_avx2(CHOICE)
    flags, exact, graph = out.split()
    assert flags == str(int8_kernels.cpu_has_vnni())  # the host's flags, whatever they are
    assert (exact, graph) == ("False", "encoder.onnx")


def masked(code: str, mask: str, folder) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                          env=masked_cpu_env(mask, folder))


@needs_cpuid_mask
def test_with_cpuid_masked_to_avx2_the_probe_saturates_and_the_portable_encoder_is_chosen(tmp_path):
    # ONNX Runtime's real AVX2 kernels at native speed, /proc/cpuinfo unchanged: as under qemu.
    proc = masked(CHOICE, "avx2", tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    flags, exact, graph = proc.stdout.split()
    assert flags == str(int8_kernels.cpu_has_vnni())
    assert (exact, graph) == ("False", "encoder.onnx")


@needs_cpuid_mask
def test_the_cpuid_mask_hides_the_extensions_it_names_and_keeps_the_rest(tmp_path):
    # numpy reads CPUID for its own dispatch: what it sees is what every library sees.
    code = ("from numpy._core._multiarray_umath import __cpu_features__ as f\n"
            "print(*(int(f[k]) for k in ('SSE42', 'AVX2', 'FMA3', 'AVX512F', 'AVX512_SPR')))")
    host = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    proc = masked(code, "avx2", tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.split() == host[:3] + ["0", "0"]


@needs_cpuid_mask
def test_an_unknown_cpuid_mask_is_refused_in_one_line(tmp_path):
    env = masked_cpu_env("avx2", tmp_path)
    proc = subprocess.run([sys.executable, "-c", "print('ran')"], capture_output=True, text=True,
                          env={**env, "EDGEQ_CPUID_MASK": "avx9"})
    assert proc.returncode == 3 and proc.stdout == ""
    assert proc.stderr.strip() == "cpuid_mask: EDGEQ_CPUID_MASK=avx9: expected avx2 or vnni"
