from __future__ import annotations

import json

import pytest

from helpers import manifest_fields

from edgeq.errors import BundleError
from edgeq.format.bundle import (
    FORMAT_VERSION,
    MANIFEST,
    WEIGHTS,
    is_bundle,
    open_bundle,
    read_manifest,
    write_bundle,
)


def _populate(folder):
    (folder / WEIGHTS).write_bytes(b"w" * 1000)
    for name in ("config.json", "generation_config.json", "tokenizer.json", "quantization.json"):
        (folder / name).write_text("{}")
    return manifest_fields("demo")


def test_manifest_round_trip(tmp_path):
    b = write_bundle(tmp_path / "b", _populate)
    m = read_manifest(b.path)
    assert m == b.manifest
    assert m.format_version == FORMAT_VERSION
    assert m.files[WEIGHTS].size == 1000 and len(m.files[WEIGHTS].sha256) == 64
    assert m.size.weights_bytes == 1000 and m.size.reduction_pct == 75.0
    on_disk = json.loads((b.path / MANIFEST).read_text())
    assert on_disk == m.to_dict() and "reduction_pct" in on_disk["size"]
    assert open_bundle(b.path).manifest == m


def test_tampered_file_is_detected(tmp_path):
    b = write_bundle(tmp_path / "b", _populate)
    (b.path / WEIGHTS).write_bytes(b"x" * 1000)  # same size, other bytes
    with pytest.raises(BundleError, match="does not match its sha256"):
        open_bundle(b.path)
    open_bundle(b.path, verify_hashes=False)  # sizes alone still agree


def test_truncated_and_missing_files_are_detected(tmp_path):
    b = write_bundle(tmp_path / "b", _populate)
    (b.path / WEIGHTS).write_bytes(b"w" * 10)
    with pytest.raises(BundleError, match="has 10 bytes"):
        open_bundle(b.path, verify_hashes=False)
    (b.path / WEIGHTS).unlink()
    with pytest.raises(BundleError, match="is missing"):
        open_bundle(b.path)


def test_unknown_format_version_is_refused(tmp_path):
    b = write_bundle(tmp_path / "b", _populate)
    m = json.loads((b.path / MANIFEST).read_text())
    m["format_version"] = 99
    (b.path / MANIFEST).write_text(json.dumps(m))
    with pytest.raises(BundleError, match="format version 99 is not supported"):
        open_bundle(b.path)


def test_not_a_bundle(tmp_path):
    with pytest.raises(BundleError, match="no such bundle"):
        open_bundle(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(BundleError, match="not an edgeq bundle"):
        open_bundle(tmp_path / "empty")


def test_failed_build_leaves_nothing(tmp_path):
    def crash(folder):
        _populate(folder)
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        write_bundle(tmp_path / "b", crash)
    assert list(tmp_path.iterdir()) == []


def test_existing_bundle_needs_force_and_stays_intact_on_failure(tmp_path):
    first = write_bundle(tmp_path / "b", _populate)
    with pytest.raises(BundleError, match=r"already holds a bundle \(demo\); pass --force"):
        write_bundle(tmp_path / "b", _populate)

    def crash(folder):
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError):
        write_bundle(tmp_path / "b", crash, force=True)
    assert open_bundle(first.path).manifest == first.manifest  # the old bundle is untouched
    write_bundle(tmp_path / "b", _populate, force=True)
    assert [p.name for p in tmp_path.iterdir()] == ["b"]


def test_non_bundle_folder_is_never_overwritten(tmp_path):
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "notes.txt").write_text("mine")
    with pytest.raises(BundleError, match="holds no bundle"):
        write_bundle(tmp_path / "b", _populate, force=True)
    assert is_bundle(tmp_path / "b") is False
