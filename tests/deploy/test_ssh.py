"""`edgeq push` and `edgeq bench --on` against a real OpenSSH server on 127.0.0.1 (see conftest.py): no mocks."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time

import pytest
from helpers import assert_one_line_error, edgeq, tone

from edgeq.format.bundle import MANIFEST, open_bundle, write_bundle
from edgeq.util import sha256_file


def push(device, *args):
    return edgeq("push", *args, env=device.env())


def test_push_copies_a_verified_bundle_and_a_second_push_only_verifies(device, tiny_onnx):
    dest = device.far / "push-basic"
    proc = push(device, tiny_onnx.path, f"device:{dest}")
    assert proc.returncode == 0, proc.stderr
    assert "every sha256 matches there" in proc.stdout
    there = open_bundle(dest / tiny_onnx.path.name)  # verifies every hash
    assert there.manifest == tiny_onnx.manifest
    assert [p.name for p in dest.iterdir()] == [tiny_onnx.path.name]  # no staging folder left
    again = push(device, tiny_onnx.path, f"device:{dest}")
    assert again.returncode == 0 and "up to date" in again.stdout, again.stderr


def test_push_refuses_to_overwrite_a_different_bundle_without_force(device, tiny_onnx, tmp_path):
    dest = device.far / "push-force"
    other = tmp_path / tiny_onnx.path.name  # same folder name, different bundle
    shutil.copytree(tiny_onnx.path, other)
    manifest = json.loads((other / MANIFEST).read_text())
    manifest["created"] = "2000-01-01T00:00:00+00:00"
    (other / MANIFEST).write_text(json.dumps(manifest))
    assert push(device, tiny_onnx.path, f"device:{dest}").returncode == 0
    refused = push(device, other, f"device:{dest}")
    assert_one_line_error(refused, r"already holds a different bundle; pass --force")
    assert json.loads((dest / other.name / MANIFEST).read_text())["created"] == tiny_onnx.manifest.created
    forced = push(device, other, f"device:{dest}", "--force")
    assert forced.returncode == 0, forced.stderr
    assert json.loads((dest / other.name / MANIFEST).read_text())["created"] == "2000-01-01T00:00:00+00:00"
    assert sorted(p.name for p in dest.iterdir()) == [other.name]  # the old one is gone, no staging left


@pytest.fixture(scope="module")
def big_bundle(tmp_path_factory):
    """A bundle with 96 MB of weights (random bytes: push does not care what they mean), so that a
    transfer over loopback lasts long enough to be cut in the middle."""
    from helpers import manifest_fields

    from edgeq.format.manifest import REQUIRED_FILES

    def populate(folder):
        for name in REQUIRED_FILES["torch"]:  # placeholders: push copies bytes, it does not load them
            (folder / name).write_text("{}\n")
        with open(folder / "model.safetensors", "wb") as f:
            for _ in range(96):
                f.write(os.urandom(1 << 20))
        return manifest_fields("big")

    return write_bundle(tmp_path_factory.mktemp("big") / "big", populate)


def test_a_cut_push_leaves_nothing_that_looks_complete_and_a_retry_continues(device, big_bundle):
    dest = device.far / "push-cut"
    total = big_bundle.manifest.files["model.safetensors"].size
    client = subprocess.Popen([sys.executable, "-m", "edgeq.cli", "push", str(big_bundle.path), f"device:{dest}"],
                              env=device.env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline, cut_at = time.monotonic() + 120, 0
    while time.monotonic() < deadline and client.poll() is None:
        staged = list(dest.glob(".big.edgeq-push-*/model.safetensors"))
        if staged and 0 < staged[0].stat().st_size < total * 0.9:
            cut_at = staged[0].stat().st_size
            device.cut_connections()
            break
        time.sleep(0.005)
    out, err = client.communicate(timeout=60)
    assert cut_at, f"the transfer was not caught in the middle: {err}"
    lines = [line for line in err.splitlines() if line.strip()]
    assert client.returncode != 0 and len(lines) == 1 and "Traceback" not in err, err
    assert "was cut" in lines[0] and "run the same command again" in lines[0], lines[0]
    assert not (dest / "big").exists()  # nothing that looks like a bundle
    (staging,) = dest.glob(".big.edgeq-push-*")
    assert not (staging / MANIFEST).exists()
    left = (staging / "model.safetensors").stat().st_size
    assert 0 < left < total

    retry = edgeq("push", big_bundle.path, f"device:{dest}", env=device.env())
    assert retry.returncode == 0, retry.stderr
    assert "resumed from a cut push" in retry.stdout, retry.stdout
    sent_mb = float(retry.stdout.split("(")[1].split(" MB sent")[0])
    assert sent_mb * 1e6 < total - left + 1e6  # only the rest was sent
    assert sha256_file(dest / "big" / "model.safetensors") == big_bundle.manifest.files["model.safetensors"].sha256
    assert [p.name for p in dest.iterdir()] == ["big"]


def test_push_to_a_full_disk_says_so_and_leaves_nothing(device, tiny_onnx):
    dest = device.far / "push-full"
    dest.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(dest)], capture_output=True).returncode:
        pytest.skip("cannot mount a 1 MB tmpfs to fill (needs root and mount rights)")
    try:
        proc = push(device, tiny_onnx.path, f"device:{dest}")
        assert_one_line_error(proc, r"MB free there, the bundle needs 2\.\d MB more; free space or push to another folder")
        assert not (dest / tiny_onnx.path.name).exists()
    finally:
        subprocess.run(["umount", str(dest)], check=True)


@pytest.mark.parametrize("address, pattern", [
    ("nowhere:/tmp/x", r"cannot reach nowhere: .*check the address"),
    ("wrongkey:/tmp/x", r"wrongkey refused every key offered .*ssh-copy-id wrongkey"),
    ("@device", r"is not a device address"),
])
def test_unreachable_or_refusing_device_is_one_line(device, tiny_onnx, address, pattern):
    assert_one_line_error(push(device, tiny_onnx.path, address), pattern)


# --------------------------------------------------------------------------- bench --on


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    import soundfile as sf

    d = tmp_path_factory.mktemp("ds")
    sf.write(d / "a.wav", tone(1.5), 16000)
    sf.write(d / "b.flac", tone(1.0, freq=300), 16000)
    (d / "manifest.tsv").write_text("file\ttranscript\na.wav\thello world\nb.flac\tgood morning\n")
    return d / "manifest.tsv"


def bench_on(device, bundle, dataset, out, *more, remote_edgeq=None):
    return edgeq("bench", bundle, "-d", dataset, "--threads", "1", "--warmup", "0", "-o", out,
                 "--on", f"device:{device.far / 'bench'}", "--remote-edgeq", remote_edgeq or device.edgeq, *more,
                 env=device.env())


def test_bench_on_the_device_brings_back_the_files_of_a_local_run(device, tiny_onnx, dataset, tmp_path):
    remote = bench_on(device, tiny_onnx.path, dataset, tmp_path / "remote")
    assert remote.returncode == 0, remote.stderr[-3000:]
    local = edgeq("bench", tiny_onnx.path, "-d", dataset, "--threads", "1", "--warmup", "0", "-o", tmp_path / "local")
    assert local.returncode == 0, local.stderr[-3000:]
    name = tiny_onnx.path.name
    assert sorted(p.name for p in (tmp_path / "remote").iterdir()) == sorted(p.name for p in (tmp_path / "local").iterdir())

    def records(folder):
        return [json.loads(line) for line in (folder / f"{name}.jsonl").read_text().splitlines()]

    r, lo = records(tmp_path / "remote"), records(tmp_path / "local")
    assert [x["type"] for x in r] == [x["type"] for x in lo]
    utts = {x["id"]: (x["hypothesis"], x["tokens"]) for x in r if x["type"] == "utterance"}
    assert utts == {x["id"]: (x["hypothesis"], x["tokens"]) for x in lo if x["type"] == "utterance"}
    assert set(utts) == {"a", "b"}
    run = next(x for x in r if x["type"] == "run")
    # The device's fingerprint (here the same machine, reached over SSH): CPU, governor, temperature keys.
    assert {"governor", "freq_mhz", "temperature_c", "model", "key_flags"} <= set(run["env"]["cpu"])
    assert run["system_info"]["path"] == str(device.far / "bench" / name)  # measured where it was pushed
    assert run["system_info"]["manifest_sha256"] == tiny_onnx.manifest_sha256
    (summary,) = json.loads((tmp_path / "remote" / "summary.json").read_text())
    assert summary["system"] == name and summary["utterances"] == 2

    again = bench_on(device, tiny_onnx.path, dataset, tmp_path / "remote")
    assert_one_line_error(again, r"exists: pass --resume .* or --force")


def test_bench_on_without_edgeq_on_the_device_says_how_to_install_it(device, tiny_onnx, dataset, tmp_path):
    proc = bench_on(device, tiny_onnx.path, dataset, tmp_path / "o", remote_edgeq="/nonexistent/bin/edgeq")
    assert_one_line_error(proc, r"edgeq is not installed on device .*pip install 'edgeq\[runtime\]'")


def test_bench_on_a_device_whose_edgeq_reads_another_format_version(device, tiny_onnx, dataset, tmp_path):
    newer = tmp_path / "edgeq-v2"
    newer.write_text(f"#!/bin/sh\nPYTHONPATH={os.environ.get('PYTHONPATH', '')} exec {sys.executable} -c '"
                     "import sys, edgeq.format.manifest as m; m.FORMAT_VERSION = 2; sys.argv[0] = \"edgeq\"; "
                     "from edgeq.cli import main; main()' \"$@\"\n")
    newer.chmod(0o755)
    proc = bench_on(device, tiny_onnx.path, dataset, tmp_path / "o", remote_edgeq=newer)
    assert_one_line_error(proc, r"bundle format version 1 is not supported by this edgeq \(reads version 2\).*fix there")


@pytest.fixture(scope="module")
def cuda_bundle(tiny_model, tmp_path_factory):
    import edgeq as lib
    from edgeq.spec.recipe import apply_overrides, load_recipe

    recipe = apply_overrides(load_recipe("onnx-int8-dynamic"), ['devices=["cuda"]'])
    return lib.build(recipe, model=str(tiny_model), out=tmp_path_factory.mktemp("cuda") / "cuda-only", language="en")


@pytest.mark.parametrize("more, pattern", [
    (("--device", "cuda"), r"--device cuda, but this host has no NVIDIA GPU .*fix there: run it on a CUDA device"),
    ((), r"runs on cuda only \(its recipe says so\), not cpu; fix there: run it with --device cuda"),
])
def test_bench_on_a_cpu_device_refuses_a_cuda_bundle(device, cuda_bundle, dataset, tmp_path, more, pattern):
    if device.has_gpu:
        pytest.skip("this device has an NVIDIA GPU")
    proc = bench_on(device, cuda_bundle.path, dataset, tmp_path / "o", *more)
    assert_one_line_error(proc, pattern)
    assert not (tmp_path / "o" / "summary.json").exists()


def test_bench_on_refused_on_the_device_never_brings_back_an_earlier_summary(device, tiny_onnx, dataset, tmp_path):
    first = bench_on(device, tiny_onnx.path, dataset, tmp_path / "run")
    assert first.returncode == 0, first.stderr[-3000:]
    shutil.rmtree(tmp_path / "run")  # the local copy is gone, the device still has its results
    again = bench_on(device, tiny_onnx.path, dataset, tmp_path / "run")
    assert_one_line_error(again, r"^edgeq: error: device: .*tiny-int8.jsonl exists: pass --resume")
    assert not (tmp_path / "run" / "summary.json").exists()
    resumed = bench_on(device, tiny_onnx.path, dataset, tmp_path / "run", "--resume")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert (tmp_path / "run" / "summary.json").exists()


def test_addresses_and_remote_command_lines():
    from edgeq.deploy.ssh import Remote, command_line, parse_remote

    assert parse_remote("pi@raspberrypi") == Remote("raspberrypi", "pi", None)
    assert parse_remote("pi@raspberrypi:models") == Remote("raspberrypi", "pi", "models")
    assert parse_remote("jetson:/data/b").path("edgeq-bundles") == "/data/b"
    assert parse_remote("jetson:~/b").path("x") == "b" and parse_remote("jetson").path("edgeq-bundles") == "edgeq-bundles"
    assert command_line(["~/venv/bin/edgeq", "bench", "a b", "$(rm -rf /)"]) == "~/venv/bin/edgeq bench 'a b' '$(rm -rf /)'"


def test_a_corrupt_copy_on_the_device_is_found_and_replaced_only_with_force(device, tiny_onnx):
    dest = device.far / "push-corrupt"
    assert push(device, tiny_onnx.path, f"device:{dest}").returncode == 0
    target = dest / tiny_onnx.path.name / "decoder.onnx"
    data = bytearray(target.read_bytes())
    data[len(data) // 2] ^= 1
    target.write_bytes(bytes(data))
    assert_one_line_error(push(device, tiny_onnx.path, f"device:{dest}"),
                          r"has this bundle's manifest but decoder.onnx differ from it .*--force")
    forced = push(device, tiny_onnx.path, f"device:{dest}", "--force")
    assert forced.returncode == 0, forced.stderr
    assert open_bundle(dest / tiny_onnx.path.name).manifest == tiny_onnx.manifest


def test_a_staged_file_that_is_not_a_prefix_of_ours_is_sent_again_whole(device, tiny_onnx):
    dest = device.far / "push-wrong-prefix"
    key = sha256_file(tiny_onnx.path / MANIFEST)[:12]
    staging = dest / f".{tiny_onnx.path.name}.edgeq-push-{key}"
    staging.mkdir(parents=True)
    (staging / "decoder.onnx").write_bytes(b"\0" * 1000)  # looks like a cut copy, but the bytes are wrong
    proc = push(device, tiny_onnx.path, f"device:{dest}")
    assert proc.returncode == 0, proc.stderr
    assert open_bundle(dest / tiny_onnx.path.name).manifest == tiny_onnx.manifest  # every hash verified
    assert [p.name for p in dest.iterdir()] == [tiny_onnx.path.name]


def test_tasks_left_failing_by_a_cut_connection_are_not_echoed_but_other_errors_are(caplog):
    """asyncssh's parallel SFTP writer abandons its other in-flight writes when the connection is cut;
    asyncio would print a traceback for each ("Task exception was never retrieved", 46 lines in CI)."""
    import asyncio
    import gc

    import asyncssh

    from edgeq.deploy.ssh import run_sync

    async def abandon(exc):
        async def fail():
            raise exc
        task = asyncio.ensure_future(fail())
        await asyncio.sleep(0)
        await asyncio.sleep(0)
        del task  # finished with an exception nobody reads, as asyncssh leaves them
        gc.collect()
        return "done"

    caplog.set_level("ERROR", logger="asyncio")
    assert run_sync(abandon(asyncssh.ConnectionLost("Connection lost"))) == "done"
    gc.collect()
    assert not caplog.records
    assert run_sync(abandon(ValueError("a real bug"))) == "done"
    gc.collect()
    assert ["never retrieved" in r.getMessage() and "a real bug" in r.exc_text for r in caplog.records] == [True]


def test_a_cut_in_the_middle_of_a_write_says_cut_not_disk_full(device, monkeypatch, tmp_path):
    """The cut push above lands on whichever SFTP call runs when sshd dies; a write in flight comes
    back as SFTPNoConnection, a subclass of the SFTPError that also means "Failure" (a full disk on
    OpenSSH's SFTP v3). Here the client has seen the cut before the write, every time."""
    import asyncio

    from edgeq.deploy import push as push_module
    from edgeq.deploy.ssh import ConnectionFailed, connect, parse_remote

    monkeypatch.setenv("HOME", str(device.home))
    monkeypatch.delenv("SSH_AUTH_SOCK", raising=False)
    src = tmp_path / "blob"
    src.write_bytes(os.urandom(1 << 16))
    dst = str(device.far / "cut-write" / "blob")

    async def cut_then_write():
        async with connect(parse_remote("device")) as conn, conn.start_sftp_client() as sftp:
            await sftp.makedirs(os.path.dirname(dst), exist_ok=True)
            async with sftp.open(dst, "wb") as out:
                assert device.cut_connections() > 0
                await asyncio.wait_for(conn.wait_closed(), 10)  # the client has seen the cut
                await push_module._write(out, src.read_bytes(), 0, dst)

    with pytest.raises(ConnectionFailed, match=r"connection to device was cut .*run the same command again"):
        asyncio.run(cut_then_write())
