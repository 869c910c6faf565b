"""Hostile input to the bundle readers: any bytes, any JSON, any one-edit change of a valid file.
Each reader answers with a result or an `EdgeqError` (one line for the user), never another exception."""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path

import pytest
from helpers import answers_or_one_line_error, json_values, manifest_fields, mutated, property_settings
from hypothesis import given
from hypothesis import strategies as st

from edgeq.errors import EdgeqError
from edgeq.format.bundle import MANIFEST, WEIGHTS, open_bundle, read_manifest, write_bundle
from edgeq.format.layout import OnnxLayout

FAST = property_settings()


def _populate(folder):
    (folder / WEIGHTS).write_bytes(b"w" * 100)
    for name in ("config.json", "generation_config.json", "tokenizer.json", "quantization.json"):
        (folder / name).write_text("{}")
    return manifest_fields("demo")


@pytest.fixture(scope="module")
def bundle(tmp_path_factory) -> Path:
    return write_bundle(tmp_path_factory.mktemp("prop") / "b", _populate).path



def _with_manifest(bundle: Path, content: bytes):
    """A copy of `bundle` whose manifest.json holds `content` (the copy is removed afterwards)."""
    tmp = Path(tempfile.mkdtemp())
    copy = tmp / "b"
    shutil.copytree(bundle, copy)
    (copy / MANIFEST).write_bytes(content)
    return tmp, copy


@FAST
@given(content=st.binary(max_size=300) | json_values().map(lambda v: json.dumps(v).encode()))
def test_any_manifest_bytes(bundle, content):
    tmp, copy = _with_manifest(bundle, content)
    try:
        answers_or_one_line_error(lambda: read_manifest(copy))
    finally:
        shutil.rmtree(tmp)


@FAST
@given(data=st.data())
def test_any_edit_of_a_valid_manifest(bundle, data):
    doc = mutated(json.loads((bundle / MANIFEST).read_text()), data)
    tmp, copy = _with_manifest(bundle, json.dumps(doc).encode())
    try:
        answers_or_one_line_error(lambda: open_bundle(copy))
    finally:
        shutil.rmtree(tmp)


_LAYOUT = OnnxLayout.for_dims(n_mels=80, n_audio_ctx=1500, n_layers=2, heads=4, head_dim=16, vocab_size=100,
                              max_target_positions=448).to_dict()


@FAST
@given(data=st.data())
def test_any_edit_of_onnx_json(data):
    answers_or_one_line_error(lambda: OnnxLayout.from_dict(mutated(_LAYOUT, data), "b"))


@pytest.mark.parametrize("key", ["\n`", "a`b", "x\ny", "`"])
def test_an_unknown_key_with_backticks_or_newlines_is_named_on_one_line(key):
    # Found by test_any_edit_of_onnx_json: msgspec names the key between backticks, unescaped.
    with pytest.raises(EdgeqError, match=r"^b: onnx.json: unknown key .*; rebuild the bundle$") as err:
        OnnxLayout.from_dict({**_LAYOUT, key: None}, "b")
    assert "\n" not in str(err.value) and repr(key) in str(err.value)


@FAST
@given(value=json_values())
def test_any_onnx_json(value):
    answers_or_one_line_error(lambda: OnnxLayout.from_dict(value, "b"))


_GENERATION = {"decoder_start_token_id": 1, "eos_token_id": 2, "no_timestamps_token_id": 3,
               "lang_to_id": {"<|en|>": 4}, "task_to_id": {"transcribe": 5}, "suppress_tokens": [6],
               "begin_suppress_tokens": [7]}
_CONFIG = {"vocab_size": 100, "max_target_positions": 448, "num_mel_bins": 80}


@FAST
@given(data=st.data(), which=st.sampled_from(["generation", "config"]))
def test_any_edit_of_the_decoder_configs(data, which):
    from edgeq.runtime.decoding import DecodeSettings

    generation = mutated(_GENERATION, data) if which == "generation" else _GENERATION
    config = mutated(_CONFIG, data) if which == "config" else _CONFIG
    answers_or_one_line_error(lambda: DecodeSettings.from_configs(generation, config, where="b"))


@pytest.mark.parametrize("name", ["../x.onnx", "/abs/x.onnx", "sub/x.onnx", "..onnx", "x.onnx.data"])
def test_onnx_graph_names_stay_inside_the_bundle(name):
    with pytest.raises(EdgeqError, match=r"onnx.json: encoder: Expected `str` matching regex"):
        OnnxLayout.from_dict({**_LAYOUT, "encoder": name}, "b")


def test_int8_cross_keys_values_travel_with_their_scales_or_the_layout_is_refused():
    from edgeq.format.layout import cross_scale_names

    codes = OnnxLayout.for_dims(n_mels=80, n_audio_ctx=1500, n_layers=2, heads=4, head_dim=16, vocab_size=100,
                                max_target_positions=448, cross_int8=True).to_dict()
    cross = ["cross_k_0", "cross_v_0", "cross_k_1", "cross_v_1"]
    assert cross_scale_names(cross) == ["cross_k_0_channel", "cross_k_0_row", "cross_v_0_scale",
                                        "cross_k_1_channel", "cross_k_1_row", "cross_v_1_scale"]
    assert OnnxLayout.from_dict(codes, "b").decoder_inputs[-6:] == cross_scale_names(cross)
    # a layout that says int8 but lists no scales, or lists scales without saying int8
    for edited in ({**codes, "cross_int8": False}, {**_LAYOUT, "cross_int8": True}):
        with pytest.raises(EdgeqError, match="encoder_outputs do not follow layout version 2"):
            OnnxLayout.from_dict(edited, "b")
    assert not OnnxLayout.from_dict({k: v for k, v in _LAYOUT.items() if k != "cross_int8"}, "b").cross_int8


def test_a_shared_self_cache_takes_past_length_last_and_older_layouts_concatenate():
    shared = OnnxLayout.for_dims(n_mels=80, n_audio_ctx=1500, n_layers=2, heads=4, head_dim=16, vocab_size=100,
                                 max_target_positions=448, cross_int8=True, self_cache="shared").to_dict()
    layout = OnnxLayout.from_dict(shared, "b")
    assert layout.decoder_inputs[-1] == "past_length"
    assert layout.past_names == ["past_k_0", "past_v_0", "past_k_1", "past_v_1"]
    # the field without the input, or the input without the field, is refused
    for edited in ({**shared, "self_cache": "concat"}, {**_LAYOUT, "self_cache": "shared"}):
        with pytest.raises(EdgeqError, match="decoder_inputs do not follow layout version 2"):
            OnnxLayout.from_dict(edited, "b")
    with pytest.raises(EdgeqError, match="self_cache"):
        OnnxLayout.from_dict({**_LAYOUT, "self_cache": "ring"}, "b")
    # a bundle written before the field: its decoder concatenates
    assert OnnxLayout.from_dict({k: v for k, v in _LAYOUT.items() if k != "self_cache"}, "b").self_cache == "concat"
