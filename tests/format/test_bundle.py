from __future__ import annotations

import json
import re

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


# --------------------------------------------------------------------------- a bundle contains itself


def _edit_manifest(folder, change) -> None:
    m = json.loads((folder / MANIFEST).read_text())
    change(m)
    (folder / MANIFEST).write_text(json.dumps(m))


def test_every_file_a_loader_opens_must_be_listed(tmp_path):
    b = write_bundle(tmp_path / "b", _populate)
    # The files table emptied (and a weight byte flipped): refused, not "all files match".
    _edit_manifest(b.path, lambda m: m.update(files={}, size={**m["size"], "bundle_bytes": 0}))
    (b.path / WEIGHTS).write_bytes(b"x" * 1000)
    with pytest.raises(BundleError, match=r"does not list config.json, generation_config.json, .*model.safetensors"):
        open_bundle(b.path)

    b = write_bundle(tmp_path / "c", _populate)

    def unlist_config(m):
        size = m["files"].pop("config.json")["size"]
        m["size"]["bundle_bytes"] -= size

    _edit_manifest(b.path, unlist_config)
    with pytest.raises(BundleError, match=r"does not list config.json, which a torch bundle needs"):
        open_bundle(b.path)


def test_bundle_file_hands_out_only_listed_files(tmp_path):
    b = open_bundle(write_bundle(tmp_path / "b", _populate).path)
    assert b.file("config.json") == b.path / "config.json"
    (b.path / "notes.txt").write_text("not listed")
    with pytest.raises(BundleError, match=r"notes.txt is not listed in the manifest, so it was not verified"):
        b.file("notes.txt")
    assert b.extra_files() == ["notes.txt"]


@pytest.mark.parametrize("name", ["../../../../etc/passwd", "/etc/passwd", "a/../../x", "./config.json",
                                  "a//b", "dir\\..\\x", "", "manifest.json"])
def test_file_names_are_confined_to_the_bundle(tmp_path, name):
    b = write_bundle(tmp_path / "b", _populate)
    _edit_manifest(b.path, lambda m: m["files"].update({name: {"sha256": "0" * 64, "size": 1}}))
    with pytest.raises(BundleError) as err:
        open_bundle(b.path)
    message = str(err.value)
    assert "\n" not in message
    # Refused by its name, before anything is opened: nothing about the outside file leaks.
    assert "is not a plain relative path inside the bundle" in message or "cannot list itself" in message
    assert "bytes" not in message


def test_symlinks_are_refused(tmp_path):
    outside = tmp_path / "outside.json"
    outside.write_text("{}")
    b = write_bundle(tmp_path / "b", _populate)
    (b.path / "config.json").unlink()
    (b.path / "config.json").symlink_to(outside)  # same bytes, same size, same sha256 as listed
    with pytest.raises(BundleError, match=r"config.json is a symbolic link"):
        open_bundle(b.path)
    with pytest.raises(BundleError, match=r"config.json is a symbolic link"):
        open_bundle(b.path, verify_hashes=False)


def test_manifest_fields_are_checked_for_their_types(tmp_path):
    import edgeq

    V = re.escape(edgeq.__version__)
    b = write_bundle(tmp_path / "b", _populate)
    # A size stored as text is refused as such, not compared as "1000 bytes vs '1000'".
    _edit_manifest(b.path, lambda m: m["files"][WEIGHTS].update(size="1000"))
    with pytest.raises(BundleError, match=r"files.'model.safetensors'.size: Expected `int`, got `str`"):
        open_bundle(b.path)
    for change, pattern in [
        (lambda m: m.update(files=[]), r"files: Expected `object`, got `array`"),
        (lambda m: m.update(recipe="fp32"), r"recipe: Expected `object`, got `str`"),
        (lambda m: m["requires"].update(extra="runtime] --index-url=http://x"), r"requires.extra"),
        (lambda m: m.update(runtime="onnxruntime"), r"does not run backend 'float'"),
        (lambda m: m.pop("decoding"), r"lacks 'decoding'"),
        (lambda m: m.update(extra=1), r"unknown key 'extra'"),
        (lambda m: m["files"][WEIGHTS].update(sha256="x"), r"sha256.*the bundle is damaged, rebuild it"),
        # What a later edgeq writes (a new recipe option, a new value): not called damage.
        (lambda m: (m["recipe"]["options"].update(cross_kv_bits=8), m.update(edgeq_version="9.9.9")),
         r"recipe: options: unknown key 'cross_kv_bits': written by an edgeq that knows more than "
         rf"this one \({V}; the bundle says edgeq 9.9.9\), or edited; install that edgeq here, or rebuild"),
        # ... or a newer checkout of this very version, which no version number tells apart
        (lambda m: (m["recipe"]["modules"].update(table_bits=8), m.update(edgeq_version=edgeq.__version__)),
         rf"unknown key 'recipe.modules.table_bits': written by a later build of edgeq {V} than this one, "
         r"or edited; update this edgeq, or rebuild the bundle with it"),
        (lambda m: m["recipe"].update(scheme="sparse"), r"recipe.scheme: 'sparse' is not allowed.*knows more than this"),
    ]:
        b = write_bundle(tmp_path / "b", _populate, force=True)
        _edit_manifest(b.path, change)
        with pytest.raises(BundleError, match=pattern):
            open_bundle(b.path)


def test_manifest_keeps_the_format_version_1_shape(tmp_path):
    """Bundles written before the schema existed must still load: same keys, same nesting."""
    b = write_bundle(tmp_path / "b", _populate)
    m = json.loads((b.path / MANIFEST).read_text())
    assert list(m) == ["format", "format_version", "edgeq_version", "created", "runtime", "source", "recipe",
                       "backend", "requires", "decoding", "build", "size", "files"]
    assert set(m["size"]) == {"reference_fp32_weights_bytes", "bundle_bytes", "weights_bytes", "reduction_pct"}
    assert m["format"] == "edgeq-bundle" and m["format_version"] == 1


def test_every_runtime_names_its_required_files():
    from edgeq.format.manifest import REQUIRED_FILES
    from edgeq.spec.catalogue import RUNTIMES

    assert set(REQUIRED_FILES) == set(RUNTIMES)


# --------------------------------------------------------------------------- writing, and leftovers


def test_destination_that_cannot_be_written_fails_before_populate(tmp_path):
    (tmp_path / "file").write_text("x")
    called = []

    def populate(folder):
        called.append(folder)
        return _populate(folder)

    with pytest.raises(BundleError, match=r"file/b: cannot be created, .*file is a file"):
        write_bundle(tmp_path / "file" / "b", populate)
    assert not called


def test_write_errors_are_one_line_and_leave_nothing(tmp_path):
    import errno

    def full(folder):
        _populate(folder)
        raise OSError(errno.ENOSPC, "No space left on device", str(folder / WEIGHTS))

    with pytest.raises(BundleError, match=r"b: cannot write the bundle \(No space left on device: .*model.safetensors\)"):
        write_bundle(tmp_path / "b", full)
    assert list(tmp_path.iterdir()) == []


_KILLED_BUILD = """
import os, sys, time
from pathlib import Path
from edgeq.format.bundle import write_bundle

def populate(folder):
    (folder / "model.safetensors").write_bytes(b"w")
    (folder.parent / (folder.name + ".onnx-scratch")).mkdir()  # a writer's scratch folder
    print("writing", flush=True)
    time.sleep(60)

write_bundle(Path(sys.argv[1]), populate)
"""


def _start_build(out):
    import subprocess
    import sys

    proc = subprocess.Popen([sys.executable, "-c", _KILLED_BUILD, str(out)], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "writing"
    return proc


def test_a_killed_build_is_swept_by_the_next_one_and_a_live_one_is_not(tmp_path):
    import signal

    killed = _start_build(tmp_path / "a")
    killed.send_signal(signal.SIGKILL)
    killed.wait()
    hidden = sorted(p.name for p in tmp_path.iterdir())
    assert len(hidden) == 3 and all(n.startswith(".a.edgeq-staging-") for n in hidden), hidden
    live = _start_build(tmp_path / "c")  # the next build, next to it, sweeps the dead one's
    try:
        left = sorted(p.name for p in tmp_path.iterdir())
        assert not any(n.startswith(".a.") for n in left), left  # staging, scratch and lock
        write_bundle(tmp_path / "b", _populate)  # and a build next to a live one leaves it alone
        left = sorted(p.name for p in tmp_path.iterdir())
        assert sum(n.startswith(".c.edgeq-staging-") for n in left) == 3 and "b" in left, left
    finally:
        live.kill()
        live.wait()


def test_a_bundle_moved_aside_by_a_killed_build_is_put_back(tmp_path):
    first = write_bundle(tmp_path / "b", _populate)
    # What a build killed between swap_in's two renames leaves: its lock (nobody holds it), the
    # new bundle still in staging, and the old one moved aside.
    stem = ".b.edgeq-staging-deadbeef"
    (tmp_path / f"{stem}.lock").write_text("12345\n")
    (tmp_path / stem).mkdir()
    first.path.rename(tmp_path / f"{stem}.old")
    write_bundle(tmp_path / "c", _populate)  # any build next to it sweeps
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b", "c"]
    assert open_bundle(tmp_path / "b").manifest == first.manifest


def test_an_engine_refuses_a_bundle_of_the_other_runtime(tmp_path):
    from helpers import manifest_fields

    from edgeq.format.bundle import WEIGHTS, write_bundle

    def populate(folder):
        (folder / WEIGHTS).write_bytes(b"w" * 10)
        for name in ("config.json", "generation_config.json", "tokenizer.json", "quantization.json"):
            (folder / name).write_text("{}")
        return manifest_fields("demo")  # backend float: the torch runtime

    bundle = write_bundle(tmp_path / "b", populate)
    bundle.require_runtime("torch", "PyTorch")
    with pytest.raises(BundleError, match=r"bundle demo runs on torch, not ONNX Runtime"):
        bundle.require_runtime("onnxruntime", "ONNX Runtime")
