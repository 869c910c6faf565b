"""Which int8 GEMM ONNX Runtime runs on this CPU: its flags say, and one small product checks.

Why it matters: an int8 bundle's `encoder.vnni.onnx` (backends.onnx_vnni) multiplies uint8
activations by *int8* weights. That is exact where ONNX Runtime's MLAS runs a VNNI or AMX kernel
(`vpdpbusd` adds u8 x s8 products into int32), and not on AVX2 or AVX-512 without VNNI, whose
`vpmaddubsw` adds each pair of products into a *saturating* int16: 255 x 127 x 2 does not fit. The
loss is not small: whisper-base onnx-int8-dynamic under `qemu-x86_64-static -cpu Haswell` (ONNX
Runtime's AVX2 kernels), 2 speech-dev clips, transcribed "Stuff it into you, his belly counseled
him." as "and" with that graph (WER 27.8 %), word for word right with encoder.onnx (2.8 %, the
same as on the host).

MLAS picks its kernels by CPUID; edgeq reads the flags in /proc/cpuinfo, which say the same on a
real CPU or a virtual machine, but not under an emulator such as qemu-user, which shows the host's
/proc/cpuinfo while it emulates another CPU (the run above). So where the flags promise VNNI, one
[1, 16] x [16, 16] product of 255s by 127s goes through ONNX Runtime, with the weights a constant
as the encoder's are (prepacked, the same kernel), and only an exact result takes the int8-weights
graph. It costs 4-5 ms once per process, on CPUs whose flags list VNNI only.
"""

from __future__ import annotations

import functools
import logging
import platform

import numpy as np

from edgeq.util import cpuinfo

log = logging.getLogger(__name__)

# Flags (Linux /proc/cpuinfo names) under which MLAS multiplies uint8 activations by int8 weights
# with a VNNI instruction (AvxVnni, Avx512Vnni kernels) or AMX (mlas/lib/platform.cpp's dispatch).
VNNI_FLAGS = frozenset({"avx512_vnni", "avx_vnni", "amx_int8"})

K = N = 16
# The probe's model, serialized: MatMulInteger(a: uint8 [1, 16], b: int8 [16, 16] constant, all
# 127) -> y: int32 [1, 16], opset 10, no zero points. Bytes rather than onnx.helper calls because
# `import onnx` alone takes 0.67 s, and a device needs no onnx; tests/runtime/test_int8_kernels.py
# builds it with onnx.helper and checks these bytes are that model.
PROBE_MODEL = (
    b"\x08\x05\x12\x05edgeq:\xd9\x02\n\x18\n\x01a\n\x01b\x12\x01y\"\rMatMulInteger\x12\x04u8s8"
    b"*\x8c\x02\x08\x10\x08\x10\x10\x03B\x01bJ\x80\x02"
    + b"\x7f" * (K * N)
    + b"Z\x13\n\x01a\x12\x0e\n\x0c\x08\x02\x12\x08\n\x02\x08\x01\n\x02\x08\x10"
    b"b\x13\n\x01y\x12\x0e\n\x0c\x08\x06\x12\x08\n\x02\x08\x01\n\x02\x08\x10B\x04\n\x00\x10\n"
)
EXACT = 255 * 127 * K  # what every output is when nothing saturates (int16 pairs: 8 * 32767)


def x86() -> bool:
    """An x86-64 CPU (where MLAS has int8 kernels that saturate and kernels that do not)."""
    return platform.machine().lower() in ("x86_64", "amd64")


def cpu_has_vnni() -> bool:
    """An x86-64 CPU with VNNI, by its flags (none read, as where there is no /proc/cpuinfo: no)."""
    return x86() and bool(VNNI_FLAGS & set(cpuinfo()[1]))


@functools.cache
def signed_weights_exact() -> bool:
    """Whether ONNX Runtime multiplies uint8 by int8 without saturating here, by running the probe."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL  # run it, not fold it
    options.intra_op_num_threads = 1
    options.log_severity_level = 3
    session = ort.InferenceSession(PROBE_MODEL, options, providers=["CPUExecutionProvider"])
    out = session.run(None, {"a": np.full((1, K), 255, np.uint8)})[0]
    return bool((out == EXACT).all())


def vnni_kernels() -> bool:
    """Whether this CPU should run int8 weights: its flags list VNNI and ONNX Runtime's kernel
    agrees (see the module's docstring for when they differ)."""
    if not cpu_has_vnni():
        return False
    if signed_weights_exact():
        return True
    log.info("this CPU's flags list VNNI, but ONNX Runtime's u8 x s8 product saturates here (an "
             "emulator?): the int8 bundles' portable encoder runs")
    return False


def flags_overstate_vnni() -> bool:
    """The flags list VNNI but ONNX Runtime's kernels are not VNNI's: the flags do not stand for
    the kernels here, nor for how ONNX Runtime packs weights for them (runtime.prepared's key)."""
    return cpu_has_vnni() and not signed_weights_exact()
