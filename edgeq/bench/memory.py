"""Peak resident memory, sampled from a background thread and read from the OS.

The sampler reads RSS every `interval` seconds. 50 ms, not 5: with both cores busy running the
model, a thread waking every 5 ms cost +5.6 % of compute time (benchmarks/harness_overhead.py,
onnx-int8-dynamic, 2 threads on 2 cores); spikes shorter than the interval are still caught by
the OS's own high-water mark below, which gives the overall peak exactly. `window()`
returns the peak since the last call, which splits load-time and per-utterance peaks. The OS's
own high-water mark (VmHWM on Linux) catches spikes shorter than the interval.
"""

from __future__ import annotations

import sys
import threading

import psutil


def os_peak_rss_bytes() -> int | None:
    """The kernel's high-water mark of this process's resident memory.

    On Linux this is VmHWM from /proc/self/status, not getrusage's ru_maxrss: ru_maxrss survives
    fork + exec, so a worker started by a parent holding 600 MB reported 610 MB while its own
    address space peaked at 9 MB (measured). VmHWM belongs to the address space exec created.
    """
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        import resource
    except ImportError:  # pragma: no cover - Windows
        info = psutil.Process().memory_info()
        return getattr(info, "peak_wset", None)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024  # Linux reports KiB


class MemorySampler:
    def __init__(self, interval: float = 0.05, enabled: bool = True):
        self.interval = interval
        self.enabled = enabled
        self._proc = psutil.Process()
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._peak = self._window_peak = self.rss()
        self._thread = threading.Thread(target=self._run, name="edgeq-memory-sampler", daemon=True)

    def rss(self) -> int:
        return self._proc.memory_info().rss

    def _observe(self, value: int) -> None:
        with self._lock:
            self._peak = max(self._peak, value)
            self._window_peak = max(self._window_peak, value)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self._observe(self.rss())

    def __enter__(self) -> "MemorySampler":
        if self.enabled:
            self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()

    def window(self) -> int:
        """Peak RSS since the previous call (or the start), then start a new window."""
        now = self.rss()
        self._observe(now)
        with self._lock:
            peak, self._window_peak = self._window_peak, now
        return peak

    @property
    def peak(self) -> int:
        self._observe(self.rss())
        return self._peak
