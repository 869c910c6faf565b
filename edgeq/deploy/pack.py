"""One file for a bundle: `pack` writes a .tar.gz, `unpack` verifies every hash before the folder appears.

The archive holds the bundle's files under one top-level folder (the bundle's name) and nothing
else. `unpack` extracts into a hidden staging folder beside the destination, checks that the files
are exactly the manifest's and that each matches its sha256, and only then renames the folder into
place (as `edgeq build` does), so a tampered, truncated or foreign archive never leaves a folder
that looks like a bundle.
"""

from __future__ import annotations

import os
import shutil
import tarfile
import uuid
import zlib
from pathlib import Path

from edgeq.errors import BundleError
from edgeq.format.bundle import MANIFEST, Bundle, check_destination, open_bundle, read_manifest, swap_in, verify


def pack(bundle: str | Path, out: str | Path, force: bool = False) -> Path:
    """Write BUNDLE (verified first: a corrupt bundle is never shipped) as a gzipped tar at `out`."""
    b = open_bundle(bundle)
    out = Path(out).expanduser().resolve()
    if out.exists() and not force:
        raise BundleError(f"{out} exists; pass --force to replace it")
    if out.is_dir():
        raise BundleError(f"{out} is a folder; name the archive file, e.g. -o {b.path.name}.tar.gz")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.{uuid.uuid4().hex[:8]}.partial"
    top = b.path.resolve().name
    try:
        # Manifest first: `edgeq unpack` (and a person with `tar tzf`) sees what the archive claims early.
        with tarfile.open(tmp, "w:gz") as tar:
            for name in [MANIFEST, *sorted(b.manifest.files)]:
                tar.add(b.path / name, arcname=f"{top}/{name}", recursive=False, filter=_plain)
        os.replace(tmp, out)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return out


def _plain(info: tarfile.TarInfo) -> tarfile.TarInfo:
    # Who built the bundle on the workstation means nothing on the device.
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    info.mode = 0o644
    return info


def unpack(archive: str | Path, dest: str | Path | None = None, force: bool = False) -> Bundle:
    """Extract ARCHIVE to `dest` (default: the archive's folder name beside it), verified, atomically."""
    archive = Path(archive).expanduser()
    if not archive.is_file():
        raise BundleError(f"{archive}: no such archive")
    try:
        tar = tarfile.open(archive, "r:*")
    except (tarfile.TarError, OSError) as err:
        raise BundleError(f"{archive}: not a bundle archive ({err}); make one with `edgeq pack`") from None
    with tar:
        try:
            members = tar.getmembers()
        except (tarfile.TarError, EOFError, OSError) as err:
            raise BundleError(f"{archive}: archive is truncated or corrupt ({err})") from None
        top = _single_top_folder(archive, members)
        out = Path(dest).expanduser().resolve() if dest else archive.resolve().parent / top
        check_destination(out, force)
        out.parent.mkdir(parents=True, exist_ok=True)
        staging = out.parent / f".{out.name}.edgeq-staging-{uuid.uuid4().hex[:8]}"
        staging.mkdir()
        try:
            _extract(archive, tar, members, top, staging)
            manifest = read_manifest(staging)
            names = {m.name[len(top) + 1:] for m in members if m.isfile()} - {MANIFEST}
            extra, missing = names - set(manifest.files), set(manifest.files) - names
            if extra or missing:
                what = f"files the manifest does not list: {', '.join(sorted(extra))}" if extra else \
                    f"lacks {', '.join(sorted(missing))}"
                raise BundleError(f"{archive}: archive {what} (tampered or not made by `edgeq pack`)")
            try:
                verify(staging, manifest)
            except BundleError as err:
                raise BundleError(str(err).replace(str(staging), f"{archive}")) from None
            swap_in(staging, out)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
    return Bundle(out, manifest)


def _single_top_folder(archive: Path, members: list[tarfile.TarInfo]) -> str:
    tops = {m.name.split("/", 1)[0] for m in members}
    if len(tops) != 1 or not members:
        raise BundleError(f"{archive}: a bundle archive holds one folder, this one holds {len(tops)} entries at its top")
    top = tops.pop()
    if top in ("", ".", ".."):
        raise BundleError(f"{archive}: archive paths must not be absolute or climb out ({top!r})")
    return top


def _extract(archive: Path, tar: tarfile.TarFile, members, top: str, staging: Path) -> None:
    for m in members:
        rel = m.name[len(top) + 1:]
        if not rel:
            continue  # the top folder itself
        if not (m.isfile() or m.isdir()) or Path(rel).is_absolute() or ".." in Path(rel).parts:
            raise BundleError(f"{archive}: refusing archive entry {m.name!r} (only plain files inside one folder)")
        target = staging / rel
        if m.isdir():
            target.mkdir(parents=True, exist_ok=True)
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        try:
            src = tar.extractfile(m)
            assert src is not None  # m.isfile()
            with src, open(target, "wb") as dst:
                shutil.copyfileobj(src, dst, 1 << 20)
        except (tarfile.TarError, EOFError, OSError, zlib.error) as err:
            raise BundleError(f"{archive}: archive is truncated or corrupt at {rel} ({err})") from None
