"""Saved bench results read back (--compare, --resume, summaries): whatever a results or summary
file holds, the reader answers with summaries or one `EdgeqError` line naming the file."""

from __future__ import annotations

import json

from helpers import answers_or_one_line_error, json_values, mutated, property_settings, with_file
from hypothesis import given
from hypothesis import strategies as st

from edgeq.bench.report import load_summaries
from edgeq.bench.summary import load_records, summarize

FAST = property_settings()

RUN = {"type": "run", "system": "s", "system_info": {"recipe": "r", "size_mb": 1.0}, "settings": {"threads": 1},
       "load": {"seconds": 1.0, "rss_before_mb": 1.0, "rss_after_mb": 2.0, "peak_rss_mb": 3.0},
       "env": {"cpu": {"model": "x"}}}
UTT = {"type": "utterance", "id": "u", "audio_s": 1.0, "latency_s": 0.5, "decode_s": 0.2, "tokens": 3, "ref_words": 2,
       "substitutions": 1, "deletions": 0, "insertions": 0, "encoder_s": 0.1, "per_token_s": 0.05, "rtf": 0.5,
       "tokens_per_s": 15.0, "peak_rss_mb": 4.0}
END = {"type": "end", "remaining": 0, "peak_rss_os_mb": 5.0}




def test_valid_records_summarize_and_render():
    summary = summarize([RUN, UTT, END])
    assert summary["wer"]["wer_pct"] == 50.0
    with_file("s.json", json.dumps([summary]).encode(), lambda p: answers_or_one_line_error(lambda: load_summaries([p])))


@FAST
@given(data=st.data(), which=st.sampled_from([0, 1, 2]))
def test_any_edit_of_a_resultswith_file(data, which):
    records = [RUN, UTT, END]
    records[which] = mutated(records[which], data)
    content = "\n".join(json.dumps(r) for r in records).encode() + b"\n"
    with_file("s.jsonl", content, lambda p: answers_or_one_line_error(lambda: load_summaries([p])))


@FAST
@given(data=st.data())
def test_any_edit_of_a_summary(data):
    doc = mutated([summarize([RUN, UTT, END])], data)
    with_file("s.json", json.dumps(doc).encode(), lambda p: answers_or_one_line_error(lambda: load_summaries([p])))


@FAST
@given(content=st.binary(max_size=200) | json_values().map(lambda v: json.dumps(v).encode()))
def test_any_bytes_as_results_or_summary(content):
    with_file("s.json", content, lambda p: answers_or_one_line_error(lambda: load_summaries([p])))
    with_file("s.jsonl", content, lambda p: answers_or_one_line_error(lambda: load_summaries([p])))
    with_file("s.jsonl", content, lambda p: answers_or_one_line_error(lambda: [summarize(load_records(p))]))


def test_bench_target_compares_the_measured_peak(tmp_path):
    from edgeq.bench.report import target_fit
    from edgeq.spec.targets import load_target

    small = tmp_path / "small.toml"
    small.write_text('description = "d"\narch = "arm64"\nthreads = 1\nmemory_mb = 4\ntorch_engine = "qnnpack"\n')
    summaries = [summarize([RUN, UTT, END]), {"system": "broken", "failed": "boom"}]
    assert target_fit(summaries, load_target("rpi4")) == [(True, "s: measured peak RSS 5 MB of rpi4's 2,048 MB")]
    ((fits, line),) = target_fit(summaries, load_target(str(small)))
    assert not fits and line.startswith("s: measured peak RSS 5 MB of small's 4 MB: it does not fit")
