"""NumPy's BLAS held to one thread around edgeq's own products (the log-mel filterbank).

Why: NumPy's wheels bring OpenBLAS, which runs a product as small as a window block's mel
filterbank ([256, 201] x [201, 80]) on every core, and whose worker threads then keep spinning
for work after the call returns. On a 2-core device that spin lands on the cores ONNX Runtime's
encoder needs next. whisper-base onnx-int8-dynamic, padded windows of speech-dev, 2 threads,
Intel Xeon (AMX), 3 rounds in alternation (benchmarks/blas_threads.py): the encoder took 0.240 s
a window in the pipeline with NumPy's default against 0.198 s with this, and the whole run's RTF
fell 0.0457 -> 0.0397. On one thread the product takes the same 0.04 ms.

threadpoolctl finds whichever BLAS this NumPy loaded (OpenBLAS, MKL, BLIS, Accelerate) and sets
its thread count through that library's own call; the limit covers only the `with` block and the
caller's setting comes back after it, so a program that imports edgeq keeps its own BLAS threads.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from functools import lru_cache


@lru_cache(maxsize=1)
def _controller():
    # Imported here, not at load: 4-5 ms of import and a scan of the loaded libraries, paid once by
    # the first window rather than by every `edgeq.load`.
    from threadpoolctl import ThreadpoolController

    return ThreadpoolController()


@contextlib.contextmanager
def one_thread() -> Iterator[None]:
    """NumPy's BLAS on the calling thread only, for the duration of the block."""
    with _controller().limit(limits=1, user_api="blas"):
        yield
