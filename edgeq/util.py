"""Small helpers several layers share (torch-free): file hashes, installed versions, one-line errors,
reading user files at the boundary, safe file names, and an OS lock that dies with its process."""

from __future__ import annotations

import hashlib
import json
import os
import re
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

_CHUNK = 1 << 20


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def installed_version(distribution: str) -> str | None:
    # Imported here: importlib.metadata (with email, zipfile, csv) took 44 ms of a device's 0.3 s load,
    # which never asks for a version.
    import importlib.metadata

    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return None


def installed_versions(distributions) -> dict[str, str]:
    """Versions of the installed ones among `distributions` (missing ones left out)."""
    return {name: v for name in distributions if (v := installed_version(name)) is not None}


def cpuinfo() -> tuple[str, list[str]]:
    """This CPU's model name and feature flags, as Linux lists them in /proc/cpuinfo (x86 `flags`,
    arm64 `Features`); no flags where there is no /proc/cpuinfo (macOS: the model from sysctl)."""
    import platform

    model, flags, part = platform.machine(), [], ""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        text = ""
    if not text:
        # Not on Linux: platform.processor() is all there is. On Linux it is never asked: it runs
        # `uname -p` in a subprocess (5.7 ms, and 3.6 ms to import subprocess, of every edgeq.load
        # here) and says "" or "unknown" where /proc/cpuinfo names the model.
        model = platform.processor() or model
    named = False
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key = key.strip().lower()
        if key in ("model name", "hardware", "cpu model") and value.strip():
            model, named = value.strip(), True
        elif key in ("flags", "features") and not flags:
            flags = value.split()
        elif key == "cpu part" and not part:
            part = value.strip()
    if part and not named:  # arm64 kernels often name no model, only the core's part number (0xd08: Cortex-A72)
        model = f"{model} CPU part {part}"
    if not text and platform.system() == "Darwin":  # pragma: no cover - macOS
        import subprocess  # here only: its import is 3.6 ms of every edgeq.load on Linux

        try:
            model = subprocess.run(["sysctl", "-n", "machdep.cpu.brand_string"], capture_output=True,
                                   text=True, timeout=5).stdout.strip() or model
        except (OSError, subprocess.SubprocessError):
            pass
    return model, flags


def usable_cpus() -> int:
    """CPUs this process may run on (its affinity mask where the OS has one, else all of them)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def cache_dir() -> Path:
    """Where edgeq keeps what it can rebuild (sensitivity scans, TensorRT engines): $EDGEQ_CACHE,
    or ~/.cache/edgeq."""
    return Path(os.environ.get("EDGEQ_CACHE", Path.home() / ".cache" / "edgeq"))


def one_line(err: BaseException | str) -> str:
    """An exception's text on one line (libraries' messages span several), or its type's name."""
    text = " ".join(str(err).split())
    return text or (type(err).__name__ if isinstance(err, BaseException) else "")


def os_reason(err: OSError) -> str:
    """What went wrong, without the path (the caller names the file): 'Permission denied'."""
    return err.strerror or one_line(err)


# --------------------------------------------------------------------------- reading user files
# Every file a user can hand us (recipes, manifests, datasets, results) is read through these, so
# an unreadable, non-UTF-8 or malformed file is one `error` line naming it, never a traceback.


def read_text(path: str | Path, error: type[Exception], what: str = "file") -> str:
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise error(f"{path}: no such {what}") from None
    except IsADirectoryError:
        raise error(f"{path}: is a folder, not a {what}") from None
    except OSError as err:
        raise error(f"{path}: cannot read the {what} ({os_reason(err)})") from None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as err:
        raise error(f"{path}: the {what} is not UTF-8 text (byte {err.start})") from None


def parse_json(text: str, where: str, error: type[Exception]) -> Any:
    try:
        return json.loads(text)
    # ValueError covers JSONDecodeError and Python's limit on huge integer literals;
    # RecursionError a document nested thousands of levels deep.
    except (ValueError, RecursionError) as err:
        raise error(f"{where}: not valid JSON ({one_line(err)[:200]})") from None


def read_json(path: str | Path, error: type[Exception], what: str = "JSON file") -> Any:
    return parse_json(read_text(path, error, what), str(path), error)


def read_toml(path: str | Path, error: type[Exception], what: str = "TOML file") -> dict[str, Any]:
    if sys.version_info >= (3, 11):
        import tomllib
    else:  # pragma: no cover
        import tomli as tomllib
    text = read_text(path, error, what)
    try:
        return tomllib.loads(text)
    except (tomllib.TOMLDecodeError, RecursionError, ValueError) as err:
        raise error(f"{path}: not valid TOML: {one_line(err)[:200]}") from None


def safe_name(text: str, fallback: str = "unnamed") -> str:
    """`text` as one file name: no separators, no leading dot (so no '..' and nothing hidden)."""
    name = re.sub(r"[^A-Za-z0-9._=,+\[\]-]+", "_", text).lstrip(".")
    return name[:200] or fallback


# --------------------------------------------------------------------------- locks


class LockHeld(Exception):
    """Another live process holds the lock."""


@contextmanager
def exclusive_lock(path: Path) -> Iterator[None]:
    """Hold an exclusive OS lock on `path` (created if missing) until the block ends.

    flock(2): the kernel drops it when the process dies however it dies (kill -9 included), so a
    lock file left behind by a dead process never blocks anyone; `LockHeld` when a live one holds it.
    """
    import fcntl

    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise LockHeld(str(path)) from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        yield
    finally:
        os.close(fd)


def loc_text(loc) -> str:
    """A validation error's location as `a.b.0`; keys that are not plain words (a newline, a dot,
    an empty string) are quoted, so a message stays one line and says which key it means."""
    return ".".join(str(p) if re.fullmatch(r"[\w<>|+-]+", str(p)) else repr(p) for p in loc)
