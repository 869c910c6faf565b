"""edgeq.heap: glibc keeps large freed buffers in RSS unless the mmap threshold is fixed."""

from __future__ import annotations

import os
import platform
import subprocess
import sys
import textwrap

import pytest

pytestmark = pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="heap tuning is glibc-only")

# Free a 30 MiB block (glibc then raises its mmap threshold to 30 MiB), then allocate and free
# 20 MiB: print how much of the 20 MiB the process gave back to the kernel.
PROBE = textwrap.dedent("""
    import numpy as np
    from edgeq import heap
    import psutil
    current_rss_bytes = lambda: psutil.Process().memory_info().rss

    print(heap.tune())
    a = np.ones(30 * 2**20 // 8); del a
    b = np.ones(20 * 2**20 // 8)
    held = current_rss_bytes()
    del b
    print((held - current_rss_bytes()) / 2**20)
""")


def _probe(**env) -> tuple[str, float]:
    proc = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, timeout=120,
                          env={**os.environ, **env})
    assert proc.returncode == 0, proc.stderr[-2000:]
    tuned, returned = proc.stdout.split()
    return tuned, float(returned)


def test_tuned_heap_gives_a_freed_buffer_back():
    assert _probe() == ("True", pytest.approx(20, abs=3))


def test_untuned_glibc_keeps_it_and_the_switch_turns_tuning_off():
    tuned, returned = _probe(EDGEQ_HEAP_TUNING="0")
    assert tuned == "False"
    assert returned < 3  # the behaviour edgeq.heap exists for


def test_trim_runs():
    from edgeq import heap

    assert heap.trim() in (True, False)
