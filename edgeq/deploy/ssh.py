"""SSH to a device with asyncssh: `user@host[:dir]`, keys and options from the user's agent and ~/.ssh/config.

Why asyncssh (over paramiko or fabric): it reads ~/.ssh/config itself (Host aliases, HostName, Port,
User, IdentityFile, ProxyJump, UserKnownHostsFile) and verifies host keys against known_hosts by
default, where paramiko leaves both to the caller and fabric adds invoke on top of paramiko; its
SFTP client writes at any offset, which is what resuming a cut transfer needs; it is pure Python
over `cryptography`, so it installs from wheels on a Pi, and it is actively maintained.

Every failure a user can cause (host unreachable, key refused, unknown host key, connection cut)
becomes one `SSHError` line that says what to do.
"""

from __future__ import annotations

import asyncio
import logging
import shlex
import warnings
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

from edgeq.errors import EdgeqError, MissingDependencyError
from edgeq.util import one_line

log = logging.getLogger(__name__)

CONNECT_TIMEOUT_S = 20


class SSHError(EdgeqError):
    """The device cannot be reached, refuses us, or the connection was cut."""


class ConnectionFailed(SSHError):
    """No connection to the device (unreachable, key or host key refused), or it was cut: unlike a
    bundle the device refuses, every later step on that device would fail the same way."""


@dataclass(frozen=True)
class Remote:
    host: str  # as the user wrote it: a name, an address, or a ~/.ssh/config Host alias
    user: str | None = None
    dir: str | None = None  # relative paths are relative to the remote user's home

    def __str__(self) -> str:
        return f"{self.user + '@' if self.user else ''}{self.host}"

    def path(self, default: str) -> str:
        d = self.dir or default
        return d[2:] if d.startswith("~/") else ("." if d == "~" else d)


def parse_remote(spec: str) -> Remote:
    """`[user@]host[:dir]`, as scp writes it."""
    user, _, rest = spec.rpartition("@") if "@" in spec else (None, "", spec)
    host, _, folder = rest.partition(":")
    if not host or (user is not None and not user):
        raise SSHError(f"{spec!r} is not a device address; write user@host or user@host:folder")
    return Remote(host=host, user=user or None, dir=folder or None)


def _asyncssh():
    try:
        with warnings.catch_warnings():
            # cryptography 51 deprecated DSA, and asyncssh 2.24.1 (the newest) names the DSA key
            # classes in annotations it evaluates at import: five CryptographyDeprecationWarnings on
            # stderr before every `edgeq push` / `bench --on` line, which a user cannot act on. Only
            # those are silenced (the message, at import); DSA keys are still refused or used as
            # asyncssh decides.
            warnings.filterwarnings("ignore", message="DSA is deprecated", module=r"asyncssh\.")
            import asyncssh
    except ImportError:
        raise MissingDependencyError("talking to a device needs asyncssh: pip install 'edgeq[deploy]'") from None
    return asyncssh


def sftp_error() -> type[Exception]:
    """asyncssh's SFTP error class (no such file, permission denied, failure), for except clauses.
    It also covers a cut connection (SFTPNoConnection, SFTPConnectionLost): every handler passes
    the error through `reraise_if_cut` first, or a cut in mid-write would read as a full disk."""
    return _asyncssh().SFTPError


def reraise_if_cut(err: Exception) -> None:
    """Re-raise an SFTP error that means the connection is gone, so that `connect` reports a cut."""
    asyncssh = _asyncssh()
    if isinstance(err, (asyncssh.SFTPNoConnection, asyncssh.SFTPConnectionLost)):
        raise err


@asynccontextmanager
async def connect(remote: Remote) -> AsyncIterator:
    """An open connection; a cut during the block becomes one SSHError that says to run again."""
    asyncssh = _asyncssh()
    options = {"connect_timeout": CONNECT_TIMEOUT_S}
    if remote.user:
        options["username"] = remote.user
    try:
        conn = await asyncssh.connect(remote.host, **options)
    except asyncssh.PermissionDenied:
        raise ConnectionFailed(f"{remote} refused every key offered (agent and ~/.ssh/config IdentityFile); "
                       f"add your public key there with `ssh-copy-id {remote}`") from None
    except asyncssh.HostKeyNotVerifiable as err:
        raise ConnectionFailed(f"{remote}: host key not trusted ({one_line(err.reason)}); "
                       f"connect once with `ssh {remote}` to check and accept it") from None
    except (OSError, asyncio.TimeoutError) as err:
        raise ConnectionFailed(f"cannot reach {remote.host}: {one_line(err) or 'timed out'}; "
                       "check the address, that the device is on and that sshd runs there") from None
    except asyncssh.Error as err:
        raise ConnectionFailed(f"ssh to {remote} failed: {one_line(err.reason)}") from None
    try:
        async with conn:
            yield conn
    except (asyncssh.ConnectionLost, asyncssh.DisconnectError, ConnectionError,
            asyncssh.SFTPNoConnection, asyncssh.SFTPConnectionLost) as err:
        raise ConnectionFailed(f"connection to {remote.host} was cut ({one_line(err)}); "
                       "run the same command again to continue where it stopped") from None


async def run(conn, argv: list[str], check: bool = True, remote: Remote | None = None):
    """Run argv on the device (quoted, no shell surprises); stdout, stderr and exit status come back."""
    result = await conn.run(command_line(argv), check=False)
    if check and result.exit_status != 0:
        lines = [line for line in str(result.stderr or "").splitlines() if line.strip()]
        raise SSHError(f"{remote or 'device'}: `{' '.join(argv)}` failed: {lines[-1] if lines else result.exit_status}")
    return result


def command_line(argv: list[str]) -> str:
    """argv quoted for the device's shell, except that a leading `~/` still means the remote home
    (`--remote-edgeq '~/venv/bin/edgeq'`)."""
    return " ".join("~/" + shlex.quote(a[2:]) if a.startswith("~/") else shlex.quote(a) for a in argv)


def run_sync(coro):
    """asyncio.run, with Ctrl-C left to the CLI, and without asyncssh's echo of a cut connection.

    asyncssh 2.24's parallel SFTP writer catches only OSError/SFTPError from its write tasks, so when
    the connection is cut, the first task's ConnectionLost escapes its loop and the other in-flight
    tasks are dropped with the same exception unread; asyncio then logs "Task exception was never
    retrieved" with a traceback for each (seen: 46 lines under our one-line error). The cut itself
    is reported by `connect`, so those echoes are dropped here; any other unhandled error still
    reaches asyncio's default handler."""
    with asyncio.Runner() as runner:
        runner.get_loop().set_exception_handler(_drop_cut_echoes)
        return runner.run(coro)


def _drop_cut_echoes(loop: asyncio.AbstractEventLoop, context: dict) -> None:
    exc = context.get("exception")
    if isinstance(exc, (_asyncssh().DisconnectError, ConnectionError)):
        log.debug("dropped after a cut connection: %s (%s)", context.get("message"), one_line(exc))
        return
    loop.default_exception_handler(context)
