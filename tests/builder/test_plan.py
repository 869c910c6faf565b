"""The quantization plan: which Linear layers a recipe quantizes, and with which weight spec.

Every torch backend asks `quantization_plan`, so `modules.encoder/decoder/include/exclude/overrides`
are tested here once, on a 2-layer Whisper built from a config (no weights read).
"""

from __future__ import annotations

import logging

import pytest

from edgeq.builder.plan import LM_HEAD, linear_names, quantization_plan
from edgeq.errors import RecipeError
from edgeq.spec.recipe import apply_overrides, load_recipe


def _whisper(d_model: int):
    from transformers import WhisperConfig, WhisperForConditionalGeneration

    config = WhisperConfig(vocab_size=300, pad_token_id=0, bos_token_id=1, eos_token_id=2, decoder_start_token_id=3,
                           num_mel_bins=80, d_model=d_model, encoder_layers=2, decoder_layers=2,
                           encoder_attention_heads=2, decoder_attention_heads=2, encoder_ffn_dim=2 * d_model,
                           decoder_ffn_dim=2 * d_model, max_source_positions=1500, max_target_positions=32)
    return WhisperForConditionalGeneration(config)


@pytest.fixture(scope="module")
def model():
    return _whisper(64)


def plan_for(model, recipe: str, *sets: str) -> dict:
    return quantization_plan(model, apply_overrides(load_recipe(recipe), list(sets)))


def test_default_plan_is_every_linear_but_the_tied_head(model):
    names = linear_names(model)
    assert LM_HEAD not in names and len(names) == 2 * 6 + 2 * 10  # q,k,v,out,fc1,fc2 / + cross q,k,v,out
    plan = plan_for(model, "hqq-int4-g64")
    assert sorted(plan) == sorted(names)
    assert {w.format for w in plan.values()} == {"int4"} and {w.group_size for w in plan.values()} == {64}


def test_encoder_and_decoder_switches(model):
    enc_only = plan_for(model, "hqq-int4-g64", "modules.decoder=false")
    assert enc_only and all(n.startswith("model.encoder.") for n in enc_only)
    dec_only = plan_for(model, "hqq-int4-g64", "modules.encoder=false")
    assert dec_only and all(n.startswith("model.decoder.") for n in dec_only)


def test_include_and_exclude_patterns(model):
    plan = plan_for(model, "quanto-int8-dynamic", 'modules.include=["*fc1", "*fc2"]', 'modules.exclude=["*layers.1.*"]')
    assert sorted(plan) == sorted(f"model.{side}.layers.0.{fc}" for side in ("encoder", "decoder") for fc in ("fc1", "fc2"))


def test_overrides_first_match_wins_and_float_keeps_a_layer(model):
    plan = plan_for(model, "hqq-int4-g64",
                    'modules.overrides."*encoder*fc*"={format="int8"}',
                    'modules.overrides."*fc*"={format="float"}')
    assert plan["model.encoder.layers.0.fc1"].format == "int8"
    assert plan["model.encoder.layers.0.fc1"].group_size == 64  # unchanged fields are inherited
    assert "model.decoder.layers.0.fc1" not in plan  # float
    assert plan["model.decoder.layers.0.self_attn.q_proj"].format == "int4"


def test_group_that_does_not_divide_the_inputs_is_refused(model):
    with pytest.raises(RecipeError, match=r"group size 48 does not divide the 64 inputs of model\.\w+"):
        plan_for(model, "hqq-int4-g64", "weights.group_size=48")


def test_pattern_that_matches_nothing_is_warned_about(model, caplog):
    with caplog.at_level(logging.WARNING, logger="edgeq"):
        plan_for(model, "hqq-int4-g64", 'modules.exclude=["*no_such_layer*"]')
    assert "exclude pattern '*no_such_layer*' matches no Linear layer" in caplog.text


def test_a_negative_layer_index_counts_from_the_end_of_its_stack(model):
    # One recipe names the same layer in every Whisper size (the last decoder layer is 3 in tiny,
    # 5 in base, 11 in small): onnx-int8-dynamic-int4-decoder keeps "layers.-1.fc*" 8-bit.
    plan = plan_for(model, "hqq-int4-g64", 'modules.overrides."model.decoder.layers.-1.fc*"={format="int8"}',
                    'modules.exclude=["model.encoder.layers.-2.fc1"]')
    assert [n for n, w in plan.items() if w.format == "int8"] == ["model.decoder.layers.1.fc1", "model.decoder.layers.1.fc2"]
    assert "model.encoder.layers.0.fc1" not in plan and "model.encoder.layers.1.fc1" in plan


def test_a_negative_layer_index_past_the_stack_matches_nothing_and_is_warned_about(model, caplog):
    with caplog.at_level(logging.WARNING, logger="edgeq"):
        plan = plan_for(model, "hqq-int4-g64", 'modules.overrides."model.decoder.layers.-3.fc*"={format="int8"}')
    assert {w.format for w in plan.values()} == {"int4"}
    assert "overrides pattern 'model.decoder.layers.-3.fc*' matches no Linear layer" in caplog.text


def test_a_negative_index_resolved_to_a_pattern_already_there_keeps_first_match_wins(model):
    # "layers.-1.fc1" is "layers.1.fc1" on this 2-layer model: the override written first still decides.
    plan = plan_for(model, "hqq-int4-g64", 'modules.overrides."model.decoder.layers.-1.fc1"={format="int8"}',
                    'modules.overrides."model.decoder.layers.1.fc1"={format="float"}')
    assert plan["model.decoder.layers.1.fc1"].format == "int8"


def test_the_shipped_4bit_decoder_recipe_plans_blocks_of_64_and_keeps_its_8bit_layers_in_blocks_of_128():
    # onnx-int8-dynamic-int4-decoder: 4-bit decoder layers in blocks of 64 (a greedy loop on long audio
    # with blocks of 128, recipes/onnx-int8-dynamic-int4-decoder.toml), the last layer's feed-forward
    # 8-bit in blocks of 128, and the tied table in blocks of 128 (modules.embeddings_group_size).
    recipe = load_recipe("onnx-int8-dynamic-int4-decoder")
    plan = quantization_plan(_whisper(128), recipe)  # d_model 128: blocks of 128 divide every layer's inputs
    decoder = {n: (w.format, w.group_size) for n, w in plan.items() if n.startswith("model.decoder.")}
    assert {decoder.pop(f"model.decoder.layers.1.{fc}") for fc in ("fc1", "fc2")} == {("int8", 128)}
    assert set(decoder.values()) == {("int4", 64)}
    assert recipe.modules.embeddings == "int8" and recipe.table_group_size == 128
    assert recipe.granularity_label == "group 64" and recipe.embeddings_label == "int8 group 128"
