"""benchmarks/tables.py's #11 table: a row is met only when every bar is, WER included where the run
measured fp32 beside the bundle."""

import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))
try:
    import tables
finally:
    sys.path.remove(str(REPO / "benchmarks"))


def _ratio(x: float) -> dict:
    return {"median": x, "min": x, "max": x, "n": 1}


def _goal(tmp_path: Path, monkeypatch, wer: float, fp32: float | None) -> str:
    rows = [{"system": "edgeq:b", "wer_pct": wer, "round": 1}]
    if fp32 is not None:
        rows.append({"system": "transformers-fp32", "wer_pct": fp32, "round": 1})
    run = tmp_path / "run.json"
    run.write_text(json.dumps({"rows": rows, "summary": {"edgeq_ratios": {"edgeq:b": {
        "rtf_vs_fastest_peer": _ratio(0.4), "rss_vs_whisper_cpp_q8_0": _ratio(0.7),
        "load_vs_whisper_cpp_q8_0": _ratio(0.9), "fastest_peer": ["whisper.cpp-q8_0"]}}}}))
    goal = tmp_path / "goal.toml"
    goal.write_text(f'[[row]]\nkernels = "AVX2"\nmodel = "whisper-base"\nwindow = "5-min recording"\n'
                    f'run = "{run}"\nrecipes = {{ onnx-int8-dynamic = "edgeq:b" }}\n')
    monkeypatch.setattr(tables, "GOAL_ROWS", goal)
    return next(line for line in tables.goal().splitlines() if line.startswith("| AVX2"))


def test_a_row_within_fp32_plus_half_a_point_is_met(tmp_path, monkeypatch):
    assert _goal(tmp_path, monkeypatch, wer=3.17, fp32=2.67).endswith("| met |")


def test_a_row_past_fp32_plus_half_a_point_misses_on_wer(tmp_path, monkeypatch):
    assert _goal(tmp_path, monkeypatch, wer=3.23, fp32=2.67).endswith("| **not met**: WER |")


def test_without_fp32_in_the_run_only_the_ratios_are_judged(tmp_path, monkeypatch):
    assert _goal(tmp_path, monkeypatch, wer=9.0, fp32=None).endswith("| met |")
