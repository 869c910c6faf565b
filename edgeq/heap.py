"""Keep the process's resident memory close to what is live, on glibc (Linux).

Why: glibc's malloc raises its mmap threshold to the size of the largest block freed so far (up
to 32 MiB). After ONNX Runtime has staged a model's weights (buffers of several MiB, freed once
the session holds its own copies), every later large buffer — the encoder's per-op activations,
a 30 s window's features — comes from the heap instead of a private mapping, and freed heap
memory is rarely given back: it stays in RSS for the rest of the run. Measured on whisper-base
onnx-int8-dynamic, 4 utterances, 2 threads: peak RSS 311 -> 284 MB, same speed.

`tune()` fixes the threshold at 256 KiB (glibc's dynamic threshold off, as MALLOC_MMAP_THRESHOLD_
does) so buffers above it are mapped and unmapped; `trim()` returns free heap pages to the
kernel (malloc_trim), useful once after loading, when the model file's parse buffers and the
tokenizer's JSON are gone. Both are process-wide, which is why edgeq does this only when a bundle
is loaded for inference, and EDGEQ_HEAP_TUNING=0 turns it off. Elsewhere (macOS, musl) they do
nothing.
"""

from __future__ import annotations

import ctypes
import logging
import os
import platform

log = logging.getLogger(__name__)

M_MMAP_THRESHOLD = -3  # from glibc's malloc.h
MMAP_THRESHOLD_BYTES = 256 * 1024

_libc = None


def _glibc():
    global _libc
    if _libc is None:
        _libc = False
        if os.environ.get("EDGEQ_HEAP_TUNING", "1") != "0" and platform.libc_ver()[0] == "glibc":
            try:
                _libc = ctypes.CDLL("libc.so.6")
            except OSError:  # a glibc without the usual soname: leave malloc as it is
                log.debug("libc.so.6 not loadable; heap tuning off")
    return _libc or None


def tune() -> bool:
    """Fix glibc's mmap threshold (large buffers go back to the kernel when freed)."""
    libc = _glibc()
    return bool(libc and libc.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES))


def trim() -> bool:
    """Give free heap memory back to the kernel."""
    libc = _glibc()
    return bool(libc and libc.malloc_trim(0))
