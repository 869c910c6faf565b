"""`edgeq pack` / `edgeq unpack`: one file that unpacks only when every hash matches (atomic, like builds)."""

from __future__ import annotations

import io
import tarfile

import pytest
from helpers import assert_one_line_error, edgeq

from edgeq.deploy.pack import pack, unpack
from edgeq.format.bundle import MANIFEST, open_bundle


def test_pack_then_unpack_gives_the_same_bundle(tiny_onnx, tmp_path):
    archive = pack(tiny_onnx.path, tmp_path / "b.tar.gz")
    with tarfile.open(archive) as tar:
        names = tar.getnames()
    assert names[0] == f"{tiny_onnx.path.name}/{MANIFEST}"  # the manifest first: what the archive claims
    assert sorted(names[1:]) == sorted(f"{tiny_onnx.path.name}/{n}" for n in tiny_onnx.manifest.files)
    b = unpack(archive, tmp_path / "out")
    assert open_bundle(b.path).manifest == tiny_onnx.manifest
    for name in tiny_onnx.manifest.files:
        assert (b.path / name).read_bytes() == (tiny_onnx.path / name).read_bytes()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b.tar.gz", "out"]  # no staging left


def _rewrite(src, dst, change):
    """Copy a tar.gz, letting `change(name, data)` alter (or drop, returning None) each member."""
    with tarfile.open(src) as tin, tarfile.open(dst, "w:gz") as tout:
        for m in tin.getmembers():
            data = tin.extractfile(m).read() if m.isfile() else None
            data = change(m.name, data)
            if data is None:
                continue
            m.size = len(data)
            tout.addfile(m, io.BytesIO(data))


def _flip_last_byte(data: bytes) -> bytes:
    return data[:-1] + bytes([data[-1] ^ 1])


@pytest.mark.parametrize("case, change, pattern", [
    ("tampered", lambda n, d: _flip_last_byte(d) if n.endswith("decoder.onnx") else d,
     r"decoder.onnx does not match its sha256 in the manifest \(corrupt or tampered\)"),
    ("resized", lambda n, d: d + b"x" if n.endswith("tokenizer.json") else d, r"tokenizer.json has \d+ bytes, the manifest says"),
    ("dropped", lambda n, d: None if n.endswith("config.json") and "generation" not in n else d, r"lacks config.json"),
    ("extra", lambda n, d: d, r"files the manifest does not list: evil.sh"),
])
def test_a_tampered_archive_is_refused_and_leaves_nothing(tiny_onnx, tmp_path, case, change, pattern):
    good = pack(tiny_onnx.path, tmp_path / "good.tar.gz")
    bad = tmp_path / "bad.tar.gz"
    _rewrite(good, bad, change)
    if case == "extra":
        with tarfile.open(bad) as t:
            members = [(m, t.extractfile(m).read()) for m in t.getmembers()]
        with tarfile.open(bad, "w:gz") as t:
            for m, data in members:
                t.addfile(m, io.BytesIO(data))
            extra = tarfile.TarInfo(f"{tiny_onnx.path.name}/evil.sh")
            extra.size = 3
            t.addfile(extra, io.BytesIO(b"rm\n"))
    proc = edgeq("unpack", bad, "-o", tmp_path / "out")
    assert_one_line_error(proc, pattern)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.tar.gz", "good.tar.gz"]


def test_a_truncated_or_foreign_archive_is_one_line(tiny_onnx, tmp_path):
    good = pack(tiny_onnx.path, tmp_path / "good.tar.gz")
    cut = tmp_path / "cut.tar.gz"
    cut.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    assert_one_line_error(edgeq("unpack", cut, "-o", tmp_path / "out"), r"cut.tar.gz: archive is truncated or corrupt")
    assert not (tmp_path / "out").exists()
    junk = tmp_path / "junk.tar.gz"
    junk.write_text("not a tar")
    assert_one_line_error(edgeq("unpack", junk), r"junk.tar.gz: not a bundle archive .*edgeq pack")
    climbing = tmp_path / "climb.tar.gz"
    with tarfile.open(climbing, "w:gz") as t:
        for name in ("b/manifest.json", "b/../../escape.txt"):
            info = tarfile.TarInfo(name)
            info.size = 2
            t.addfile(info, io.BytesIO(b"{}"))
    assert_one_line_error(edgeq("unpack", climbing, "-o", tmp_path / "c"), r"refusing archive entry 'b/\.\./\.\./escape.txt'")
    assert not (tmp_path.parent / "escape.txt").exists() and not (tmp_path / "c").exists()


def test_unpack_does_not_replace_a_bundle_without_force_and_pack_not_a_file(tiny_onnx, tmp_path):
    archive = tmp_path / "b.tar.gz"
    assert edgeq("pack", tiny_onnx.path, "-o", archive).returncode == 0
    assert_one_line_error(edgeq("pack", tiny_onnx.path, "-o", archive), r"exists; pass --force to replace it")
    assert edgeq("unpack", archive, "-o", tmp_path / "b").returncode == 0
    assert_one_line_error(edgeq("unpack", archive, "-o", tmp_path / "b"), r"already holds a bundle .*pass --force")
    proc = edgeq("unpack", archive, "-o", tmp_path / "b", "--force")
    assert proc.returncode == 0 and "all sha256 match" in proc.stdout, proc.stderr


def test_pack_refuses_a_corrupt_bundle(tiny_onnx, tmp_path):
    import shutil

    broken = tmp_path / "broken"
    shutil.copytree(tiny_onnx.path, broken)
    (broken / "config.json").write_bytes(_flip_last_byte((broken / "config.json").read_bytes()))  # same size
    assert_one_line_error(edgeq("pack", broken, "-o", tmp_path / "x.tar.gz"), r"config.json does not match its sha256")
    assert not (tmp_path / "x.tar.gz").exists()


def test_remote_bench_forwards_every_decode_option_the_cli_takes():
    # bench --on must decode on the device as a local bench with the same flags would.
    from edgeq.cli import _options
    from edgeq.deploy.remote import decode_flags
    from edgeq.runtime.decoding import STUDY_OPTIONS

    assert decode_flags(STUDY_OPTIONS) == []
    assert decode_flags(_options(STUDY_OPTIONS, None, None, None, None, None, None, "full"))[-2:] == ["--encoder-window",
                                                                                                    "full"]
    chosen = _options(STUDY_OPTIONS, 5, 2.0, 0.5, True, False, True, "full", True)
    flags = decode_flags(chosen)
    values = {"--beam-size": 5, "--patience": 2.0, "--length-penalty": 0.5}
    again = _options(STUDY_OPTIONS, *(float(flags[flags.index(k) + 1]) if k != "--beam-size" else int(flags[flags.index(k) + 1])
                                     for k in values), "--temperature-fallback" in flags,
                     "--condition-on-previous-text" in flags, "--vad" in flags,
                     flags[flags.index("--encoder-window") + 1], "--timestamps" in flags)
    assert again == chosen
