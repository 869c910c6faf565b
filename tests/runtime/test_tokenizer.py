"""edgeq's decode-only tokenizer against the `tokenizers` library it replaces on the device."""

from __future__ import annotations

import json

import numpy as np
import pytest
from helpers import WHISPER_BASE

from edgeq.errors import BundleError
from edgeq.runtime.tokenizer import WhisperTokenizer, write_decode_table

tokenizers = pytest.importorskip("tokenizers")


def _files(tiny_model):
    files = [tiny_model / "tokenizer.json"]
    if (WHISPER_BASE / "tokenizer.json").is_file():
        files.append(WHISPER_BASE / "tokenizer.json")  # the real 51865-token vocabulary, when at hand
    return files


@pytest.mark.parametrize("form", ["tokenizer.json", "decode table"])
def test_every_id_and_random_sequences_decode_as_tokenizers_does(tiny_model, tmp_path, form):
    for n, path in enumerate(_files(tiny_model)):
        theirs = tokenizers.Tokenizer.from_file(str(path))
        if form == "decode table":
            write_decode_table(path, tmp_path / f"{n}.bin")
            path = tmp_path / f"{n}.bin"
        ours = WhisperTokenizer(path)
        size = theirs.get_vocab_size(with_added_tokens=True)
        for i in range(size + 3):  # + ids past the vocabulary, which both skip
            assert ours.decode([i]) == theirs.decode([i], skip_special_tokens=True).strip(), (path, i)
        rng = np.random.default_rng(0)
        for _ in range(300):
            ids = rng.integers(0, size, rng.integers(1, 40)).tolist()  # split multi-byte characters included
            assert ours.decode(ids) == theirs.decode(ids, skip_special_tokens=True).strip(), (path, ids)


@pytest.mark.parametrize("content, message", [
    ("{", r"not a readable Whisper tokenizer.json"),
    ('{"model": {"type": "WordPiece", "vocab": {}}, "decoder": {"type": "WordPiece"}}', r"not Whisper's byte-level BPE"),
    ('{"model": {"type": "BPE", "vocab": {"\\u4e00": 0}}, "decoder": {"type": "ByteLevel"}}', r"tokenizer.json"),
])
def test_a_tokenizer_json_that_is_not_whispers_is_one_line(tmp_path, content, message):
    path = tmp_path / "tokenizer.json"
    path.write_text(content)
    with pytest.raises(BundleError, match=message) as err:
        WhisperTokenizer(path)
    assert "\n" not in str(err.value)


def test_special_tokens_are_skipped_and_timestamps_kept(tmp_path):
    path = tmp_path / "tokenizer.json"
    path.write_text(json.dumps({
        "model": {"type": "BPE", "vocab": {"a": 0, "Ġb": 1}}, "decoder": {"type": "ByteLevel"},
        "added_tokens": [{"id": 2, "content": "<|endoftext|>", "special": True},
                         {"id": 3, "content": "<|0.00|>", "special": False}]}))
    assert WhisperTokenizer(path).decode([3, 0, 1, 2]) == "<|0.00|>a b"


def test_a_built_bundle_carries_the_decode_table_and_loads_it(tiny_model, tmp_path, monkeypatch):
    import edgeq
    from edgeq.format.bundle import DECODE_TABLE
    from edgeq.runtime import transcriber

    tiny_onnx_bundle = edgeq.build("onnx-int8-dynamic", model=str(tiny_model), out=tmp_path / "b", language="en")
    assert DECODE_TABLE in tiny_onnx_bundle.manifest.files  # hashed like every file
    opened = []
    monkeypatch.setattr(transcriber, "WhisperTokenizer", lambda p: opened.append(p.name) or WhisperTokenizer(p))
    transcriber.load(tiny_onnx_bundle.path)
    assert opened == [DECODE_TABLE]


@pytest.mark.parametrize("cut", [0, 10, 30, -1])
def test_a_truncated_or_foreign_decode_table_is_one_line(tiny_model, tmp_path, cut):
    path = tmp_path / "t.bin"
    write_decode_table(tiny_model / "tokenizer.json", path)
    data = path.read_bytes()
    path.write_bytes(b"not a table" if cut == 0 else data[:cut] if cut > 0 else data + b"x")
    with pytest.raises(BundleError, match=r"not a readable edgeq decode table") as err:
        WhisperTokenizer(path)
    assert "\n" not in str(err.value)


def test_a_decode_table_whose_offsets_go_back_is_one_line(tiny_model, tmp_path):
    # The pieces are sliced out of the file at decode time: offsets that go backwards would make
    # wrong pieces silently, so the load refuses them.
    import struct

    from edgeq.runtime.tokenizer import MAGIC

    path = tmp_path / "t.bin"
    write_decode_table(tiny_model / "tokenizer.json", path)
    data = bytearray(path.read_bytes())
    (n,) = struct.unpack_from("<I", data, len(MAGIC))
    at = len(MAGIC) + 4 + n
    offsets = list(struct.unpack_from(f"<{n + 1}I", data, at))
    i = next(k for k in range(1, n) if offsets[k + 1] > offsets[k])  # a piece with bytes
    offsets[i] = offsets[i + 1] + 1  # past the next offset: it goes back after it
    struct.pack_into(f"<{n + 1}I", data, at, *offsets)
    path.write_bytes(bytes(data))
    with pytest.raises(BundleError, match=r"truncated or inconsistent"):
        WhisperTokenizer(path)
