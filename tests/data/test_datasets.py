"""Dataset specs a user hands to bench/calibration: bad manifests and transcript files are one
`DatasetError` line naming the file (and row), whatever their bytes."""

from __future__ import annotations

import json

import pytest
from helpers import answers_or_one_line_error, json_values, property_settings, with_file
from hypothesis import given
from hypothesis import strategies as st

from edgeq.data.datasets import open_dataset
from edgeq.errors import DatasetError

FAST = property_settings()




_ROWS = st.lists(st.lists(st.text(max_size=12), max_size=4).map("\t".join), max_size=5).map("\n".join)


@FAST
@given(content=st.binary(max_size=200) | _ROWS.map(lambda rows: ("file\ttranscript\n" + rows).encode()))
def test_any_tsv_manifest(content):
    with_file("m.tsv", content, lambda p: answers_or_one_line_error(lambda: open_dataset(p)))


@FAST
@given(content=st.binary(max_size=200)
       | st.lists(json_values(), max_size=4).map(lambda rows: "\n".join(map(json.dumps, rows)).encode())
       | st.lists(st.fixed_dictionaries({"file": json_values(5), "text": json_values(5)}), max_size=3)
       .map(lambda rows: "\n".join(map(json.dumps, rows)).encode()))
def test_any_jsonl_manifest(content):
    with_file("m.jsonl", content, lambda p: answers_or_one_line_error(lambda: open_dataset(p)))


@FAST
@given(content=st.binary(max_size=200) | st.text(max_size=200).map(str.encode))
def test_any_librispeech_transcript_file(content):
    with_file("1-2.trans.txt", content, lambda p: answers_or_one_line_error(lambda: open_dataset(p.parent)))


def test_ragged_tsv_row_names_the_row(tmp_path):
    (tmp_path / "m.tsv").write_text("file\ttranscript\na.wav\thello\nb.wav\n")
    with pytest.raises(DatasetError, match=r"m.tsv:3: 1 columns, the header has 2"):
        open_dataset(tmp_path / "m.tsv")


def test_jsonl_line_that_is_not_an_object(tmp_path):
    (tmp_path / "m.jsonl").write_text('{"file": "a.wav", "text": "hi"}\n[1, 2]\n')
    with pytest.raises(DatasetError, match=r"m.jsonl:2: not a JSON object"):
        open_dataset(tmp_path / "m.jsonl")


def test_non_utf8_transcripts(tmp_path):
    (tmp_path / "1-2.trans.txt").write_bytes(b"1-2-0000 CAF\xc9\n")
    with pytest.raises(DatasetError, match=r"1-2.trans.txt: the transcript file is not UTF-8 text"):
        open_dataset(tmp_path)


@pytest.mark.parametrize("utt_id", ["../../etc/passwd", "a\x00b", "/abs"])
def test_transcript_ids_cannot_point_outside_the_chapter(tmp_path, utt_id):
    (tmp_path / "1-2.trans.txt").write_text(f"{utt_id} HELLO\n")
    with pytest.raises(DatasetError, match=r"1-2.trans.txt:1: .* is not an utterance id"):
        open_dataset(tmp_path)
