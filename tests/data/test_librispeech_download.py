"""`librispeech:<split>` downloads the OpenSLR archive once (resumable, sha256-checked) — against a local server."""

from __future__ import annotations

import hashlib
import io
import os
import socket
import subprocess
import sys
import tarfile
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pytest
import soundfile as sf
from helpers import REPO

from edgeq.data import librispeech
from edgeq.data.datasets import open_dataset
from edgeq.errors import DatasetError


def _fake_archive(split: str = "test-clean") -> bytes:
    buf = io.BytesIO()
    tone = (0.1 * np.sin(2 * np.pi * 440 * np.arange(1600) / 16000)).astype(np.float32)
    flac = io.BytesIO()
    sf.write(flac, tone, 16000, format="FLAC")
    files = {
        "LibriSpeech/README.TXT": b"fake LibriSpeech\n",
        f"LibriSpeech/{split}/1/2/1-2-0000.flac": flac.getvalue(),
        f"LibriSpeech/{split}/1/2/1-2.trans.txt": b"1-2-0000 HELLO WORLD\n",
    }
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


class _Server:
    """Serves /<split>.tar.gz with Range support and records each request's Range header."""

    def __init__(self, payloads: dict[str, bytes]):
        self.payloads = payloads
        self.requests: list[tuple[str, str | None]] = []
        self.honor_range = True
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802
                server.requests.append((self.path, self.headers.get("Range")))
                data = server.payloads.get(self.path.lstrip("/"))
                if data is None:
                    self.send_error(404)
                    return
                start, status = 0, 200
                rng = self.headers.get("Range")
                if server.honor_range and rng and rng.startswith("bytes=") and rng.endswith("-"):
                    start = int(rng[len("bytes="):-1])
                    if start >= len(data):
                        self.send_response(416)
                        self.send_header("Content-Range", f"bytes */{len(data)}")
                        self.send_header("Content-Length", "0")
                        self.end_headers()
                        return
                    status = 206
                self.send_response(status)
                if status == 206:
                    self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
                self.send_header("Content-Length", str(len(data) - start))
                self.end_headers()
                self.wfile.write(data[start:])

            def log_message(self, *args):
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def archive():
    return _fake_archive()


@pytest.fixture
def server(archive, tmp_path, monkeypatch):
    srv = _Server({"test-clean.tar.gz": archive})
    monkeypatch.setenv("EDGEQ_LIBRISPEECH_URL", srv.url)
    monkeypatch.setenv("EDGEQ_DATA", str(tmp_path / "cache"))
    monkeypatch.setitem(librispeech.SHA256, "test-clean", hashlib.sha256(archive).hexdigest())
    yield srv
    srv.close()


def _closed_port_url() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}"


def test_downloads_extracts_then_uses_the_cache(server, tmp_path):
    seen = []
    ds = open_dataset("librispeech:test-clean", progress=lambda stage, done, total: seen.append((stage, done, total)))
    assert [(u.id, u.reference) for u in ds.utterances] == [("1-2-0000", "HELLO WORLD")]
    cache = tmp_path / "cache"
    assert ds.utterances[0].audio == cache / "LibriSpeech/test-clean/1/2/1-2-0000.flac"
    assert sf.info(str(ds.utterances[0].audio)).samplerate == 16000
    assert (cache / "LibriSpeech/README.TXT").is_file()
    assert list((cache / "downloads").iterdir()) == []  # archive removed
    assert [p.name for p in cache.iterdir()] and not any(p.name.startswith(".") for p in cache.iterdir())
    assert server.requests == [("/test-clean.tar.gz", None)]
    download = [s for s in seen if s[0] == "downloading LibriSpeech test-clean"]
    assert download and download[-1][1] == download[-1][2] == len(server.payloads["test-clean.tar.gz"])

    again = open_dataset("librispeech:test-clean")
    assert again.utterances == ds.utterances
    assert len(server.requests) == 1  # no second request


def test_resumes_a_partial_download(server, archive, tmp_path):
    downloads = tmp_path / "cache" / "downloads"
    downloads.mkdir(parents=True)
    half = len(archive) // 2
    (downloads / "test-clean.tar.gz.part").write_bytes(archive[:half])
    ds = open_dataset("librispeech:test-clean")
    assert [(u.id, u.reference) for u in ds.utterances] == [("1-2-0000", "HELLO WORLD")]
    assert server.requests == [("/test-clean.tar.gz", f"bytes={half}-")]
    assert list(downloads.iterdir()) == []


def test_a_complete_part_is_not_downloaded_again(server, archive, tmp_path):
    downloads = tmp_path / "cache" / "downloads"
    downloads.mkdir(parents=True)
    (downloads / "test-clean.tar.gz.part").write_bytes(archive)
    assert len(open_dataset("librispeech:test-clean")) == 1  # the server answers 416: already complete


def test_server_ignoring_range_starts_over(server, tmp_path):
    downloads = tmp_path / "cache" / "downloads"
    downloads.mkdir(parents=True)
    (downloads / "test-clean.tar.gz.part").write_bytes(b"garbage that must not be kept")
    server.honor_range = False  # answers 200 with the whole file: the .part is replaced, not appended to
    assert len(open_dataset("librispeech:test-clean")) == 1
    assert server.requests == [("/test-clean.tar.gz", "bytes=29-")]


def test_checksum_mismatch_deletes_the_download(server, tmp_path, monkeypatch):
    monkeypatch.setitem(librispeech.SHA256, "test-clean", "0" * 64)
    with pytest.raises(DatasetError) as err:
        open_dataset("librispeech:test-clean")
    msg = str(err.value)
    assert "\n" not in msg and "sha256" in msg and "0" * 64 in msg
    assert hashlib.sha256(server.payloads["test-clean.tar.gz"]).hexdigest() in msg
    cache = tmp_path / "cache"
    assert not (cache / "LibriSpeech" / "test-clean").exists()
    assert list((cache / "downloads").iterdir()) == []


def test_unreachable_server_is_one_line_with_the_local_copy_hint(tmp_path, monkeypatch):
    monkeypatch.setenv("EDGEQ_LIBRISPEECH_URL", _closed_port_url())
    monkeypatch.setenv("EDGEQ_DATA", str(tmp_path / "cache"))
    downloads = tmp_path / "cache" / "downloads"
    downloads.mkdir(parents=True)
    (downloads / "test-other.tar.gz.part").write_bytes(b"partial")
    with pytest.raises(DatasetError) as err:
        open_dataset("librispeech:test-other")
    msg = str(err.value)
    assert "\n" not in msg
    assert "failed" in msg and "--dataset /path/to/LibriSpeech/test-other" in msg
    assert "kept" in msg and (downloads / "test-other.tar.gz.part").read_bytes() == b"partial"
    assert not (tmp_path / "cache" / "LibriSpeech").exists()


def test_cli_bench_offline_is_one_line_error(tmp_path):
    env = {**os.environ, "EDGEQ_LIBRISPEECH_URL": _closed_port_url(), "EDGEQ_DATA": str(tmp_path / "cache"),
           "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run([sys.executable, "-m", "edgeq.cli", "bench", "-d", "librispeech:test-other",
                           "-m", "openai/whisper-tiny", "-o", str(tmp_path / "out")],
                          capture_output=True, text=True, env=env, timeout=300, cwd=REPO)
    assert proc.returncode != 0
    assert "Traceback" not in proc.stdout + proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("edgeq: error:") and "--dataset" in lines[0], lines[0]
    assert not (tmp_path / "out").exists()
