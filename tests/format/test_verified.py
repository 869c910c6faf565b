"""A bundle whose hashes matched is not hashed again by a load while its files are unchanged; any
write, replacement or re-copy makes the next load hash (and refuse a corrupt file) as before."""

from __future__ import annotations

import os
import shutil
import time

import pytest
from helpers import manifest_fields

from edgeq.errors import BundleError
from edgeq.format import bundle as bundle_module
from edgeq.format import verified
from edgeq.format.bundle import MANIFEST, WEIGHTS, open_bundle, write_bundle


def _populate(folder):
    (folder / WEIGHTS).write_bytes(b"w" * 1000)
    for name in ("config.json", "generation_config.json", "tokenizer.json", "quantization.json"):
        (folder / name).write_text("{}")
    return manifest_fields("demo")


@pytest.fixture
def hashed(monkeypatch):
    """The files sha256_file read, in order."""
    seen = []
    real = bundle_module.sha256_file

    def spy(path):
        seen.append(path.name)
        return real(path)

    monkeypatch.setattr(bundle_module, "sha256_file", spy)
    monkeypatch.setattr(verified, "RACY_S", 0.0)  # the files below are milliseconds old
    return seen


def _load(path):
    return open_bundle(path, reuse_verification=True)


def test_an_unchanged_bundle_is_hashed_once(tmp_path, hashed):
    b = write_bundle(tmp_path / "b", _populate)
    hashed.clear()
    _load(b.path)
    assert sorted(hashed) == sorted([MANIFEST, *b.manifest.files])  # the first load hashes everything
    hashed.clear()
    _load(b.path)
    assert hashed == [MANIFEST]  # the next only the manifest, to match the stamp
    hashed.clear()
    open_bundle(b.path)  # a full check (edgeq info, push, doctor) never takes the stamp's word
    assert sorted(hashed) == sorted([MANIFEST, *b.manifest.files])


@pytest.mark.parametrize("change", ["write", "replace", "touch back"])
def test_a_changed_file_is_hashed_again_and_refused(tmp_path, hashed, change):
    b = write_bundle(tmp_path / "b", _populate)
    _load(b.path)
    time.sleep(0.05)  # past the file clock's tick, as any later change is
    weights = b.path / WEIGHTS
    st = weights.stat()
    if change == "replace":
        (tmp_path / "w").write_bytes(b"x" * 1000)
        os.replace(tmp_path / "w", weights)
    else:
        weights.write_bytes(b"x" * 1000)  # same size, other bytes
    if change == "touch back":
        os.utime(weights, ns=(st.st_atime_ns, st.st_mtime_ns))  # mtime set back; ctime cannot be
    with pytest.raises(BundleError, match="does not match its sha256"):
        _load(b.path)


def test_a_copy_is_hashed_again(tmp_path, hashed):
    b = write_bundle(tmp_path / "b", _populate)
    _load(b.path)
    shutil.copytree(b.path, tmp_path / "copy", copy_function=shutil.copy2)  # times kept, new inodes and path
    hashed.clear()
    _load(tmp_path / "copy")
    assert WEIGHTS in hashed


def test_files_written_just_before_the_check_are_not_stamped(tmp_path, hashed, monkeypatch):
    monkeypatch.setattr(verified, "RACY_S", 2.0)
    b = write_bundle(tmp_path / "b", _populate)
    _load(b.path)
    hashed.clear()
    _load(b.path)
    assert WEIGHTS in hashed  # a write in the check's clock tick could have kept the same times


def test_a_cache_that_cannot_be_written_costs_only_the_hashing(tmp_path, hashed, monkeypatch):
    (tmp_path / "cache").write_text("a file, not a folder")
    monkeypatch.setenv("EDGEQ_CACHE", str(tmp_path / "cache"))
    b = write_bundle(tmp_path / "b", _populate)
    _load(b.path)
    hashed.clear()
    _load(b.path)
    assert WEIGHTS in hashed
