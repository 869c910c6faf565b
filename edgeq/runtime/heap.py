"""Keep the process's resident memory close to what is live, on glibc (Linux).

Why: glibc's malloc raises its mmap threshold to the size of the largest block freed so far (up
to 32 MiB). While ONNX Runtime loads a model it stages the weights in buffers of several MiB and
frees them once the session holds its own copies; the threshold follows them up, and the freed
staging memory stays in the heap, resident, for the rest of the run.

`loading()` wraps the load: inside, the threshold is fixed at 256 KiB, so staging buffers are
mapped and unmapped; on leaving, malloc_trim returns what is free (also the tokenizer's JSON
parse), and the thresholds are set for inference: blocks under 32 MiB come from the heap and are
reused across calls, as glibc's own dynamic threshold would settle. Keeping the 256 KiB threshold
during inference as well cut the peak further (whisper-base onnx-int8-dynamic, 8 utterances:
271 MB vs 305 MB) but every fresh activation and every dequantized weight became a new mapping
with its page faults: in a full recipes run quanto-int8-dynamic went from RTF 0.21 to 0.55 and
hqq-int4-g64 from 0.26 to 0.77 (bundles that dequantize weights on every call). With loading()
alone, onnx-int8-dynamic peaks at 281-287 MB against 305-313 MB untuned; speed is unchanged
(onnx-int4, 4 alternating pairs: within noise).

Both settings are process-wide, which is why edgeq applies them only around loading a bundle for
inference; EDGEQ_HEAP_TUNING=0 turns them off. Elsewhere (macOS, musl) this does nothing.

`large_blocks_mapped()` lowers the threshold around an encoder run (to `encoder_threshold()`; only
for an encoder session without ONNX Runtime's arena, EDGEQ_ENCODER_ARENA=0: runtime.onnx_engine), and
`release_mapped(files)` is the same idea for memory-mapped weights, `release()` for one mapping
found by `mappings()` again later (the token table, before every window): see their docstrings.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import platform

log = logging.getLogger(__name__)

# from glibc's malloc.h
M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
LOADING_MMAP_THRESHOLD = 256 * 1024
INFERENCE_MMAP_THRESHOLD = 32 * 1024 * 1024  # glibc's ceiling for its dynamic threshold (64-bit)
INFERENCE_TRIM_THRESHOLD = 2 * INFERENCE_MMAP_THRESHOLD  # what the dynamic rule pairs with it

_libc = None


def _glibc():
    global _libc
    if _libc is None:
        _libc = False
        if os.environ.get("EDGEQ_HEAP_TUNING", "1") != "0" and platform.libc_ver()[0] == "glibc":
            try:
                _libc = ctypes.CDLL("libc.so.6")
                _libc.madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
            except OSError:  # a glibc without the usual soname: leave malloc as it is
                log.debug("libc.so.6 not loadable; heap tuning off")
    return _libc or None


@contextlib.contextmanager
def loading():
    """Load a model inside this block; see the module docstring."""
    libc = _glibc()
    if libc:
        libc.mallopt(M_MMAP_THRESHOLD, LOADING_MMAP_THRESHOLD)
    try:
        yield
    finally:
        if libc:
            libc.malloc_trim(0)
            libc.mallopt(M_MMAP_THRESHOLD, INFERENCE_MMAP_THRESHOLD)
            libc.mallopt(M_TRIM_THRESHOLD, INFERENCE_TRIM_THRESHOLD)


ENCODER_MMAP_THRESHOLD = 4 * 1024 * 1024
MIN_ENCODER_MMAP_THRESHOLD = 1024 * 1024


def encoder_threshold(activation_bytes: int) -> int:
    """The threshold for an encoder run whose [positions, d_model] activations take
    `activation_bytes`: blocks that large are mapped, within 1-4 MiB.

    Why this size: the blocks that fragment the heap are the window's activations and its
    cross-attention outputs, all of that size; smaller ones (quantized copies, attention blocks)
    are reused from the heap without page faults. whisper-base's are 3 MB for a full window and
    1.5 MB for a 15 s one, under a fixed 4 MiB: with this rule, speech-dev peaked at 224-229 MB
    instead of 232-237 (same speed within noise; 2 and 1 MiB did alike); the whisper-small shape's
    4.6 MB stay at 4 MiB, where 1-2 MiB cost it page faults for no memory.
    """
    return min(max(activation_bytes, MIN_ENCODER_MMAP_THRESHOLD), ENCODER_MMAP_THRESHOLD)


@contextlib.contextmanager
def large_blocks_mapped(threshold: int = ENCODER_MMAP_THRESHOLD):
    """Run an encoder inside this block: blocks of `threshold` bytes or more are mapped for the
    call and unmapped when freed, instead of coming from the heap. (The ONNX engine's encoder now
    keeps its activations in ONNX Runtime's arena and runs outside this block unless
    EDGEQ_ENCODER_ARENA=0: mapped afresh every window, they cost whisper-base 12,000-54,000 page
    faults per padded window; runtime.onnx_engine.load_engine has the numbers.)

    Why: a full 30 s window of the whisper-small shape allocates its activations (4.6 MB per
    [1500, 768] float tensor, 18 MB in the MLP) from the heap, then its 24 cross-attention outputs
    last; the heap ended 282 MB large with 155 MB of it free but resident, split around those
    outputs (mallinfo2; a bundle with fused encoder attention). Mapped, what is freed is gone: two
    speech-dev clips of the small shape (a fitted window, then the full one) peaked at 507-527 MB
    instead of 600-622 with that bundle, and with the default one (query blocks) 571-574 MB instead
    of 646-660 together with the long-form change that lets a window's output go; whisper-base on
    all of speech-dev at 232-238 instead of 240-243 (those at a fixed 4 MiB; see encoder_threshold
    for the size each window uses). Blocks under the threshold keep being reused from the heap,
    with no page faults; mapping a full small-shape window's blocks costs about 8 % of its encoder
    time (1.96 vs 1.82 s, alternating, one process).
    (glibc maps a block only when no free heap space fits it: space freed onto the heap before is
    still reused.) ONNX Runtime's own arena emptied after each run (memory.enable_memory_arena_shrinkage) did
    as well on the small shape (530-535 MB) but worse on whisper-base (252-253 MB).
    """
    libc = _glibc()
    if libc:
        libc.mallopt(M_MMAP_THRESHOLD, threshold)
    try:
        yield
    finally:
        if libc:
            libc.mallopt(M_MMAP_THRESHOLD, INFERENCE_MMAP_THRESHOLD)


def active() -> bool:
    return _glibc() is not None


MADV_DONTNEED = 4
PAGEMAP_PRESENT, PAGEMAP_FILE = 1 << 63, 1 << 61  # /proc/PID/pagemap flags (Documentation/admin-guide/mm/pagemap.rst)


def release_mapped(files) -> int:
    """Drop this process's resident pages of its mappings of `files` that it never wrote; returns
    how many mappings were released.

    Why: ONNX Runtime memory-maps a model's external data (.onnx.data) and prepacks most weights
    into buffers of its own, but initializers that a kernel reads as they are stay mapped, and
    every page the prepacking touched stays resident. On whisper-base onnx-int8-dynamic that is the
    26 MB int8 token table, of which a decoder step reads one 512-byte row: the process peaked at
    257-261 MB, and 240-244 MB after this (speech-dev, 3 alternating pairs; same speed, same
    transcripts).

    Only a mapping whose resident pages are all file pages is released (pagemap: no present page
    without the file flag, i.e. none that ONNX Runtime wrote and so made a private copy of):
    MADV_DONTNEED then just unmaps unmodified file pages, and a later read faults the same bytes
    back in from the page cache, which keeps them (the next process loads as fast). A mapping with
    a written page is left as it is. Linux only; the flags are readable without privileges.
    """
    return release(mappings(files))


def mappings(files, lengths=None) -> list[tuple[int, int]]:
    """The address ranges of this process's mappings of `files` (and, given `lengths`, only those
    whose page-rounded length fits one of them: a mapping starts at the page holding its first byte)."""
    if _glibc() is None or platform.system() != "Linux":
        return []
    wanted = {str(os.path.realpath(f)) for f in files}
    page = os.sysconf("SC_PAGE_SIZE")
    fits = None if lengths is None else {-(-n // page) for n in lengths} | {-(-n // page) + 1 for n in lengths}
    try:
        with open("/proc/self/maps") as f:
            maps = f.read().splitlines()
    except OSError:
        return []
    found = []
    for line in maps:
        parts = line.split(maxsplit=5)
        if len(parts) < 6 or parts[5] not in wanted:
            continue
        start, end = (int(x, 16) for x in parts[0].split("-"))
        if fits is None or (end - start) // page in fits:
            found.append((start, end))
    return found


def release(ranges) -> int:
    """release_mapped() for address ranges found by mappings(); returns how many were released."""
    libc = _glibc()
    if libc is None or not ranges:
        return 0
    import numpy as np

    page = os.sysconf("SC_PAGE_SIZE")
    try:
        pagemap = os.open("/proc/self/pagemap", os.O_RDONLY)
    except OSError:
        return 0
    released = 0
    try:
        for start, end in ranges:
            flags = np.frombuffer(os.pread(pagemap, 8 * ((end - start) // page), 8 * (start // page)), np.uint64)
            written = (flags & np.uint64(PAGEMAP_PRESENT)).astype(bool) & ~(flags & np.uint64(PAGEMAP_FILE)).astype(bool)
            if not written.any():
                released += libc.madvise(start, end - start, MADV_DONTNEED) == 0
    except OSError:
        pass
    finally:
        os.close(pagemap)
    log.debug("released %d of %d mappings", released, len(ranges))
    return released
