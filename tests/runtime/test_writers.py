"""Transcript files: SRT and WebVTT read back by real parsers, atomic writes, refusals."""

from __future__ import annotations

import json
from datetime import timedelta

import pytest

from edgeq.errors import EdgeqError
from edgeq.runtime.longform import Gap, Segment
from edgeq.runtime.transcriber import Transcription
from edgeq.runtime.writers import output_paths, render, timestamp, write_atomic

SEGMENTS = [(0.0, 2.5, " Hello there."), (2.5, 61.02, " A line, with --> arrows & <b>marks</b>"),
            (3600.0, 3725.456, " After an hour.")]


@pytest.fixture
def transcription():
    segs = [Segment(a, b, text.strip(), [1, 2], -0.2, 0.01, 1.1, 0.0) for a, b, text in SEGMENTS]
    return Transcription(text=" ".join(s.text for s in segs), tokens=[1, 2], language="en", audio_s=3730.0,
                         segments=segs, windows=130, truncated=False,
                         gaps=[Gap(3000.0, 3030.0, "repetitive output")], language_prob=0.98)


def test_timestamp_format():
    assert timestamp(0) == "00:00:00.000"
    assert timestamp(3725.4564, ",") == "01:02:05,456"


def test_srt_parses_with_the_srt_package(transcription):
    srt = pytest.importorskip("srt")
    subs = list(srt.parse(render(transcription, "srt")))
    assert [s.index for s in subs] == [1, 2, 3]
    for sub, (start, end, text) in zip(subs, SEGMENTS):
        assert sub.start == timedelta(seconds=start) and abs(sub.end - timedelta(seconds=end)) < timedelta(milliseconds=1)
        assert sub.content == text.strip()


def test_vtt_parses_with_webvtt_py(transcription, tmp_path):
    webvtt = pytest.importorskip("webvtt")
    path = write_atomic(tmp_path / "a.vtt", render(transcription, "vtt"))
    captions = webvtt.read(str(path))
    assert len(captions) == 3
    assert [(c.start_in_seconds, c.text) for c in captions][0] == (0, "Hello there.")
    assert captions[2].start == "01:00:00.000" and captions[2].end == "01:02:05.456"


def test_json_tsv_txt(transcription):
    data = json.loads(render(transcription, "json", {"manifest_sha256": "abc"}))
    assert data["manifest_sha256"] == "abc" and data["segments"][1]["end"] == 61.02
    assert data["gaps"] == [{"start": 3000.0, "end": 3030.0, "reason": "repetitive output"}]
    assert data["language_prob"] == 0.98 and "per_token_s" in data["timings"]
    rows = render(transcription, "tsv").splitlines()
    assert rows[0] == "start\tend\ttext" and rows[2].startswith("2500\t61020\tA line")
    assert render(transcription, "txt").splitlines() == [t.strip() for _, _, t in SEGMENTS]


def test_unknown_format_clashes_and_existing_files(tmp_path):
    with pytest.raises(EdgeqError, match=r"--format 'doc' is unknown; choose one of txt, srt"):
        output_paths([tmp_path / "a.wav"], "doc", tmp_path)
    with pytest.raises(EdgeqError, match="would both be written"):
        output_paths([tmp_path / "x" / "a.wav", tmp_path / "y" / "a.flac"], "srt", tmp_path)
    (tmp_path / "a.srt").write_text("old")
    with pytest.raises(EdgeqError, match=r"a.srt exists; pass --force"):
        output_paths([tmp_path / "a.wav"], "srt", tmp_path)
    assert output_paths([tmp_path / "a.wav"], "srt", tmp_path, force=True) == [tmp_path / "a.srt"]


def test_atomic_write_leaves_no_partial_file(tmp_path, monkeypatch):
    target = tmp_path / "out" / "a.srt"
    write_atomic(target, "first")

    def broken(fd):
        raise OSError("disk full")
    monkeypatch.setattr("os.fsync", broken)
    with pytest.raises(OSError):
        write_atomic(target, "second, half written")
    assert target.read_text() == "first"
    assert [p.name for p in target.parent.iterdir()] == ["a.srt"]
