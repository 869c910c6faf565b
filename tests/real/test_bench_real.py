"""Real tier: `edgeq bench` on the fp32 bundle of whisper-base over the LibriSpeech part of
speech-dev (8 utterances, 62 s), 2 threads: WER as published for whisper-base, and every timing,
memory and environment field in the result files."""

from __future__ import annotations

import json

import pytest
from helpers import SPEECH_DEV, WHISPER_BASE

pytestmark = [pytest.mark.real, pytest.mark.slow]

UTTERANCES = 8  # LibriSpeech lines in speech-dev


def test_bench_fp32_whisper_base_on_speech_dev(tmp_path):
    from helpers import edgeq as cli

    import edgeq

    bundle = edgeq.build("fp32", model=str(WHISPER_BASE), out=tmp_path / "fp32", language="en")
    out = tmp_path / "out"
    proc = cli("bench", bundle.path, "-d", SPEECH_DEV / "LibriSpeech", "--threads", "2", "-o", out)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr

    (summary,) = json.loads((out / "summary.json").read_text())
    assert "failed" not in summary and summary["complete"]
    assert summary["utterances"] == UTTERANCES and summary["errors"] == 0
    assert summary["wer"]["scored_utterances"] == UTTERANCES
    assert summary["wer"]["wer_pct"] <= 8.0, summary["wer"]

    # 1. timings, threads, memory
    assert summary["load"]["seconds"] > 0
    for field in ("latency_s", "encoder_s", "per_token_s", "rtf", "tokens_per_s"):
        stats = summary["latency"][field]
        assert all(stats[k] is not None and stats[k] > 0 for k in ("mean", "p50", "p90")), field
        assert stats["p50"] <= stats["p90"]
    assert summary["rtf"] > 0 and summary["tokens_per_s"] > 0
    assert summary["settings"]["threads"] == 2 and summary["settings"]["threads_used"] == 2
    mem = summary["memory"]
    for key in ("rss_after_load_mb", "peak_rss_load_mb", "peak_rss_inference_mb", "peak_rss_sampled_mb",
                "peak_rss_os_mb"):
        assert mem[key] is not None and mem[key] > 0, key
    assert mem["peak_rss_os_mb"] >= mem["rss_after_load_mb"] > mem["rss_before_load_mb"]

    # 2. schema of the results file
    records = [json.loads(line) for line in (out / f"{bundle.path.name}.jsonl").read_text().splitlines()]
    (run,) = [r for r in records if r["type"] == "run"]
    env = run["env"]
    assert env["cpu"]["model"] and (env["cpu"]["flags"] or env["gpu"])
    assert env["os"] and env["arch"] and env["python"]
    assert env["libraries"]["torch"] and env["libraries"]["numpy"]
    assert env["edgeq"]["version"] == edgeq.__version__
    assert run["system_info"]["manifest_sha256"] == bundle.manifest_sha256
    assert run["system_info"]["recipe"] == "fp32"
    assert run["settings"]["threads"] == 2
    utts = [r for r in records if r["type"] == "utterance"]
    assert len(utts) == UTTERANCES == len({u["id"] for u in utts})
    for u in utts:
        assert u["id"] and u["reference"] and u["hypothesis"].strip()
        for key in ("substitutions", "deletions", "insertions"):
            assert isinstance(u[key], int) and u[key] >= 0
        for key in ("latency_s", "encoder_s", "decode_s", "per_token_s", "tokens_per_s", "rtf", "peak_rss_mb"):
            assert u[key] > 0, (u["id"], key)
