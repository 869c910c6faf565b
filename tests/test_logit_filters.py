"""benchmarks/logit_filters.py: the per-step logit work of the decoding loop, timed. Its reference
form of the last timestamp rule (openai-whisper's, in log-probabilities) must decide as
WindowDecoder.filter_logits does, or the comparison it reports is of two different rules."""

import json
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))
try:
    import logit_filters
finally:
    sys.path.remove(str(REPO / "benchmarks"))


def test_the_script_times_every_case_and_its_reference_rule_decides_as_the_filter(tiny_model, tmp_path, monkeypatch):
    from edgeq.runtime.decoding import DecodeOptions, WindowDecoder

    out = tmp_path / "filters.json"
    monkeypatch.setattr(sys, "argv", ["logit_filters.py", "--model", str(tiny_model), "--calls", "3",
                                      "--rounds", "1", "--out", str(out)])
    logit_filters.main()
    summary = json.loads(out.read_text())["summary"]
    assert set(summary) == {"filter, no timestamps", "filter, timestamps", "score: log-softmax, argmax",
                            "timestamp rule, log-prob form"} and all(v > 0 for v in summary.values())

    settings = logit_filters._settings(str(tiny_model))
    ts, decoder = settings.timestamp_begin, WindowDecoder(settings, DecodeOptions())
    rng, seen = np.random.default_rng(0), set()
    for _ in range(100):
        logits = rng.normal(0, 3, settings.vocab_size).astype(np.float32)
        logits[ts:] += rng.uniform(-8, 2)
        filtered = decoder.filter_logits(logits, [ts, 5, 7])
        # the reference sees what the filter's other rules leave: the logits before its last test
        before = filtered.copy()
        if np.all(np.isneginf(before[:ts])):
            before[:ts] = logits[:ts]
            before[settings.eot + 1:ts] = -np.inf
        forced = bool(np.all(np.isneginf(filtered[:ts])))
        seen.add(forced)
        assert forced == logit_filters.rule_in_log_probs(before, ts)
    assert seen == {True, False}
