"""The window decoder's basic rules in the study's mode (greedy, no timestamps), driven by a fake
engine with scripted logits (no model, no torch): the prompt, suppression of special tokens,
begin-suppression, language detection, the stop rule, truncation. Timestamps, beam search and
long-form are in test_decoding.py.
"""

from __future__ import annotations

import numpy as np
import pytest

from edgeq.errors import EdgeqError
from edgeq.runtime.decoding import STUDY_OPTIONS, DecodeSettings, WindowDecoder

VOCAB = 40
EOT, SOT, EN, DE, TRANSLATE, TRANSCRIBE, NO_TS = 30, 31, 32, 33, 34, 35, 36


def settings(**changes) -> DecodeSettings:
    generation = {
        "decoder_start_token_id": SOT, "eos_token_id": EOT, "no_timestamps_token_id": NO_TS,
        "lang_to_id": {"<|en|>": EN, "<|de|>": DE},
        "task_to_id": {"translate": TRANSLATE, "transcribe": TRANSCRIBE},
        "suppress_tokens": [5], "begin_suppress_tokens": [7, EOT],
    }
    config = {"vocab_size": VOCAB, "max_target_positions": 12}
    return DecodeSettings.from_configs(generation, config, **changes)


class ScriptedEngine:
    """Each step returns the next row of `script`: a dict token -> logit over a floor of -10."""

    def __init__(self, script: list[dict[int, float]]):
        self.script = list(script)
        self.fed: list[list[int]] = []
        self.encoded = 0

    def encode(self, features):
        self.encoded += 1
        return "encoder-state"

    def start(self, encoder_state):
        assert encoder_state == "encoder-state"
        return []

    def step(self, state, tokens):
        self.fed.append(list(tokens))
        row = self.script.pop(0) if self.script else {EOT: 0.0}
        logits = np.full(VOCAB, -10.0, dtype=np.float32)
        for token, value in row.items():
            logits[token] = value
        return logits, state + list(tokens)

    def fork(self, state):
        return list(state)


FEATURES = np.zeros((80, 3000), dtype=np.float32)


def greedy(settings: DecodeSettings) -> WindowDecoder:
    return WindowDecoder(settings, STUDY_OPTIONS)


def test_prompt_is_sot_language_task_notimestamps():
    engine = ScriptedEngine([{3: 1.0}, {EOT: 1.0}])
    result = greedy(settings(language="en")).decode(engine, FEATURES)
    assert engine.fed[0] == [SOT, EN, TRANSCRIBE, NO_TS]
    assert engine.fed[1:] == [[3]] and result.tokens == [3]
    assert not result.truncated and result.steps == 2 and engine.encoded == 1


def test_special_and_suppressed_tokens_are_never_produced():
    # The best logit is a special token (above end-of-text), then a suppressed one: both skipped.
    engine = ScriptedEngine([{NO_TS + 1: 9.0, 4: 1.0}, {5: 9.0, 6: 1.0}, {EOT: 1.0}])
    assert greedy(settings(language="en")).decode(engine, FEATURES).tokens == [4, 6]


def test_begin_suppress_applies_to_the_first_token_only():
    # End-of-text and token 7 are begin-suppressed: the first step cannot stop or say 7 ...
    engine = ScriptedEngine([{EOT: 9.0, 7: 8.0, 2: 1.0}, {7: 9.0}, {EOT: 9.0}])
    result = greedy(settings(language="en")).decode(engine, FEATURES)
    # ... but later steps can.
    assert result.tokens == [2, 7] and not result.truncated


def test_language_is_detected_from_the_first_step_when_not_forced():
    engine = ScriptedEngine([{DE: 5.0, EN: 1.0}, {3: 1.0}, {EOT: 1.0}])
    result = greedy(settings()).decode(engine, FEATURES)
    assert result.language == "de"
    assert engine.fed[0] == [SOT] and engine.fed[1] == [SOT, DE, TRANSCRIBE, NO_TS]


def test_translate_task_changes_the_prompt():
    engine = ScriptedEngine([{EOT: 1.0, 3: 2.0}, {EOT: 1.0}])
    greedy(settings(language="de", task="translate")).decode(engine, FEATURES)
    assert engine.fed[0] == [SOT, DE, TRANSLATE, NO_TS]


def test_token_limit_marks_the_result_truncated():
    # max_target_positions 12 -> at most 6 new tokens (Whisper's sample length, half the context).
    engine = ScriptedEngine([{3: 1.0}] * 50)
    result = greedy(settings(language="en")).decode(engine, FEATURES)
    assert result.tokens == [3] * 6 and result.truncated
    assert len(engine.fed) == 6  # the prompt, then one step per token but the last


def test_unknown_language_and_task_are_one_line_errors():
    with pytest.raises(EdgeqError, match="unknown language 'xx'; this model knows de, en"):
        settings(language="xx")
    with pytest.raises(EdgeqError, match="unknown task 'summarize'"):
        settings(task="summarize")
