"""`edgeq push BUNDLE user@host[:dir]`: copy a verified bundle to a device, resumably, checked there.

On the device the bundle is written into a hidden staging folder named after its manifest's hash
(`dir/.NAME.edgeq-push-<sha>`), the manifest last, and renamed to `dir/NAME` only after `sha256sum`
on the device has matched every file against the manifest. A cut connection leaves only that
staging folder: the next push of the same bundle finds it, keeps the files that are whole,
appends to the one that was cut, and re-sends a file only when its hash on the device is wrong.
A different bundle already at `dir/NAME` is replaced only with `force`.
"""

from __future__ import annotations

import posixpath
import shlex
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from edgeq.deploy.ssh import Remote, SSHError, connect, reraise_if_cut, run, run_sync, sftp_error
from edgeq.format.bundle import MANIFEST, Bundle, open_bundle
from edgeq.util import one_line, sha256_file

DEFAULT_DIR = "edgeq-bundles"
CHUNK = 1 << 18  # 256 KB SFTP writes: a cut loses at most this much on top of what reached the disk


@dataclass(frozen=True)
class PushResult:
    remote_path: str  # on the device, relative to the user's home unless absolute
    sent_bytes: int
    resumed_bytes: int  # bytes a previous, cut push had already left there
    already_there: bool  # the same bundle was there: only verified


def push(bundle: str | Path, remote: Remote, force: bool = False,
         progress: Callable[[str, int, int], None] | None = None) -> PushResult:
    b = open_bundle(bundle)  # never ship a bundle that is already corrupt
    return run_sync(_push(b, remote, force, progress))


async def _push(b: Bundle, remote: Remote, force: bool, progress) -> PushResult:
    async with connect(remote) as conn:
        return await push_over(conn, b, remote, force, progress)


async def push_over(conn, b: Bundle, remote: Remote, force: bool, progress=None, dest: str | None = None) -> PushResult:
    """The push on an open connection (remote bench pushes its bundles on the connection it runs on).

    `dest`: the bundle's path on the device [default: the remote folder / the bundle's folder name];
    a sweep names its bundles after their cache cells, whose local folders are all called `bundle`."""
    folder, name = posixpath.split(dest) if dest else (remote.path(DEFAULT_DIR), b.path.resolve().name)
    folder = folder or "."
    final = posixpath.join(folder, name)
    manifest_bytes = (b.path / MANIFEST).read_bytes()
    key = sha256_file(b.path / MANIFEST)[:12]
    staging = posixpath.join(folder, f".{name}.edgeq-push-{key}")
    where = f"{remote}:{final}"
    async with conn.start_sftp_client() as sftp:
        await run(conn, ["mkdir", "-p", "--", folder], remote=remote)
        held = await _read(sftp, posixpath.join(final, MANIFEST))
        if held == manifest_bytes:
            bad = await _mismatched(conn, remote, final, b)
            if not bad:
                return PushResult(final, 0, 0, already_there=True)
            if not force:
                raise SSHError(f"{where} has this bundle's manifest but {', '.join(bad)} differ from it (corrupt "
                               "there); push again with --force to replace it")
        elif held is not None or await sftp.exists(final):
            if not force:
                raise SSHError(f"{where} already holds a different bundle; pass --force to replace it")
        await run(conn, ["mkdir", "-p", "--", staging], remote=remote)
        files = sorted(b.manifest.files.items())
        have = {n: await _size(sftp, posixpath.join(staging, n)) for n, _ in files}
        resumed = sum(min(have[n], e.size) for n, e in files)
        todo = sum(e.size for _, e in files) - resumed
        await _check_space(conn, remote, folder, todo, where)
        sent = 0
        for attempt in range(2):
            for n, e in files:
                sent += await send_file(sftp, b.path / n, posixpath.join(staging, n), have[n], e.size,
                                    _Reporter(progress, f"push {n}", e.size))
            bad = await _mismatched(conn, remote, staging, b)
            if not bad:
                break
            have = {n: e.size for n, e in files}
            # A file whose bytes differ on the far side (a cut write, or something else wrote there):
            # remove it and send it whole, once; a second mismatch is not a transfer problem.
            for n in bad:
                await sftp.remove(posixpath.join(staging, n))
                have[n] = 0
            if attempt:
                raise SSHError(f"{where}: {', '.join(bad)} still differ from the manifest after a second copy; "
                               "check the device's disk (dmesg) and push again")
        await _put_bytes(sftp, manifest_bytes, posixpath.join(staging, MANIFEST))
        if held is not None or await sftp.exists(final):
            old = posixpath.join(folder, f".{name}.edgeq-old-{key}")
            await run(conn, ["rm", "-rf", "--", old], remote=remote)
            await sftp.rename(final, old)
            await sftp.rename(staging, final)
            await run(conn, ["rm", "-rf", "--", old], remote=remote)
        else:
            await sftp.rename(staging, final)
    return PushResult(final, sent, resumed, already_there=False)


@dataclass(frozen=True)
class _Reporter:
    progress: Callable[[str, int, int], None] | None
    stage: str
    total: int

    def __call__(self, done: int) -> None:
        if self.progress:
            self.progress(self.stage, done, self.total)


async def _read(sftp, path: str) -> bytes | None:
    try:
        async with sftp.open(path, "rb") as f:
            return await f.read()
    except sftp_error() as err:  # no such file (or not readable): nothing of ours there
        reraise_if_cut(err)
        return None


async def _size(sftp, path: str) -> int:
    try:
        return (await sftp.stat(path)).size or 0
    except sftp_error() as err:
        reraise_if_cut(err)
        return 0


async def send_file(sftp, src: Path, dst: str, offset: int, size: int, progress=None) -> int:
    """Append src[offset:] to dst (offset: what a cut push left there). Returns the bytes sent."""
    if offset > size:  # a larger file there is not a prefix of ours: start over
        offset = 0
    progress = progress or (lambda done: None)
    if offset == size:
        progress(size)
        return 0
    await sftp.makedirs(posixpath.dirname(dst) or ".", exist_ok=True)
    sent = 0
    async with sftp.open(dst, "r+b" if offset else "wb") as out:
        with open(src, "rb") as f:
            f.seek(offset)
            pos = offset
            while chunk := f.read(CHUNK):
                await _write(out, chunk, pos, dst)
                pos += len(chunk)
                sent += len(chunk)
                progress(pos)
    return sent


async def _write(out, chunk: bytes, pos: int, dst: str) -> None:
    try:
        await out.write(chunk, pos)
    except sftp_error() as err:
        reraise_if_cut(err)
        # OpenSSH's sftp-server speaks SFTP v3, which reports ENOSPC only as a generic "Failure".
        raise SSHError(f"writing {dst} on the device failed ({one_line(err)}): is its disk full? "
                       "free space there and push again (what was sent is kept and resumed)") from None


async def _put_bytes(sftp, data: bytes, dst: str) -> None:
    async with sftp.open(dst, "wb") as out:
        await _write(out, data, 0, dst)


async def _check_space(conn, remote: Remote, folder: str, needed: int, where: str) -> None:
    df = await run(conn, ["df", "-Pk", "--", folder], check=False, remote=remote)
    lines = str(df.stdout or "").splitlines()
    if df.exit_status != 0 or len(lines) < 2:
        return  # no POSIX df there: the writes themselves will report a full disk
    free = int(lines[-1].split()[3]) * 1024
    if free < needed:
        raise SSHError(f"{where}: the device has {free / 1e6:.1f} MB free there, the bundle needs "
                       f"{needed / 1e6:.1f} MB more; free space or push to another folder (user@host:DIR)")


async def _mismatched(conn, remote: Remote, folder: str, b: Bundle) -> list[str]:
    """Files whose sha256 on the device is not the manifest's (sha256sum: coreutils, on every Linux)."""
    names = sorted(b.manifest.files)
    cmd = f"cd {shlex.quote(folder)} && sha256sum -- " + " ".join(shlex.quote(n) for n in names)
    result = await conn.run(cmd, check=False)
    got = {}
    for line in str(result.stdout or "").splitlines():
        digest, _, name = line.partition("  ")
        got[name] = digest
    if not got and result.exit_status != 0:
        raise SSHError(f"{remote}: cannot hash files there ({one_line_stderr(result)}); is coreutils' sha256sum installed?")
    return [n for n in names if got.get(n) != b.manifest.files[n].sha256]


def one_line_stderr(result) -> str:
    lines = [line for line in str(result.stderr or "").splitlines() if line.strip()]
    return lines[-1] if lines else f"exit status {result.exit_status}"
