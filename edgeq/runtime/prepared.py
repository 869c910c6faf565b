"""ONNX Runtime's work on a bundle's graphs, kept on the device so that the next load skips it.

Why: creating its two sessions is most of what loading an ONNX bundle costs. ONNX Runtime
optimizes each graph (fusions, constant folding) and prepacks every int8 weight into the layout its
GEMM kernels read on this CPU, every time. It writes the graph as optimized, which a later session
loads with no optimizing left to do. See benchmarks/results/prepared_sessions.json for what that saves.

The prepacked weights are not written with it. ONNX Runtime can (`session.
save_external_prepacked_constant_initializers`), and edgeq did until 2026-12-06, but onnxruntime
1.32 packs every weight again when it loads such a copy, and only then takes the packed bytes from
the file: one 8-bit MatMulNBits over whisper-base's token table took 27 ms to pack either way, and
whisper-base onnx-int8-dynamic's decoder session 64 ms with the packed weights in the copy against
54 ms without (median of 15, alternated, AMX Xeon). Without them a load is faster (whole
`edgeq.load`, 6 alternated fresh processes each: onnx-int8-dynamic 0.129 -> 0.123 s, onnx-int4
0.157 -> 0.151 s), the copy is half the size (127 -> 78 MB; 232 -> 132 MB), and the process peaks
the same (228 / 195-196 MB, all of speech-dev on the padded window). The packed weights are then
the process's own memory rather than file pages of the copy.

What it writes is specific to this CPU's instruction set and this onnxruntime ("should only be used
in the same environment the model was optimized in", ONNX Runtime warns), so it never goes into a
bundle: it is made the first time a bundle loads on a device, in
`$EDGEQ_CACHE/onnxruntime/<key>/` (`~/.cache/edgeq`), keyed by the bundle's manifest hash, the
onnxruntime version, the machine and the CPU's model and flags.

Trust: the bundle was checked against its manifest before any of this. The copy made from it is
hashed when written (hashes.json), and used later only while every file is as it was then: the
stat stamps of edgeq.format.verified (size, mtime, ctime, inode), or, until those can be taken
(a file written less than RACY_S ago), its hashes. A copy that does not match is made again.

Cost: disk, about the bundle's ONNX files again (copies written before 2026-12-06 also hold the
prepacked weights, twice that; they still load); the MAX_COPIES most recently loaded bundles keep
theirs (EDGEQ_ORT_CACHE_COPIES=N keeps N: a benchmark alternating more bundles than that would
otherwise load each one cold, making its copy again every time). CPU only: CUDA and TensorRT
build their own engines. EDGEQ_ORT_CACHE=0 turns it off.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import platform
import shutil
import time
from pathlib import Path

from edgeq.format import verified
from edgeq.runtime import int8_kernels
from edgeq.util import cache_dir, cpuinfo, sha256_file

log = logging.getLogger(__name__)

HASHES = "hashes.json"
STALE_S = 3600.0  # a staging directory this old belongs to a load that did not finish
# Copies kept, the most recently used: each rebuilt bundle has a new manifest hash and so a new copy
# (506 MB for whisper-small int8), which would otherwise pile up on a device's SD card.
MAX_COPIES = 3


def max_copies() -> int:
    """MAX_COPIES, or EDGEQ_ORT_CACHE_COPIES where that is a positive number."""
    value = os.environ.get("EDGEQ_ORT_CACHE_COPIES", "").strip()
    if value.isdigit() and int(value) > 0:
        return int(value)
    if value:
        log.warning("EDGEQ_ORT_CACHE_COPIES=%r is not a positive number: keeping %d copies", value, MAX_COPIES)
    return MAX_COPIES


def enabled() -> bool:
    return os.environ.get("EDGEQ_ORT_CACHE", "1") != "0"


def _cpu() -> str:
    """What decides the kernels ONNX Runtime packs for: the machine and the CPU's model and flags."""
    model, flags = cpuinfo()
    key = f"{platform.machine()}|{model}|{' '.join(sorted(flags))}"
    # The flags stand for the kernels ONNX Runtime picks (and packs weights for), except under an
    # emulator that shows the host's flags (int8_kernels): its copies must not be the host's.
    return key + "|u8s8 saturates" if int8_kernels.flags_overstate_vnni() else key


class PreparedGraphs:
    """Where one bundle's prepared graphs are (or are to be written) on this device."""

    def __init__(self, manifest_sha256: str, ort_version: str, variant: str = ""):
        # `variant`: which of a bundle's graphs a load makes sessions from, where it has a choice
        # (encoder.vnni.onnx or, with EDGEQ_VNNI=0, encoder.onnx): a copy of its own for each, so
        # that loads alternating between them do not replace each other's copy every time.
        key = hashlib.sha256(f"{manifest_sha256}|{ort_version}|{_cpu()}{'|' + variant if variant else ''}"
                             .encode()).hexdigest()[:24]
        self.root = cache_dir() / "onnxruntime"
        self.path = self.root / key
        self.staging = self.root / f".{key}.{os.getpid()}"
        self._names: list[str] = []  # what usable() was asked for; commit() checks it again

    def usable(self, names: list[str]) -> bool:
        """Whether a complete copy of `names` is here and unchanged since it was written."""
        self._names = names
        return self._check(names)

    def _check(self, names: list[str]) -> bool:
        try:
            raw = (self.path / HASHES).read_bytes()
            hashes = json.loads(raw)
        except (OSError, ValueError):
            return False
        files = sorted(hashes) if isinstance(hashes, dict) else []
        if not all(name in files for name in names):
            return False
        stamp = hashlib.sha256(raw).hexdigest()
        if verified.still_verified(self.path, files, stamp):
            self._touch()
            return True
        try:
            if any(sha256_file(self.path / name) != hashes[name] for name in files):
                log.warning("the prepared copy of this bundle's graphs in %s was changed; making it again", self.path)
                return False
        except OSError:
            return False
        verified.remember(self.path, files, stamp)  # not while a file is younger than RACY_S
        self._touch()
        return True

    def _touch(self) -> None:
        """Mark the copy as just used (its folder's mtime), for max_copies()."""
        try:
            os.utime(self.path)
        except OSError:
            pass

    def _evict(self) -> None:
        """Remove all but the max_copies() most recently used copies."""
        copies = sorted((p for p in self.root.iterdir() if p.is_dir() and not p.name.startswith(".")),
                        key=lambda p: p.stat().st_mtime, reverse=True)
        for old in copies[max_copies():]:
            log.info("removing ONNX Runtime's prepared graphs of a bundle not loaded lately: %s", old)
            shutil.rmtree(old, ignore_errors=True)

    def file(self, name: str) -> Path:
        return self.path / name

    def start(self) -> bool:
        """Make the staging directory the sessions write into; False (and a warning) when the
        cache cannot hold it: the bundle then loads as it is, optimized and packed in memory."""
        try:
            self.staging.mkdir(parents=True, exist_ok=True)
            for left in self.root.glob(f".{self.path.name}.*"):
                if left != self.staging and time.time() - left.stat().st_mtime > STALE_S:
                    shutil.rmtree(left, ignore_errors=True)  # a load killed while writing
            return True
        except OSError as err:
            log.warning("cannot keep ONNX Runtime's prepared graphs in %s: %s", self.root, err)
            return False

    def save_options(self, options, name: str) -> None:
        """Ask the session made with `options` to write its optimized graph `name` (its weights in
        `name`.data, not the prepacked ones: see the module's docstring) into the staging directory."""
        options.optimized_model_filepath = str(self.staging / name)
        options.add_session_config_entry("session.optimized_model_external_initializers_file_name", f"{name}.data")
        options.add_session_config_entry("session.optimized_model_external_initializers_min_size_in_bytes", "1024")

    def commit(self) -> None:
        """Hash what the sessions wrote and move it into place in one rename: a load that stops
        half-way leaves only a staging directory, never a partial copy under the key."""
        try:
            names = sorted(p.name for p in self.staging.iterdir())
            hashes = {name: sha256_file(self.staging / name) for name in names}
            (self.staging / HASHES).write_text(json.dumps(hashes, indent=1))
            if self.path.exists():
                if self._check(self._names):
                    return  # another process loading the same bundle wrote it meanwhile
                shutil.rmtree(self.path)  # a copy that failed its check
            os.replace(self.staging, self.path)
            log.info("prepared graphs for this device written to %s", self.path)
            self._touch()
            self._evict()
        except OSError as err:  # a full or read-only cache costs the next load its optimizing, nothing more
            log.warning("cannot keep ONNX Runtime's prepared graphs in %s: %s", self.root, err)
        finally:
            self.discard()

    def discard(self) -> None:
        shutil.rmtree(self.staging, ignore_errors=True)
