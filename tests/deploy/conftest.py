"""Fixtures of the deploy tests: a tiny ONNX bundle, and a real OpenSSH server on 127.0.0.1.

The server is Debian's sshd started by the test (throwaway host and user keys, a free non-default
port, `StrictModes no` because the keys live under /tmp); the client side is a throwaway HOME whose
~/.ssh/config names it `device`, as a user's would. CI installs openssh-server (.ci/run); where sshd
is absent or we are not root, the SSH tests are skipped with that reason.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

SSHD = shutil.which("sshd") or "/usr/sbin/sshd"
SSH_KEYGEN = shutil.which("ssh-keygen")


@pytest.fixture(scope="session")
def tiny_onnx(tiny_model, tmp_path_factory):
    """An onnx-int8-dynamic bundle of the tiny Whisper (2.3 MB), as `edgeq build` writes it."""
    import edgeq

    return edgeq.build("onnx-int8-dynamic", model=str(tiny_model), out=tmp_path_factory.mktemp("bundles") / "tiny-int8",
                       language="en")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Device:
    """The sshd under test and a client HOME that reaches it as `device` (and `wrongkey`, `nowhere`)."""

    home: Path  # HOME for the client (holds .ssh/config, keys, known_hosts)
    far: Path  # a folder on the "device" the tests push into
    edgeq: Path  # the device's edgeq command: this checkout, run by this Python
    port: int
    proc: subprocess.Popen

    @property
    def has_gpu(self) -> bool:
        from edgeq.deploy.host import cuda

        return cuda()["gpu"] is not None

    def env(self) -> dict:
        env = {k: v for k, v in os.environ.items() if k != "SSH_AUTH_SOCK"}  # keys from ~/.ssh/config only
        return {**env, "HOME": str(self.home)}

    def cut_connections(self) -> int:
        """Kill the sshd processes serving connections (not the listener): a cut, as a network drop."""
        import psutil

        children = psutil.Process(self.proc.pid).children(recursive=True)
        for child in children:
            child.kill()
        return len(children)


def _keygen(path: Path) -> None:
    subprocess.run([SSH_KEYGEN, "-q", "-t", "ed25519", "-N", "", "-f", str(path)], check=True)


@pytest.fixture(scope="session")
def device(tmp_path_factory):
    if os.geteuid() != 0:
        pytest.skip("the SSH tests start sshd for the current user with StrictModes off: run as root (as CI does)")
    if not os.access(SSHD, os.X_OK) or not SSH_KEYGEN:
        pytest.skip("needs Debian's openssh-server (apt-get install -y openssh-server; .ci/run does)")
    root = tmp_path_factory.mktemp("sshd")
    home, far = root / "home", root / "far"
    (home / ".ssh").mkdir(parents=True)
    far.mkdir()
    host_key, user_key, other_key = root / "host_ed25519", home / ".ssh" / "id_device", home / ".ssh" / "id_other"
    for key in (host_key, user_key, other_key):
        _keygen(key)
    (root / "authorized_keys").write_text(Path(f"{user_key}.pub").read_text())
    port = _free_port()
    (root / "sshd_config").write_text(f"""\
Port {port}
ListenAddress 127.0.0.1
HostKey {host_key}
AuthorizedKeysFile {root / "authorized_keys"}
PasswordAuthentication no
KbdInteractiveAuthentication no
PubkeyAuthentication yes
PermitRootLogin prohibit-password
StrictModes no
UsePAM no
PidFile {root / "sshd.pid"}
Subsystem sftp internal-sftp
""")
    # The device's edgeq: this checkout under this Python, whatever PATH a non-interactive ssh has.
    edgeq = root / "bin" / "edgeq"
    edgeq.parent.mkdir()
    edgeq.write_text(f"#!/bin/sh\nPYTHONPATH={os.environ.get('PYTHONPATH', '')} exec {sys.executable} -m edgeq.cli \"$@\"\n")
    edgeq.chmod(0o755)
    host_pub = Path(f"{host_key}.pub").read_text().split()
    (home / ".ssh" / "known_hosts").write_text(f"[127.0.0.1]:{port} {host_pub[0]} {host_pub[1]}\n")
    closed = _free_port()
    (home / ".ssh" / "config").write_text(f"""\
Host device
  HostName 127.0.0.1
  Port {port}
  IdentityFile {user_key}
  IdentitiesOnly yes
Host wrongkey
  HostName 127.0.0.1
  Port {port}
  IdentityFile {other_key}
  IdentitiesOnly yes
Host nowhere
  HostName 127.0.0.1
  Port {closed}
""")
    Path("/run/sshd").mkdir(exist_ok=True)  # sshd's privilege-separation directory (Debian)
    proc = subprocess.Popen([SSHD, "-D", "-e", "-f", str(root / "sshd_config")], stderr=open(root / "sshd.log", "w"))
    deadline = time.monotonic() + 20
    while True:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                break
        if proc.poll() is not None or time.monotonic() > deadline:
            pytest.fail(f"sshd did not start: {(root / 'sshd.log').read_text()[-2000:]}")
        time.sleep(0.1)
    yield Device(home=home, far=far, edgeq=edgeq, port=port, proc=proc)
    proc.terminate()
    proc.wait(timeout=10)
