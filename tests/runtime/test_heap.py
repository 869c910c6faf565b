"""edgeq.runtime.heap: while loading, freed large buffers go back to the kernel; afterwards they are kept
for reuse (glibc only)."""

from __future__ import annotations

import os
import platform
import subprocess
import sys
import textwrap

import pytest

pytestmark = pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="heap tuning is glibc-only")

# given_back(mib): allocate and free `mib` MiB; how many MiB of RSS the free gave back.
GIVEN_BACK = textwrap.dedent("""
    import numpy as np
    import psutil
    from edgeq.runtime import heap

    def rss():
        return psutil.Process().memory_info().rss / 2**20

    def given_back(mib):
        b = np.ones(mib * 2**20 // 8)
        held = rss()
        del b
        return held - rss()
""")
# Free a 30 MiB block (untuned glibc then raises its mmap threshold to 30 MiB), then allocate and
# free 20 MiB inside heap.loading() and again after it: print how many MiB each free gave back.
PROBE = GIVEN_BACK + textwrap.dedent("""
    a = np.ones(30 * 2**20 // 8); del a
    with heap.loading():
        loading = given_back(20)
    print(heap.active(), loading, given_back(20))
""")


def _probe(**env) -> tuple[str, float, float]:
    proc = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, timeout=120,
                          env={**os.environ, **env})
    assert proc.returncode == 0, proc.stderr[-2000:]
    active, loading, after = proc.stdout.split()
    return active, float(loading), float(after)


def test_loading_gives_freed_buffers_back_and_inference_keeps_them():
    active, loading, after = _probe()
    assert active == "True"
    assert loading == pytest.approx(20, abs=3)
    assert after < 3  # reused by the next call instead of being faulted in again


def test_untuned_glibc_keeps_freed_buffers_and_the_switch_turns_tuning_off():
    active, loading, after = _probe(EDGEQ_HEAP_TUNING="0")
    assert active == "False"
    assert loading < 3  # the behaviour edgeq.runtime.heap exists for


# After loading (inference thresholds), free an 8 MiB block inside heap.large_blocks_mapped(), then
# one after it: print how many MiB each free gave back.
ENCODING = GIVEN_BACK + textwrap.dedent("""
    with heap.loading():
        pass
    with heap.large_blocks_mapped():
        inside = given_back(8)
    print(inside, given_back(8))
""")


def test_large_blocks_mapped_gives_an_encoder_s_freed_activations_back_only_inside():
    proc = subprocess.run([sys.executable, "-c", ENCODING], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    inside, after = (float(x) for x in proc.stdout.split())
    assert inside == pytest.approx(8, abs=1.5)  # an encoder's 4 MiB-and-larger blocks are unmapped when freed
    assert after < 2  # afterwards (a decoder step's blocks) they stay on the heap for reuse


# Map a 16 MiB file twice, privately and writable, as ONNX Runtime maps external data; read every
# page of both, write one byte in the second; release both: print (released mappings, MiB of RSS
# given back, the two mappings' first bytes afterwards).
MAPPED = textwrap.dedent("""
    import mmap, sys
    import numpy  # noqa: F401  (imported by the runtime anyway; not counted in the RSS given back)
    import psutil
    from edgeq.runtime import heap

    def rss():
        return psutil.Process().memory_info().rss / 2**20

    path = sys.argv[1]
    with open(path, "r+b") as f:
        read_only = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_COPY)
        written = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_COPY)
    total = sum(read_only[i] + written[i] for i in range(0, len(read_only), 4096))  # every page resident
    written[0] = 7  # a private copy of that page: the mapping is no longer only the file's bytes
    before = rss()
    n = heap.release_mapped([path])
    print(n, round(before - rss()), read_only[0], written[0], sum(read_only[i] for i in range(0, len(read_only), 4096)))
""")


def test_release_mapped_drops_unwritten_file_pages_and_keeps_written_ones(tmp_path):
    path = tmp_path / "weights.onnx.data"
    path.write_bytes(bytes([1]) * (16 * 2**20))
    proc = subprocess.run([sys.executable, "-c", MAPPED, str(path)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    released, freed, first, written_first, page_sum = proc.stdout.split()
    assert released == "1"  # the read-only-used mapping; the written one is left alone
    assert 14 <= int(freed) <= 17  # its 16 MiB left the RSS
    assert (first, written_first) == ("1", "7")  # the file's byte faults back in; the write is kept
    assert int(page_sum) == 16 * 2**20 // 4096
