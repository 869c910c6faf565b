"""Download the official LibriSpeech evaluation splits from OpenSLR into a local cache.

`download_split("test-clean", root)` fetches `<base>/test-clean.tar.gz` (base: OpenSLR resource 12,
or $EDGEQ_LIBRISPEECH_URL) to `<root>/downloads/test-clean.tar.gz.part`, resuming an interrupted
download with an HTTP Range request, checks its sha256, extracts it (tarfile's "data" filter) into
a staging folder under `root` and renames `<root>/LibriSpeech/test-clean` into place, so that
folder exists only once it is complete. The archive is removed afterwards.

Every failure raises `DatasetError` with one line that says what went wrong and how to pass a
local copy instead (`--dataset /path/to/LibriSpeech/<split>`). Nothing here prints; progress goes
to the optional `progress(stage, done, total)` callback, in bytes.
"""

from __future__ import annotations

import hashlib
import http.client
import os
import shutil
import tarfile
import tempfile
import urllib.error
import urllib.request
from pathlib import Path
from typing import Callable

from edgeq.errors import DatasetError
from edgeq.util import one_line

BASE_URL = "https://www.openslr.org/resources/12"
URL_ENV = "EDGEQ_LIBRISPEECH_URL"
TIMEOUT_S = 30
_CHUNK = 1 << 20

# sha256 of the OpenSLR archives (the values torchaudio's LIBRISPEECH dataset checks).
SHA256 = {
    "dev-clean": "76f87d090650617fca0cac8f88b9416e0ebf80350acb97b343a85fa903728ab3",
    "dev-other": "12661c48e8c3fe1de2c1caa4c3e135193bfb1811584f11f569dd12645aa84365",
    "test-clean": "39fde525e59672dc6d1551919b1478f724438a95aa55f874b576be21967e6c23",
    "test-other": "d09c181bba5cf717b3dee7d4d592af11a3ee3a09e08ae025c5506f6ebe961c29",
}

Progress = Callable[[str, int, int], None]


def split_url(split: str) -> str:
    base = os.environ.get(URL_ENV) or BASE_URL
    return f"{base.rstrip('/')}/{split}.tar.gz"


def _local_copy_hint(split: str) -> str:
    return (f"or pass a local copy with --dataset /path/to/LibriSpeech/{split} "
            "(layout SPK/CHAPTER/*.flac + SPK-CHAPTER.trans.txt)")


def download_split(split: str, root: Path, progress: Progress | None = None) -> Path:
    """Make `<root>/LibriSpeech/<split>` exist (downloading it if needed) and return it."""
    if split not in SHA256:
        raise DatasetError(f"unknown LibriSpeech split {split!r}; choose one of {', '.join(SHA256)}")
    root = Path(root).expanduser()
    dest = root / "LibriSpeech" / split
    if dest.is_dir():
        return dest
    downloads = root / "downloads"
    try:
        downloads.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise DatasetError(f"cannot create {downloads} for the LibriSpeech {split} download ({one_line(err)}); "
                           f"set EDGEQ_DATA to a writable folder {_local_copy_hint(split)}") from None
    archive = downloads / f"{split}.tar.gz"  # present only once verified
    if not archive.is_file():
        part = downloads / f"{split}.tar.gz.part"
        _fetch(split, split_url(split), part, progress)
        _verify(split, part, progress)
        os.replace(part, archive)
    _extract(split, archive, root, progress)
    archive.unlink(missing_ok=True)
    return dest


def _fetch(split: str, url: str, part: Path, progress: Progress | None) -> None:
    stage = f"downloading LibriSpeech {split}"
    have = part.stat().st_size if part.is_file() else 0
    request = urllib.request.Request(url, headers={"User-Agent": "edgeq"})
    if have:
        request.add_header("Range", f"bytes={have}-")
    done, total = have, 0
    try:
        with urllib.request.urlopen(request, timeout=TIMEOUT_S) as resp:
            start = _range_start(resp.headers.get("Content-Range")) if resp.status == 206 else 0
            if start != have:  # the server sent the whole file (200) or another range: start over
                have = done = 0
            length = resp.headers.get("Content-Length")
            total = have + int(length) if length and length.isdigit() else 0
            with open(part, "ab" if have else "wb") as f:
                if progress:
                    progress(stage, done, total)
                while chunk := resp.read(_CHUNK):
                    f.write(chunk)
                    done += len(chunk)
                    if progress:
                        progress(stage, done, total)
        if total and done < total:
            raise http.client.IncompleteRead(b"", total - done)
    except urllib.error.HTTPError as err:
        if err.code == 416 and have:  # asked past the end: the .part is already complete
            return
        raise _download_failed(split, url, part, f"HTTP {err.code} {err.reason}") from None
    except (urllib.error.URLError, OSError, http.client.HTTPException) as err:
        reason = err.reason if isinstance(err, urllib.error.URLError) else err
        if isinstance(err, http.client.IncompleteRead):
            reason = f"connection closed after {done} of {total} bytes"
        raise _download_failed(split, url, part, reason) from None


def _range_start(content_range: str | None) -> int:
    # "bytes 100-199/200"
    try:
        return int(content_range.split()[1].split("-")[0])  # type: ignore[union-attr]
    except (AttributeError, IndexError, ValueError):
        return -1


def _download_failed(split: str, url: str, part: Path, reason) -> DatasetError:
    kept = part.stat().st_size if part.is_file() else 0
    resume = (f"the partial download {part} ({kept} bytes) is kept and resumes on the next run; "
              if kept else "")
    return DatasetError(f"downloading LibriSpeech {split} from {url} failed ({one_line(reason)}); "
                        f"{resume}retry when online {_local_copy_hint(split)}")


def _verify(split: str, part: Path, progress: Progress | None) -> None:
    stage = f"verifying LibriSpeech {split}"
    total = part.stat().st_size
    digest, done = hashlib.sha256(), 0
    with open(part, "rb") as f:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
            done += len(chunk)
            if progress:
                progress(stage, done, total)
    expected, actual = SHA256[split], digest.hexdigest()
    if actual != expected:
        part.unlink(missing_ok=True)
        raise DatasetError(f"the LibriSpeech {split} download does not match its sha256 (expected {expected}, "
                           f"got {actual}); it was deleted: run again to download it afresh "
                           f"{_local_copy_hint(split)}")


def _extract(split: str, archive: Path, root: Path, progress: Progress | None) -> None:
    stage = f"extracting LibriSpeech {split}"
    total = archive.stat().st_size
    dest = root / "LibriSpeech" / split
    staging = Path(tempfile.mkdtemp(prefix=f".LibriSpeech-{split}-", dir=root))
    try:
        with open(archive, "rb") as raw, tarfile.open(fileobj=raw, mode="r:gz") as tar:

            def members():
                for member in tar:
                    yield member
                    if progress:
                        progress(stage, raw.tell(), total)

            tar.extractall(staging, members=members(), filter="data")
        if progress:
            progress(stage, total, total)
        extracted = staging / "LibriSpeech"
        if not (extracted / split).is_dir():
            raise DatasetError(f"{archive} does not hold LibriSpeech/{split}/; delete it and run again "
                               f"{_local_copy_hint(split)}")
        dest.parent.mkdir(parents=True, exist_ok=True)
        for extra in extracted.iterdir():  # README/LICENSE/SPEAKERS/CHAPTERS.TXT, kept once
            if extra.is_file() and not (dest.parent / extra.name).exists():
                os.replace(extra, dest.parent / extra.name)
        try:
            os.replace(extracted / split, dest)  # same filesystem: the split appears complete or not at all
        except OSError:
            if not dest.is_dir():  # another process may have finished first
                raise
    except (tarfile.TarError, EOFError, OSError) as err:
        raise DatasetError(f"extracting LibriSpeech {split} from {archive} failed ({one_line(err)}); "
                           f"free some space or delete the archive and run again {_local_copy_hint(split)}") from None
    finally:
        shutil.rmtree(staging, ignore_errors=True)
