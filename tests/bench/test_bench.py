"""`edgeq bench` as a user runs it: timings, memory, the JSON-lines schema, resume after a crash,
--compare, bad inputs, and one process per system. Tiny random model, generated audio."""

from __future__ import annotations

import importlib.metadata
import json
import os
import platform
import shutil
from pathlib import Path

import numpy as np
import pytest
from helpers import assert_one_line_error, edgeq, tone

GOOD = {f"u{i}": f"hello world number {i}" for i in range(4)}
LATENCY_FIELDS = ("latency_s", "encoder_s", "per_token_s", "rtf", "tokens_per_s")
WER_COUNTS = ("substitutions", "deletions", "insertions")
TIMINGS = ("audio_load_s", "features_s", "encoder_s", "decode_s", "latency_s", "per_token_s")


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def bundles(tiny_model, tmp_path_factory) -> dict[str, Path]:
    import edgeq as lib

    root = tmp_path_factory.mktemp("bench-bundles")
    out = {}
    for name, recipe in (("tiny-fp32", "fp32"), ("tiny-int8", "pytorch-int8-dynamic")):
        out[name] = lib.build(recipe, model=str(tiny_model), out=root / name, language="en").path
    return out


def _write_good(folder: Path) -> list[str]:
    import soundfile as sf

    rows = []
    for i, (uid, text) in enumerate(GOOD.items()):
        sf.write(folder / f"{uid}.wav", tone(1.0 + 0.5 * i, freq=200 + 100 * i), 16000)
        rows.append(f"{uid}.wav\t{text}\n")
    return rows


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("bench-ds")
    (d / "manifest.tsv").write_text("file\ttranscript\n" + "".join(_write_good(d)))
    return d / "manifest.tsv"


@pytest.fixture(scope="module")
def bad_dataset(tmp_path_factory) -> Path:
    """Good rows plus a missing file, garbage bytes in a .wav, silence, and an empty reference."""
    import soundfile as sf

    d = tmp_path_factory.mktemp("bench-bad-ds")
    rows = _write_good(d)
    (d / "corrupt.wav").write_bytes(b"RIFF\x24\x00\x00\x00WAVEnot really audio" + os.urandom(512))
    sf.write(d / "silent.wav", np.zeros(16000, dtype=np.float32), 16000)
    shutil.copy(d / "u0.wav", d / "noref.wav")
    rows += ["missing.wav\tthis file was never written\n", "corrupt.wav\tgarbage bytes\n",
             "silent.wav\tnothing was said\n", "noref.wav\t\n"]
    (d / "manifest.tsv").write_text("file\ttranscript\n" + "".join(rows))
    return d / "manifest.tsv"


def _records(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def _summary(out: Path) -> list[dict]:
    return json.loads((out / "summary.json").read_text())


def _ok(proc) -> None:
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr + proc.stdout


@pytest.fixture(scope="module")
def fp32_run(bundles, dataset, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("bench-fp32") / "out"
    _ok(edgeq("bench", bundles["tiny-fp32"], "-d", dataset, "--threads", "1", "-o", out))
    return out


@pytest.fixture(scope="module")
def bad_run(bundles, bad_dataset, tmp_path_factory):
    out = tmp_path_factory.mktemp("bench-bad") / "out"
    proc = edgeq("bench", bundles["tiny-int8"], "-d", bad_dataset, "--threads", "1", "--warmup", "0", "-o", out)
    return proc, out


# --------------------------------------------------------------------------- 1. timings and memory


def test_timings_are_present_and_positive(fp32_run):
    (summary,) = _summary(fp32_run)
    assert "failed" not in summary and summary["complete"] and summary["errors"] == 0
    assert summary["utterances"] == len(GOOD)

    records = _records(fp32_run / "tiny-fp32.jsonl")
    (run,) = [r for r in records if r["type"] == "run"]
    assert run["load"]["seconds"] > 0
    utts = [r for r in records if r["type"] == "utterance"]
    assert len(utts) == len(GOOD)
    for u in utts:
        for field in ("latency_s", "encoder_s", "decode_s", "per_token_s", "tokens_per_s", "rtf", "audio_s"):
            assert u[field] > 0, (u["id"], field, u[field])
        assert u["tokens"] > 0 and u["decoder_steps"] > 0
        assert u["encoder_s"] + u["decode_s"] <= u["latency_s"] * 1.01
        assert u["rtf"] == pytest.approx(u["latency_s"] / u["audio_s"])
        assert u["tokens_per_s"] == pytest.approx(u["tokens"] / u["decode_s"])

    assert summary["load"]["seconds"] == run["load"]["seconds"]
    for field in LATENCY_FIELDS:
        stats = summary["latency"][field]
        values = sorted(u[field] for u in utts)
        for key in ("mean", "p50", "p90"):
            assert stats[key] is not None and stats[key] > 0, (field, key)
        assert values[0] <= stats["p50"] <= stats["p90"] <= values[-1]
        assert stats["mean"] == pytest.approx(sum(values) / len(values))
    assert summary["rtf"] > 0 and summary["tokens_per_s"] > 0
    assert summary["rtf"] == pytest.approx(sum(u["latency_s"] for u in utts) / sum(u["audio_s"] for u in utts))


def test_thread_count_is_recorded(fp32_run):
    (summary,) = _summary(fp32_run)
    assert summary["settings"]["threads"] == 1
    assert summary["settings"]["threads_used"] == 1  # what the runtime really ran with
    assert "1 threads" in edgeq("bench", "--compare", fp32_run / "summary.json").stdout


def test_peak_memory_after_load_and_during_inference(fp32_run):
    (summary,) = _summary(fp32_run)
    mem = summary["memory"]
    for key in ("rss_before_load_mb", "rss_after_load_mb", "peak_rss_load_mb", "peak_rss_inference_mb",
                "peak_rss_sampled_mb", "peak_rss_os_mb"):
        assert mem[key] is not None and mem[key] > 0, key
    # Loading a model grows the process; peaks are at least what was seen after load.
    assert mem["rss_after_load_mb"] > mem["rss_before_load_mb"]
    assert mem["peak_rss_load_mb"] >= mem["rss_after_load_mb"]
    assert mem["peak_rss_sampled_mb"] >= max(mem["peak_rss_load_mb"], mem["peak_rss_inference_mb"])
    assert mem["peak_rss_os_mb"] >= mem["rss_after_load_mb"]
    records = _records(fp32_run / "tiny-fp32.jsonl")
    assert all(r["peak_rss_mb"] > 0 for r in records if r["type"] == "utterance")
    (end,) = [r for r in records if r["type"] == "end"]
    assert end["peak_rss_os_mb"] == mem["peak_rss_os_mb"]


# --------------------------------------------------------------------------- 2. schema


def test_utterance_lines_hold_text_wer_counts_and_timings(fp32_run):
    utts = [r for r in _records(fp32_run / "tiny-fp32.jsonl") if r["type"] == "utterance"]
    assert {u["id"] for u in utts} == set(GOOD)
    for u in utts:
        assert u["reference"] == GOOD[u["id"]]
        assert isinstance(u["hypothesis"], str)
        for key in WER_COUNTS + ("hits", "ref_words"):
            assert isinstance(u[key], int) and u[key] >= 0, key
        assert u["ref_words"] == len(GOOD[u["id"]].split()) == u["hits"] + u["substitutions"] + u["deletions"]
        for key in TIMINGS:
            assert isinstance(u[key], float) and u[key] >= 0, key


def test_run_record_carries_the_environment_and_the_bundle(fp32_run, bundles):
    import edgeq as lib
    from edgeq.format.bundle import open_bundle

    (run,) = [r for r in _records(fp32_run / "tiny-fp32.jsonl") if r["type"] == "run"]
    env = run["env"]
    assert env["cpu"]["model"] and isinstance(env["cpu"]["model"], str)
    assert env["cpu"]["flags"] or env["gpu"], "neither CPU flags nor a GPU recorded"
    assert set(env["cpu"]["key_flags"]) <= set(env["cpu"]["flags"])
    assert env["cpu"]["logical_cores"] == os.cpu_count()
    assert run["settings"]["threads"] == 1
    assert env["os"] == f"{platform.system()} {platform.release()}"
    assert env["arch"] == platform.machine()
    assert env["python"] == platform.python_version()
    for lib_name in ("numpy", "torch", "transformers"):
        assert env["libraries"][lib_name] == importlib.metadata.version(lib_name)
    assert env["edgeq"]["version"] == lib.__version__
    bundle = open_bundle(bundles["tiny-fp32"], verify_hashes=False)
    assert run["system_info"]["manifest_sha256"] == bundle.manifest_sha256
    assert run["system_info"]["recipe"] == "fp32" == bundle.manifest.recipe.name
    assert isinstance(run["pid"], int)
    (summary,) = _summary(fp32_run)
    assert summary["env"] == env and summary["system_info"] == run["system_info"]


# --------------------------------------------------------------------------- 3. resume and overwrite


def test_resume_after_a_crash_keeps_finished_utterances(bundles, dataset, tmp_path):
    out = tmp_path / "out"
    results = out / "tiny-fp32.jsonl"
    args = ("bench", bundles["tiny-fp32"], "-d", dataset, "--threads", "1", "--warmup", "0", "--limit", "3")
    _ok(edgeq(*args, "-o", out))
    lines = results.read_text().splitlines(keepends=True)
    assert [json.loads(line)["type"] for line in lines] == ["run", "utterance", "utterance", "utterance", "end"]

    # Killed while writing the third utterance: two finished, half a line, no end record.
    kept = "".join(lines[:3])
    cut = lines[3][: len(lines[3]) // 2]
    results.write_text(kept + cut)
    lost_id = json.loads(lines[3])["id"]

    _ok(edgeq(*args, "-o", out, "--resume"))
    after = results.read_text()
    assert after.startswith(kept), "finished results were rewritten"
    records = _records(results)  # every line parses: the cut line did not swallow the next record
    utts = [r for r in records if r["type"] == "utterance"]
    ids = [u["id"] for u in utts]
    assert len(ids) == len(set(ids)) == 3, ids
    assert ids[-1] == lost_id  # only the unfinished one was measured again
    runs = [r for r in records if r["type"] == "run"]
    assert len(runs) == 2 and runs[0]["pid"] != runs[1]["pid"]

    (summary,) = _summary(out)
    assert summary["utterances"] == 3 and summary["complete"] and summary["runs"] == 2
    assert summary["wer"]["scored_utterances"] == 3
    assert summary["wer"]["ref_words"] == sum(len(GOOD[i].split()) for i in ids)

    # Running into the same --out again without --resume/--force: refused, nothing touched.
    assert_one_line_error(edgeq(*args, "-o", out),
                          r"^edgeq: error: .*tiny-fp32\.jsonl exists: pass --resume .* or --force")
    assert results.read_text() == after
    assert _summary(out) == [summary]


def test_a_refused_resume_keeps_the_good_summary(bundles, dataset, tmp_path):
    out = tmp_path / "out"
    args = ("bench", bundles["tiny-fp32"], "-d", dataset, "--threads", "1", "--warmup", "0", "-o", out)
    _ok(edgeq(*args, "--limit", "2"))
    good = (out / "summary.json").read_text()
    # Another --limit: the worker refuses to resume into these results and measures nothing.
    proc = edgeq(*args, "--limit", "3", "--resume")
    assert proc.returncode == 1 and "cannot resume" in proc.stdout + proc.stderr
    assert (out / "summary.json").read_text() == good


def test_one_run_at_a_time_owns_the_results_folder(bundles, dataset, tmp_path):
    from edgeq.bench.runner import LOCK
    from edgeq.util import exclusive_lock

    out = tmp_path / "out"
    out.mkdir()
    with exclusive_lock(out / LOCK):  # a run in progress
        proc = edgeq("bench", bundles["tiny-fp32"], "-d", dataset, "--threads", "1", "-o", out)
    assert_one_line_error(proc, r"^edgeq: error: .*out: another edgeq bench is writing there")
    assert sorted(p.name for p in out.iterdir()) == [LOCK]  # it wrote nothing
    # The lock went with its holder: the next run goes ahead.
    _ok(edgeq("bench", bundles["tiny-fp32"], "-d", dataset, "--threads", "1", "--warmup", "0", "--limit", "1",
              "-o", out))


def test_two_runs_started_together_one_is_refused(bundles, dataset, tmp_path):
    import subprocess
    import sys

    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "edgeq.cli", "bench", str(bundles["tiny-fp32"]), "-d", str(dataset),
           "--threads", "1", "--warmup", "0", "--limit", "2", "-o", str(out)]
    procs = [subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    results = [(p.wait(timeout=600), p.stderr.read()) for p in procs]
    codes = sorted(code for code, _ in results)
    assert codes == [0, 1], results
    refused = next(err for code, err in results if code == 1)
    assert "another edgeq bench is writing there" in refused and "Traceback" not in refused
    records = _records(out / "tiny-fp32.jsonl")  # one run's lines, not two interleaved
    assert [r["type"] for r in records].count("run") == 1


# --------------------------------------------------------------------------- 4. compare


def test_compare_shows_saved_results_side_by_side(fp32_run, bad_run):
    _, bad_out = bad_run
    proc = edgeq("bench", "--compare", fp32_run / "summary.json", bad_out / "summary.json")
    _ok(proc)
    rows = [line for line in proc.stdout.splitlines() if "tiny-fp32" in line or "tiny-int8" in line]
    assert len(rows) == 2 and "tiny-fp32" in rows[0] and "tiny-int8" in rows[1], proc.stdout
    assert "pytorch-int8-dynamic" in rows[1]
    # The repeated-flag form, and a raw results file in place of a summary.
    proc = edgeq("bench", "--compare", fp32_run / "tiny-fp32.jsonl", "--compare", bad_out / "tiny-int8.summary.json")
    _ok(proc)
    assert "tiny-fp32" in proc.stdout and "tiny-int8" in proc.stdout


def test_a_load_that_made_the_prepared_copy_is_marked_in_the_table(fp32_run, tmp_path):
    from rich.console import Console

    from edgeq.bench.report import load_summaries, render_table

    (summary,) = _summary(fp32_run)
    assert summary["load"]["prepared_copy"] is None  # a PyTorch bundle: no prepared copy
    made = {**summary, "system": "first-load", "load": {**summary["load"], "prepared_copy": "made"}}
    reused = {**summary, "system": "later-load", "load": {**summary["load"], "prepared_copy": "reused"}}
    path = tmp_path / "summary.json"
    path.write_text(json.dumps([made, reused]))
    console = Console(record=True, width=300)
    console.print(render_table(load_summaries([path])))
    text = console.export_text()
    first, later = (next(line for line in text.splitlines() if name in line) for name in ("first-load", "later-load"))
    load = f"{summary['load']['seconds']:.2f}"
    assert f"{load}*" in first and f"{load}*" not in later and load in later
    assert "made the bundle's prepared copy for this device" in text
    console = Console(record=True, width=300)
    console.print(render_table(load_summaries([fp32_run / "summary.json"])))
    assert "prepared copy" not in console.export_text()


def test_compare_missing_or_foreign_file_is_a_one_line_error(fp32_run, tmp_path):
    assert_one_line_error(edgeq("bench", "--compare", fp32_run / "summary.json", tmp_path / "nope.json"),
                          r"^edgeq: error: .*nope\.json: no such results file$")
    (tmp_path / "other.json").write_text('{"hello": 1}')
    assert_one_line_error(edgeq("bench", "--compare", tmp_path / "other.json"),
                          r"^edgeq: error: .*other\.json: not an edgeq bench summary")
    # A summary cut short or edited: named, not a KeyError in the table.
    summary = json.loads((fp32_run / "summary.json").read_text())[0]
    del summary["latency"]["encoder_s"]
    (tmp_path / "partial.json").write_text(json.dumps(summary))
    assert_one_line_error(edgeq("bench", "--compare", tmp_path / "partial.json"),
                          r"partial\.json: not an edgeq bench summary \(lacks 'latency\.encoder_s'\)")
    (tmp_path / "latin1.json").write_bytes(b'{"system": "caf\xe9"}')
    assert_one_line_error(edgeq("bench", "--compare", tmp_path / "latin1.json"), r"latin1\.json: .*not UTF-8")


# --------------------------------------------------------------------------- 5. bad input


def test_bad_rows_are_recorded_and_the_run_goes_on(bad_run):
    proc, out = bad_run
    # The run goes on, and like `transcribe`, exits non-zero saying how many utterances failed.
    assert proc.returncode == 1 and "Traceback" not in proc.stderr + proc.stdout
    assert proc.stderr.strip().splitlines()[-1].startswith("edgeq: error: 2 utterance(s) could not be transcribed")
    records = _records(out / "tiny-int8.jsonl")
    errors = {r["id"]: r for r in records if r["type"] == "error"}
    assert set(errors) == {"missing", "corrupt"}
    assert "no such audio file" in errors["missing"]["error"]
    assert "cannot decode audio" in errors["corrupt"]["error"]
    assert all("\n" not in e["error"] for e in errors.values())

    utts = {r["id"]: r for r in records if r["type"] == "utterance"}
    assert set(utts) == set(GOOD) | {"silent", "noref"}
    silent = utts["silent"]
    assert silent["latency_s"] > 0 and silent["ref_words"] == 3
    assert silent["substitutions"] + silent["deletions"] + silent["hits"] == 3
    noref = utts["noref"]
    assert noref["reference"] == "" and noref["latency_s"] > 0
    assert "empty" in noref["wer_error"] and "substitutions" not in noref

    (summary,) = _summary(out)
    assert "failed" not in summary and summary["complete"]
    assert summary["errors"] == 2 and summary["utterances"] == len(GOOD) + 2
    assert summary["wer"]["scored_utterances"] == len(GOOD) + 1
    assert summary["wer"]["ref_words"] == sum(len(t.split()) for t in GOOD.values()) + 3
    assert summary["wer"]["wer_pct"] is not None
    row = next(line for line in proc.stdout.splitlines() if "tiny-int8" in line)
    assert row.rstrip(" │|").split()[-1] == "2"  # the errors column


def test_dataset_typo_is_a_one_line_error(bundles, dataset, tmp_path):
    typo = dataset.parent / "manifst.tsv"
    out = tmp_path / "out"
    proc = edgeq("bench", bundles["tiny-fp32"], "-d", typo, "-o", out)
    assert_one_line_error(proc, r"^edgeq: error: dataset not found: .*manifst\.tsv")
    assert not out.exists()


# --------------------------------------------------------------------------- 6. one process per system


def test_two_bundles_run_in_separate_processes_side_by_side(bundles, dataset, tmp_path):
    out = tmp_path / "out"
    proc = edgeq("bench", bundles["tiny-fp32"], bundles["tiny-int8"], "-d", dataset, "--threads", "1",
                 "--warmup", "0", "--limit", "2", "-o", out)
    _ok(proc)
    pids = {}
    for name in ("tiny-fp32", "tiny-int8"):
        records = _records(out / f"{name}.jsonl")
        (run,) = [r for r in records if r["type"] == "run"]
        assert run["system"] == name
        pids[name] = run["pid"]
        assert len([r for r in records if r["type"] == "utterance"]) == 2
    assert pids["tiny-fp32"] != pids["tiny-int8"]
    assert os.getpid() not in pids.values()
    # Each process's own high-water mark, both above what its model needed after load.
    summaries = _summary(out)
    assert [s["system"] for s in summaries] == ["tiny-fp32", "tiny-int8"]
    for s in summaries:
        assert s["memory"]["peak_rss_os_mb"] >= s["memory"]["rss_after_load_mb"] > 0
    rows = [line for line in proc.stdout.splitlines() if "tiny-fp32" in line or "tiny-int8" in line]
    assert len(rows) == 2 and "tiny-fp32" in rows[0] and "tiny-int8" in rows[1], proc.stdout


def test_a_worker_that_floods_stderr_does_not_hang(bundles, dataset, tmp_path):
    """PYTHONVERBOSE makes the worker write MBs to stderr while importing (as bitsandbytes does
    with a warning per Linear8bitLt call on a CPU). Through an undrained pipe that blocked the
    worker once 64 KB were written; the run must finish and keep the log."""
    out = tmp_path / "out"
    env = {**os.environ, "PYTHONVERBOSE": "1"}
    proc = edgeq("bench", bundles["tiny-fp32"], "-d", dataset, "--threads", "1", "--warmup", "0", "--limit", "1",
                 "-o", out, env=env)
    assert proc.returncode == 0, proc.stderr[-2000:]
    (summary,) = _summary(out)
    assert "failed" not in summary and summary["utterances"] == 1
    assert (out / "tiny-fp32.stderr.log").stat().st_size > 64 * 1024


def test_plot_of_saved_results_keeps_broken_systems_off_the_scale(fp32_run, tmp_path):
    """`--compare ... --plot` draws saved results; a system at WER 400 % (2-bit recipes on
    whisper-base) is named in the title instead of stretching the WER axis."""
    pytest.importorskip("matplotlib")
    (summary,) = _summary(fp32_run)
    broken = json.loads(json.dumps(summary))
    broken["system"] = "broken-2bit"
    broken["wer"]["wer_pct"] = 400.0
    (tmp_path / "broken.json").write_text(json.dumps([broken]))
    png = tmp_path / "plot.png"
    proc = edgeq("bench", "--compare", fp32_run / "summary.json", tmp_path / "broken.json", "--plot", png)
    _ok(proc)
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from edgeq.bench.report import plot

    captured = {}
    real_savefig = plt.Figure.savefig

    def keep(fig, *args, **kwargs):
        captured["title"] = fig.axes[0].get_title()
        captured["ylim"] = fig.axes[0].get_ylim()
        return real_savefig(fig, *args, **kwargs)

    plt.Figure.savefig = keep
    try:
        plot([summary, broken], tmp_path / "again.png")
    finally:
        plt.Figure.savefig = real_savefig
    assert "broken-2bit 400 %" in captured["title"]
    assert captured["ylim"][1] <= 25


# --------------------------------------------------------------------------- decoding options


def test_bench_decodes_as_the_study_by_default_and_records_it(fp32_run):
    from edgeq.runtime.decoding import STUDY_OPTIONS

    (run,) = [r for r in _records(fp32_run / "tiny-fp32.jsonl") if r["type"] == "run"]
    assert run["settings"]["decode"] == STUDY_OPTIONS.to_dict()
    assert run["settings"]["decode"]["beam_size"] == 1 and run["settings"]["decode"]["temperatures"] == [0.0]
    utts = [r for r in _records(fp32_run / "tiny-fp32.jsonl") if r["type"] == "utterance"]
    assert all(u["windows"] == 1 and u["segments"] <= 1 for u in utts)


def test_bench_beam_search_and_fallback_are_selectable(bundles, dataset, tmp_path):
    out = tmp_path / "out"
    _ok(edgeq("bench", bundles["tiny-fp32"], "-d", dataset, "--threads", "1", "--warmup", "0", "--limit", "2",
              "-o", out, "--beam-size", "3", "--temperature-fallback", "--timestamps"))
    (run,) = [r for r in _records(out / "tiny-fp32.jsonl") if r["type"] == "run"]
    decode = run["settings"]["decode"]
    assert decode["beam_size"] == 3 and decode["temperatures"][0] == 0.0 and len(decode["temperatures"]) == 6
    assert decode["timestamps"] is True and decode["compression_ratio_threshold"] == 2.4
    # A run measured with other decoding options is not resumed into
    proc = edgeq("bench", bundles["tiny-fp32"], "-d", dataset, "--threads", "1", "--limit", "2", "-o", out, "--resume")
    assert proc.returncode == 1 and "cannot resume, it was run with decode=" in proc.stdout + proc.stderr
