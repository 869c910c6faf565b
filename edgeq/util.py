"""Small helpers several layers share (torch-free): file hashes, installed versions, one-line errors."""

from __future__ import annotations

import hashlib
import importlib.metadata
from pathlib import Path

_CHUNK = 1 << 20


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def installed_version(distribution: str) -> str | None:
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return None


def installed_versions(distributions) -> dict[str, str]:
    """Versions of the installed ones among `distributions` (missing ones left out)."""
    return {name: v for name in distributions if (v := installed_version(name)) is not None}


def one_line(err: BaseException | str) -> str:
    """An exception's text on one line (libraries' messages span several), or its type's name."""
    text = " ".join(str(err).split())
    return text or (type(err).__name__ if isinstance(err, BaseException) else "")
