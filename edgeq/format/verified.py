"""Bundles whose files were hashed and have not changed since: loading them need not hash again.

Why: hashing is most of what opening a bundle costs. On whisper-base onnx-int8-dynamic (81 MB) it
took 0.063 s of a 0.31 s load here; on a Raspberry Pi, hashing at a few hundred MB/s, a whisper-
small bundle costs seconds at every start. After a full check passes, a stamp records each file's
(size, mtime_ns, ctime_ns, inode, device) and the manifest's sha256, in
`$EDGEQ_CACHE/verified/` (`~/.cache/edgeq`), keyed by the bundle's absolute path. A later
`edgeq.load` of the same path hashes nothing when every file still has its stamp.

What changes a file changes its stamp: any write or rename sets ctime, which unlike mtime no
process can set back (short of changing the clock as root), and a replaced file has another inode.
So a tampered or re-copied bundle is hashed again and refused as before. What a stamp cannot see is
a bit flipped by the disk itself after the check; `edgeq info` always hashes every file.

Like git's index, a file changed within RACY_S of the check is not stamped: file times come from a
coarse clock, so a write in the same tick as the check could leave the stamp unchanged.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from pathlib import Path

from edgeq.util import cache_dir

log = logging.getLogger(__name__)

RACY_S = 2.0


def _stamp_file(bundle: Path) -> Path:
    key = hashlib.sha256(str(bundle.resolve()).encode()).hexdigest()[:32]
    return cache_dir() / "verified" / f"{key}.json"


def _stats(bundle: Path, names) -> dict[str, list[int]]:
    out = {}
    for name in names:
        st = os.lstat(bundle / name)
        out[name] = [st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino, st.st_dev]
    return out


def still_verified(bundle: Path, names, manifest_sha256: str) -> bool:
    """True when every file (and manifest.json) is as it was when its hashes last matched."""
    try:
        stamp = json.loads(_stamp_file(bundle).read_text())
        return stamp["manifest_sha256"] == manifest_sha256 and stamp["files"] == _stats(bundle, names)
    except (OSError, ValueError, KeyError, TypeError):
        return False


def remember(bundle: Path, names, manifest_sha256: str) -> None:
    """Stamp a bundle whose hashes all matched just now (not when a file changed within RACY_S)."""
    try:
        stats = _stats(bundle, names)
        if any(time.time_ns() - max(s[1], s[2]) < RACY_S * 1e9 for s in stats.values()):
            return
        path = _stamp_file(bundle)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}")
        tmp.write_text(json.dumps({"bundle": str(bundle.resolve()), "manifest_sha256": manifest_sha256,
                                   "files": stats}))
        os.replace(tmp, path)
    except OSError as err:  # a read-only cache costs the next load a hash, nothing more
        log.debug("could not stamp %s as verified: %s", bundle, err)
