"""`edgeq sweep` on the tiny model: every cell built and benched once, the table/CSV/Markdown/plots/
report agree with the bench summaries, a cached re-run builds and benches nothing, a SIGKILLed sweep
resumes without losing or double-counting an utterance, another edgeq version's cache is kept apart,
`recommend` answers for every shipped target, and bad input fails in one line before any work."""

from __future__ import annotations

import csv
import io
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from helpers import assert_one_line_error, edgeq, tone_dataset

from edgeq import __version__

RECIPE = "pytorch-int8-dynamic"
N_UTTS = 8


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    return tone_dataset(tmp_path_factory.mktemp("sweep-ds"), N_UTTS)


def _args(tiny_model, dataset, out, *extra):
    return ("sweep", "--recipes", RECIPE, "-m", tiny_model, "-d", f"clean={dataset}", "--limit", "3",
            "--noise", "10", "--threads", "1", "--language", "en", "-o", out, *extra)


@pytest.fixture(scope="module")
def swept(tiny_model, dataset, tmp_path_factory):
    from edgeq.sweep import SweepSettings, run_sweep

    out = tmp_path_factory.mktemp("sweep") / "out"
    settings = SweepSettings(recipes=RECIPE, model=str(tiny_model), datasets=(f"clean={dataset}",), out=out,
                             limit=3, threads=1, language="en", snrs=(None, 10.0))
    return run_sweep(settings), out


def _bench_files(out: Path) -> dict[Path, float]:
    return {p: p.stat().st_mtime_ns for p in out.rglob("bench/*/*") if p.is_file()}


# --------------------------------------------------------------------------- the grid


def test_every_cell_is_built_once_and_benched(swept):
    result, out = swept
    assert result.built == ["fp32", RECIPE]  # the baseline is always added, and first
    assert result.measured == [f"{r} on {c}" for r in ("fp32", RECIPE) for c in ("clean", "clean@10dB")]
    assert all(c.summary and not c.failed and not c.cached for c in result.cells)
    noisy = {c.recipe: c.summary for c in result.cells if c.condition == "clean@10dB"}
    assert noisy[RECIPE]["settings"]["noise"] == {"snr_db": 10.0, "source": "white"}
    assert all(c.summary["settings"]["limit"] == 3 and c.summary["utterances"] == 3 for c in result.cells)
    # The cache key is the path: version / model hash / recipe hash / condition hash.
    (folder,) = (out / f"edgeq-{__version__}").iterdir()
    assert folder.name.endswith(result.model_hash[:12])
    assert sorted(p.name.rsplit("-", 1)[0] for p in folder.iterdir()) == ["fp32", RECIPE]


def test_table_csv_and_markdown_agree_with_the_summaries(swept):
    from edgeq.sweep.table import load_results, rows

    result, out = swept
    data = load_results(out)
    table = rows(data)
    assert [r["name"] for r in table] == ["fp32", RECIPE]
    cells = {(c.recipe, c.condition): c.summary for c in result.cells}
    for r in table:
        manifest = json.loads(next(out.rglob(f"{r['name']}-*/bundle/manifest.json")).read_text())
        assert r["bundle_mb"] == manifest["size"]["bundle_bytes"] / 1e6
        assert r["reduction_pct"] == manifest["size"]["reduction_pct"]
        for cond in ("clean", "clean@10dB"):
            assert r["wer"][cond] == cells[(r["name"], cond)]["wer"]["wer_pct"]
            assert r["dwer"][cond] == pytest.approx(r["wer"][cond] - cells[("fp32", cond)]["wer"]["wer_pct"])
        assert r["p50_s"] == cells[(r["name"], "clean")]["latency"]["latency_s"]["p50"] > 0
        assert r["rtf"] == cells[(r["name"], "clean")]["rtf"]
        assert r["peak_rss_mb"] > 0
    assert table[0]["dwer"] == {"clean": 0.0, "clean@10dB": 0.0}
    assert table[1]["library"] == "torch" and table[1]["scheme"] == "dynamic" and table[1]["bits"] == 8

    parsed = list(csv.DictReader(io.StringIO((out / "results.csv").read_text())))
    assert [p["name"] for p in parsed] == ["fp32", RECIPE]
    for p, r in zip(parsed, table):
        assert float(p["bundle_mb"]) == r["bundle_mb"] and float(p["wer_clean@10dB"]) == r["wer"]["clean@10dB"]
        assert float(p["peak_rss_mb"]) == r["peak_rss_mb"]
    md = (out / "results.md").read_text().splitlines()
    assert len(md) == 4 and "WER % clean@10dB" in md[0] and md[3].startswith(f"| {RECIPE} | torch | dynamic |")


def test_plots_and_report(swept):
    _, out = swept
    for stem in ("wer_vs_size_clean", "wer_vs_size_clean_10dB", "latency_vs_size"):
        for ext in ("png", "svg"):
            assert (out / "plots" / f"{stem}.{ext}").stat().st_size > 1000
    svg = (out / "plots" / "wer_vs_size_clean.svg").read_text()
    assert "Pareto front" in svg and RECIPE in svg
    report = (out / "report.md").read_text()
    sections = [line for line in report.splitlines() if line.startswith("## ")]
    assert sections == ["## Setup", "## Results", "## Plots", "## Pareto set (bundle size against WER)"]
    for link in [line.split("(")[1].rstrip(")") for line in report.splitlines() if line.startswith("![")]:
        assert (out / link).is_file()
    assert "white noise at 10 dB SNR" in report
    assert (out / "results.md").read_text() in report


def test_cached_rerun_builds_and_benches_nothing(swept, tiny_model, dataset):
    result, out = swept
    before = _bench_files(out)
    started = time.perf_counter()
    proc = edgeq(*_args(tiny_model, dataset, out))
    took = time.perf_counter() - started
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "built 0 bundles, benched 0 cells, 4 from the cache" in proc.stderr
    assert _bench_files(out) == before  # not one results file touched
    assert RECIPE in proc.stdout and "ΔWER clean@10dB" in proc.stdout
    assert took < 30, took  # 3.3 s measured when the machine is idle: no model load, no worker
    data = json.loads((out / "results.json").read_text())
    assert [c["summary"] for c in data["cells"]] == [c.summary for c in result.cells]


def test_another_versions_cache_is_kept_apart(swept, tiny_model, dataset, tmp_path):
    _, src = swept
    out = tmp_path / "out"
    shutil.copytree(src, out)
    old = out / "edgeq-0.0.1"
    shutil.copytree(out / f"edgeq-{__version__}", old)
    for summary in old.rglob("summary.json"):  # if these were read, every WER would change
        data = json.loads(summary.read_text())
        data[0]["wer"]["wer_pct"] = 12.5
        summary.write_text(json.dumps(data))
    proc = edgeq(*_args(tiny_model, dataset, out))
    assert proc.returncode == 0, proc.stderr[-2000:]
    notes = [line for line in proc.stderr.splitlines() if "edgeq-0.0.1" in line]
    assert len(notes) == 1 and "kept apart" in notes[0]
    assert "12.5" not in (out / "results.csv").read_text()
    assert (out / "results.csv").read_text() == (src / "results.csv").read_text()


def test_killed_sweep_resumes_without_losing_or_repeating_an_utterance(tiny_model, dataset, tmp_path):
    out = tmp_path / "out"
    args = ["sweep", "--recipes", "fp32", "-m", str(tiny_model), "-d", str(dataset), "--threads", "1",
            "--language", "en", "-o", str(out)]
    # Its own session: the kill takes the bench worker down with it, like a power cut.
    proc = subprocess.Popen([sys.executable, "-m", "edgeq.cli", *args], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.monotonic() + 300
    results = None
    while time.monotonic() < deadline and proc.poll() is None:
        found = list(out.rglob("bench/*/fp32.jsonl"))
        if found and '"type": "utterance"' in found[0].read_text():
            results = found[0]
            break
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert results is not None, "the sweep never wrote an utterance"
    assert not (results.parent / "summary.json").exists()  # killed mid-bench
    measured = [json.loads(line) for line in results.read_text().splitlines() if '"utterance"' in line]
    assert 0 < len(measured) < N_UTTS

    again = edgeq(*args)
    assert again.returncode == 0, again.stderr[-2000:]
    assert "built 0 bundles, benched 1 cells, 0 from the cache" in again.stderr
    records = [json.loads(line) for line in results.read_text().splitlines()]
    utts = [r for r in records if r["type"] == "utterance"]
    assert len([r for r in records if r["type"] == "run"]) == 2
    assert sorted(u["id"] for u in utts) == [f"u{i}" for i in range(N_UTTS)]  # none lost, none twice
    assert utts[: len(measured)] == measured  # what was measured before the kill was kept
    (summary,) = json.loads((results.parent / "summary.json").read_text())
    assert summary["utterances"] == N_UTTS and summary["complete"]


# --------------------------------------------------------------------------- recommend


def _targets() -> list[str]:
    from edgeq.spec.targets import list_targets

    return [t.name for t in list_targets()]


@pytest.mark.parametrize("target", _targets())
def test_recommend_answers_for_every_shipped_target(swept, target):
    _, out = swept
    proc = edgeq("recommend", "--results", out, "--target", target)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    # Both recipes transcribe the tiny model equally (ΔWER 0): the smaller bundle wins.
    assert lines[0].startswith(f"{target}: {RECIPE} (torch, dynamic, 8 bits)")
    assert lines[1].startswith("why: ") and lines[2].startswith("runner-up: fp32 (")


def test_recommend_fails_in_one_line(swept):
    _, out = swept
    assert_one_line_error(edgeq("recommend", "--results", out, "--target", "rpi4", "--max-size", "0.5"),
                          r"no recipe in these results fits rpi4 .*smallest, pytorch-int8-dynamic, .* > --max-size 0.5")
    assert_one_line_error(edgeq("recommend", "--results", out.parent / "nothing", "--target", "rpi4"),
                          r"no sweep results here")
    assert_one_line_error(edgeq("recommend", "--results", out, "--target", "rpi9"), r"unknown target 'rpi9'")


# --------------------------------------------------------------------------- bad input


@pytest.mark.parametrize("args, pattern", [
    (("--recipes", "zzz-*"), r"--recipes 'zzz-\*' matches no recipe"),
    (("--recipes", "onnx-int9"), r"unknown recipe 'onnx-int9'"),
    (("--recipes", "pytorch-int8-static"), r"pytorch-int8-static calibrate on real audio: pass --calibration"),
    (("-d", "/no/such/dataset"), r"dataset not found: /no/such/dataset"),
    (("--noise", "5", "--noise-source", "/no/noise.wav"), r"--noise-source /no/noise.wav"),
])
def test_bad_input_fails_in_one_line_before_any_work(tiny_model, dataset, tmp_path, args, pattern):
    base = {"--recipes": "fp32", "-d": str(dataset)}
    extra = list(args)
    for flag in ("--recipes", "-d"):
        if flag not in extra:
            extra += [flag, base[flag]]
    proc = edgeq("sweep", "-m", tiny_model, "-o", tmp_path / "out", *extra)
    assert_one_line_error(proc, pattern)
    assert not (tmp_path / "out").exists()  # nothing built, nothing written
