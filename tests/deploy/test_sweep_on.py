"""`edgeq sweep --on device`: bundles built here, benched on the device over a real OpenSSH server on
127.0.0.1 (see conftest.py), the two overlapped. The table and per-utterance records equal a local
sweep's; each bench ran on the device, from the bundle pushed into the mirror of the cache there;
device cells are cached apart from local ones; a connection cut mid-sweep leaves the rest "not
benched" and the same command finishes the job; bad input is one line before any build."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
from helpers import assert_one_line_error, edgeq, tone_dataset

RECIPES = "pytorch-int8-dynamic,quanto-int8-dynamic"
N_UTTS = 3
TIMING = ("p50_s", "rtf", "peak_rss_mb")  # measured, so they differ between any two runs
# Per-utterance fields that are measurements, or where they were taken (the device reads its copy of the audio).
MEASURED = {"audio", "audio_load_s", "latency_s", "features_s", "encoder_s", "decode_s", "per_token_s", "tokens_per_s",
            "rtf", "peak_rss_mb"}


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    return tone_dataset(tmp_path_factory.mktemp("sweep-on-ds"), N_UTTS)


def _settings(tiny_model, dataset, out, on=None):
    from edgeq.sweep import SweepSettings

    return SweepSettings(recipes=RECIPES, model=str(tiny_model), datasets=(f"clean={dataset}",), out=out,
                         threads=1, language="en", on=on)


def _args(tiny_model, dataset, out, *extra):
    return ("sweep", "--recipes", RECIPES, "-m", tiny_model, "-d", f"clean={dataset}", "--threads", "1",
            "--language", "en", "-o", out, *extra)


def _table(out: Path) -> list[dict]:
    from edgeq.sweep.table import load_results, rows

    return [{k: v for k, v in r.items() if k not in TIMING} for r in rows(load_results(out))]


def _records(out: Path, recipe: str) -> list[dict]:
    (results,) = out.rglob(f"{recipe}-*/bench/*/{recipe}.jsonl")
    return [json.loads(line) for line in results.read_text().splitlines()]


def _utterances(out: Path, recipe: str) -> list[dict]:
    return [{k: v for k, v in r.items() if k not in MEASURED} for r in _records(out, recipe) if r["type"] == "utterance"]


@pytest.fixture(scope="module")
def local(tiny_model, dataset, tmp_path_factory):
    from edgeq.sweep import run_sweep

    out = tmp_path_factory.mktemp("sweep-local") / "out"
    run_sweep(_settings(tiny_model, dataset, out))
    return out


@pytest.fixture(scope="module")
def on_device(device, tiny_model, dataset, tmp_path_factory):
    """The same sweep with --on, in this process, so that a progress callback can hold the last build."""
    import os

    from edgeq.sweep import run_sweep
    from edgeq.sweep.executors import make_executor

    out = tmp_path_factory.mktemp("sweep-on") / "out"
    on = f"device:{device.far / 'sweep'}"
    builds, overlapped = [], []

    def progress(stage: str, done: int, total: int) -> None:
        if stage == "resolving model" and not done:
            builds.append(stage)
            if len(builds) == 3:
                # The last build waits here until the device holds the first bundle (being pushed or
                # pushed): it does only if benches run while this machine builds, not after.
                deadline = time.monotonic() + 120
                while not list((device.far / "sweep").rglob("*fp32*")) and time.monotonic() < deadline:
                    time.sleep(0.05)
                overlapped.append(time.monotonic() < deadline)

    home = os.environ.get("HOME")
    os.environ["HOME"] = str(device.home)  # the ~/.ssh/config that names `device`
    try:
        result = run_sweep(_settings(tiny_model, dataset, out, on), progress,
                           make_executor(on=on, remote_edgeq=str(device.edgeq)))
    finally:
        os.environ["HOME"] = home
    events = (builds, overlapped)
    return result, out, events


def test_a_sweep_on_the_device_gives_the_local_table(on_device, local):
    result, out, _ = on_device
    assert not [c.failed for c in result.cells if c.failed]
    assert result.built == ["fp32", "pytorch-int8-dynamic", "quanto-int8-dynamic"]
    assert _table(out) == _table(local)
    for recipe in ("fp32", "pytorch-int8-dynamic", "quanto-int8-dynamic"):
        utts = _utterances(out, recipe)
        assert [u["id"] for u in utts] == [f"u{i}" for i in range(N_UTTS)]
        assert utts == _utterances(local, recipe)  # texts, tokens, word errors: the same records
    assert any(n.startswith("benched on device (edgeq ") for n in result.notes)


def test_each_bench_ran_on_the_device_from_the_bundle_pushed_into_the_cache_mirror(on_device, device):
    result, out, _ = on_device
    for recipe in ("fp32", "pytorch-int8-dynamic"):
        (run,) = [r for r in _records(out, recipe) if r["type"] == "run"]
        (cell,) = out.rglob(f"{recipe}-*/bundle")
        mirror = device.far / "sweep" / "edgeq-sweep" / cell.parent.relative_to(out)
        assert run["system"] == recipe  # the name a local sweep gives it
        assert run["system_info"]["path"] == str(mirror / recipe)
        assert json.loads((mirror / recipe / "manifest.json").read_text()) == json.loads(
            (cell / "manifest.json").read_text())
        (bench,) = (cell.parent / "bench").iterdir()
        assert sorted(p.name for p in (mirror / "bench" / bench.name).iterdir()) == sorted(
            p.name for p in bench.iterdir())
    # Another machine's cell: the condition's cache key carries the device, a local cell's does not.
    assert [c["on"] for c in result.conditions] == ["device"]


def test_the_device_benched_while_this_machine_built(on_device):
    _, _, (builds, overlapped) = on_device
    assert len(builds) == 3
    assert overlapped == [True], "the first bundle went to the device only after every build"


def test_the_device_cells_are_cached_apart_from_local_ones(on_device, local, device, tiny_model, dataset, tmp_path):
    import shutil

    _, out, _ = on_device
    again = edgeq(*_args(tiny_model, dataset, out, "--on", f"device:{device.far / 'sweep'}", "--remote-edgeq",
                         device.edgeq), env=device.env())
    assert again.returncode == 0, again.stderr[-2000:]
    assert "built 0 bundles, benched 0 cells, 3 from the cache" in again.stderr
    # A local sweep over a copy of that folder reuses the bundles, never the device's numbers.
    copy = tmp_path / "copy"
    shutil.copytree(out, copy)
    here = edgeq(*_args(tiny_model, dataset, copy))
    assert here.returncode == 0, here.stderr[-2000:]
    assert "built 0 bundles, benched 3 cells, 0 from the cache" in here.stderr


def test_a_cut_connection_leaves_the_rest_unbenched_and_a_rerun_finishes(device, tiny_model, dataset, local,
                                                                         tmp_path, monkeypatch):
    from edgeq.sweep import run_sweep
    from edgeq.sweep.executors import make_executor

    monkeypatch.setenv("HOME", str(device.home))
    out, on = tmp_path / "out", f"device:{device.far / 'cut'}"
    cut = []

    def progress(stage, done, total):
        if "pytorch-int8-dynamic on clean: push" in stage and done and not cut:
            cut.append(device.cut_connections())  # mid-push of the second bundle: a network drop

    first = run_sweep(_settings(tiny_model, dataset, out, on), progress, make_executor(on=on,
                                                                                       remote_edgeq=str(device.edgeq)))
    assert cut and cut[0] > 0
    failed = {c.recipe: c.failed for c in first.cells}
    assert failed["fp32"] is None
    assert "was cut" in failed["pytorch-int8-dynamic"]
    assert failed["quanto-int8-dynamic"].startswith("not benched: connection to device was cut")
    assert any("the device was lost" in n for n in first.notes)
    second = run_sweep(_settings(tiny_model, dataset, out, on), None, make_executor(on=on,
                                                                                    remote_edgeq=str(device.edgeq)))
    assert second.built == [] and not [c for c in second.cells if c.failed]
    assert second.measured == ["pytorch-int8-dynamic on clean", "quanto-int8-dynamic on clean"]
    assert _table(out) == _table(local)


@pytest.mark.parametrize("address, extra, pattern", [
    ("nowhere", (), r"cannot reach nowhere: .*check the address"),
    ("device", ("--executor", "ray"), r"--on benches on one device over SSH; --executor ray .*choose one"),
    ("device", ("--noise", "10", "--noise-source", "NOISEFILE"), r"--noise-source .* the file is on this machine"),
    ("device", ("--remote-edgeq", "OLD"), r"device runs edgeq 0\.0\.1, this sweep edgeq .*install edgeq"),
])
def test_bad_input_is_one_line_before_any_build(device, tiny_model, dataset, tmp_path, address, extra, pattern):
    old = tmp_path / "old-edgeq"
    old.write_text("#!/bin/sh\necho 'edgeq, version 0.0.1'\n")
    old.chmod(0o755)
    noise = tmp_path / "fan.wav"
    noise.write_bytes((dataset.parent / "u0.wav").read_bytes())
    extra = tuple(str(old) if a == "OLD" else str(noise) if a == "NOISEFILE" else a for a in extra)
    if "--remote-edgeq" not in extra:
        extra += ("--remote-edgeq", str(device.edgeq))
    proc = edgeq(*_args(tiny_model, dataset, tmp_path / "out", "--on", address, *extra), env=device.env())
    assert_one_line_error(proc, pattern)
    assert not list((tmp_path / "out").rglob("bundle"))  # nothing was built
