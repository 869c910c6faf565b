"""The command line against hostile or unlucky input: whatever a user types or hands over, one
line on stderr that shows their text literally, a non-zero exit, never a traceback."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from helpers import assert_one_line_error, edgeq


@pytest.fixture(scope="module")
def labelled(tiny_model, tmp_path_factory):
    """A bundle whose folder holds rich-markup look-alikes and whose recipe name carries --set labels."""
    out = tmp_path_factory.mktemp("cli") / "b[/x] [bold red]red"
    proc = edgeq("build", "-r", "fp32", "-m", tiny_model, "-o", out, "--set", "calibration.samples=2")
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out


def test_paths_and_names_are_printed_literally(labelled):
    proc = edgeq("info", labelled)
    assert proc.returncode == 0, proc.stderr
    assert f"bundle {labelled}" in proc.stdout  # 'bundle', not 'built'; the path as it is
    assert "fp32[calibration.samples=2]" in proc.stdout  # the --set label did not vanish
    assert "needs pip install 'edgeq[torch]'" in proc.stdout
    assert_one_line_error(edgeq("info", labelled.parent / "nope[/x]"), r"nope\[/x\]: no such bundle folder$")


def test_info_says_what_was_verified_and_reports_unlisted_files(labelled, tmp_path):
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(labelled, copy)
    (copy / "stray[b].bin").write_bytes(b"x")
    proc = edgeq("info", copy)
    assert proc.returncode == 0, proc.stderr
    assert "including the 5 the runtime needs, match their sha256" in proc.stdout
    assert "1 file(s) not in the manifest, never loaded: stray[b].bin" in proc.stdout
    # The files table emptied and a weight byte flipped: refused, never "match".
    m = json.loads((copy / "manifest.json").read_text())
    m["files"], m["size"]["bundle_bytes"] = {}, 0
    (copy / "manifest.json").write_text(json.dumps(m))
    data = bytearray((copy / "model.safetensors").read_bytes())
    data[-1] ^= 0xFF
    (copy / "model.safetensors").write_bytes(bytes(data))
    assert_one_line_error(edgeq("info", copy), r"manifest.json: does not list config.json, .*a torch bundle needs")
    assert_one_line_error(edgeq("transcribe", copy, copy / "x.wav"), r"does not list config.json")


def test_install_hints_keep_their_extra(tiny_model, tmp_path):
    code = """
import importlib.abc, sys
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name.split(".")[0] == "hqq":
            raise ImportError(name)
sys.meta_path.insert(0, Block())
from edgeq.cli import main
main()
"""
    proc = subprocess.run([sys.executable, "-c", code, "build", "-r", "hqq-int4-g64", "-m", str(tiny_model),
                           "-o", str(tmp_path / "b")], capture_output=True, text=True, timeout=300)
    assert_one_line_error(proc, r"pip install 'edgeq\[hqq\]'$")


@pytest.mark.parametrize("bad", ["-1", "0"])
def test_threads_below_one_are_refused_before_loading(labelled, bad):
    proc = edgeq("transcribe", "--threads", bad, labelled, labelled / "x.wav")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "--threads" in proc.stderr and "x>=1" in proc.stderr


def test_verbose_shows_the_traceback_for_bug_reports(tmp_path):
    proc = edgeq("-v", "info", tmp_path / "nope")
    assert proc.returncode == 1
    assert "Traceback" in proc.stderr and "no such bundle folder" in proc.stderr.splitlines()[-1]


def test_output_under_a_file_fails_before_the_model_loads(tiny_model, tmp_path):
    (tmp_path / "file").write_text("x")
    proc = edgeq("build", "-r", "fp32", "-m", tmp_path / "no-model-here", "-o", tmp_path / "file" / "b")
    # The destination is checked before the model is even looked for.
    assert_one_line_error(proc, r"file/b: cannot be created, .*file is a file; choose another --out")


def test_recipe_name_cannot_escape_bundles(tiny_model, tmp_path):
    recipe = tmp_path / "r.toml"
    recipe.write_text('name = "../../../escaped"\nbackend = "float"\nscheme = "none"\n[weights]\nformat = "float32"\n')
    proc = edgeq("build", "-r", recipe, "-m", tiny_model, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    # One folder right inside bundles/ ('..' inside a name is just two dots), nothing outside it.
    assert [p.name for p in (tmp_path / "bundles").iterdir()] == [f"{tiny_model.name}-.._.._.._escaped"]
    assert not any("escaped" in p.name for p in tmp_path.parent.iterdir())


def test_target_checks_engine_and_memory(tiny_model, tmp_path):
    x86 = tmp_path / "x86.toml"
    x86.write_text('name = "x86"\ndescription = "d"\narch = "x86_64"\nthreads = 2\nmemory_mb = 4096\n'
                   'torch_engine = "x86"\n')
    arm = tmp_path / "tiny-arm.toml"
    arm.write_text('name = "tiny-arm"\ndescription = "d"\narch = "arm64"\nthreads = 2\nmemory_mb = 100\n'
                   'torch_engine = "qnnpack"\n')
    proc = edgeq("build", "-r", "pytorch-int8-dynamic", "--set", "options.engine=x86", "-m", tiny_model,
                 "-o", tmp_path / "a", "--target", arm)
    assert_one_line_error(proc, r"PyTorch's x86 engine, which runs on x86_64 only; target tiny-arm is arm64")
    proc = edgeq("build", "-r", "fp32", "-m", tiny_model, "-o", tmp_path / "b", "--target", arm)
    assert_one_line_error(proc, r"estimated peak RSS \(whisper-base fit\) 6\d\d MB of tiny-arm's 100 MB: it does not fit")
    assert not (tmp_path / "b").exists()
    proc = edgeq("build", "-r", "fp32", "-m", tiny_model, "-o", tmp_path / "c", "--target", x86)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "estimated peak RSS (whisper-base fit) 62" in proc.stdout and "of x86's 4,096 MB" in proc.stdout
