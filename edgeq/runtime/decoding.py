"""Decoding one 30 s window of Whisper, independent of the runtime: greedy, sampling, beam search.

Both runtimes (PyTorch and ONNX Runtime) implement the small `Engine` protocol
(`edgeq.spec.protocols`); this module owns everything else — the task/language prompt, the
previous-text prompt, token suppression, Whisper's timestamp rules, language detection, the
search and the stop rule — so every bundle, whatever its backend, is decoded by exactly the same
rules and comparisons between bundles measure the quantization, not the decoder. It also lets the
bench time the encoder and each decoder step separately, which `generate()` hides.

The rules follow openai-whisper's `decoding.py` (SuppressTokens, SuppressBlank,
ApplyTimestampRules, GreedyDecoder, BeamSearchDecoder, MaximumLikelihoodRanker); the seek loop
over a long recording that uses them is `edgeq.runtime.longform`.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import numpy as np

from edgeq.errors import EdgeqError
from edgeq.format import configs
from edgeq.runtime.features import HOP_LENGTH, SAMPLE_RATE
from edgeq.spec.protocols import Engine

TIME_PRECISION = 0.02  # seconds per timestamp token: 30 s / 1500 encoder positions
FALLBACK_TEMPERATURES = (0.0, 0.2, 0.4, 0.6, 0.8, 1.0)  # openai-whisper's transcribe() default
ENCODER_WINDOWS = ("full", "fit")
# Audio kept after the end of a short clip when the encoder window is fitted to it. Measured on
# speech-dev (24 clips, 453 words, whisper-base fp32, greedy): 3 s, 2 s and 1.5 s all gave WER
# 2.65 % (full window 3.09 %); at 1 s two clips under 3 s looped to the token limit (77 %).
ENCODER_FIT_MARGIN_S = 2.0


# A decode whose last LOOP_TOKENS tokens repeat a pattern of at most LOOP_MAX_PERIOD tokens is in a
# loop (one token 32 times, or an 8-token phrase 5 times in a row). Speech that says so is rare,
# and the guard is only used where its remedy is the ordinary decode: a fitted encoder window,
# decoded again on the full window (longform.Transcriber._decode_fitted).
LOOP_TOKENS = 32
LOOP_MAX_PERIOD = 8


def in_a_loop(tokens: list[int]) -> bool:
    """Whether the last LOOP_TOKENS of `tokens` repeat with a period of LOOP_MAX_PERIOD or less."""
    n = len(tokens)
    tail = tokens[n - LOOP_TOKENS:]
    return n > LOOP_TOKENS and any(tokens[n - LOOP_TOKENS - p : n - p] == tail
                                   for p in range(1, min(LOOP_MAX_PERIOD, n - LOOP_TOKENS) + 1))


def fit_window(features: np.ndarray, content_frames: int) -> np.ndarray:
    """The first frames of a window's `features` that hold its `content_frames` of audio plus
    ENCODER_FIT_MARGIN_S (an even number: the encoder's stride), or all of them."""
    frames = content_frames + round(ENCODER_FIT_MARGIN_S * SAMPLE_RATE / HOP_LENGTH)
    frames += frames % 2  # the encoder's second convolution halves the frames
    return features if frames >= features.shape[-1] else features[:, :frames]


@dataclass(frozen=True)
class DecodeSettings:
    """Token ids and rules, read from the bundle's generation_config.json and config.json."""

    sot: int
    eot: int
    no_timestamps: int | None
    vocab_size: int
    max_new_tokens: int
    lang_ids: dict[str, int] = field(default_factory=dict)  # "en" -> 50259
    task_ids: dict[str, int] = field(default_factory=dict)
    suppress: tuple[int, ...] = ()
    begin_suppress: tuple[int, ...] = ()
    language: str | None = None  # None: detect (multilingual models only)
    task: str = "transcribe"
    sot_prev: int | None = None  # <|startofprev|>: previous text as a prompt
    n_text_ctx: int = 448  # decoder positions: prompt + generated tokens must fit

    @classmethod
    def from_configs(
        cls, generation: dict, config: dict, language: str | None = None, task: str = "transcribe",
        where: str = "",
    ) -> "DecodeSettings":
        """From the two JSON files' contents (`where`: the folder they came from, for errors)."""
        prefix = f"{where}/" if where else ""
        gen = configs.parse(configs.GenerationConfig, generation, f"{prefix}generation_config.json")
        cfg = configs.parse(configs.ModelConfig, config, f"{prefix}config.json")
        settings = cls(
            sot=gen.decoder_start_token_id,
            eot=gen.eos_token_id,
            no_timestamps=gen.no_timestamps_token_id,
            vocab_size=cfg.vocab_size,
            # Whisper's own sample length: half the text context (224 for 448 positions).
            max_new_tokens=cfg.max_target_positions // 2,
            lang_ids={k.strip("<|>"): v for k, v in (gen.lang_to_id or {}).items()},
            task_ids=dict(gen.task_to_id or {}),
            suppress=tuple(gen.suppress_tokens or ()),
            begin_suppress=tuple(gen.begin_suppress_tokens or ()),
            sot_prev=gen.prev_sot_token_id,
            n_text_ctx=cfg.max_target_positions,
        )
        return settings.with_options(language=language, task=task)

    def with_options(self, language: str | None = None, task: str | None = None) -> "DecodeSettings":
        if language is not None and self.lang_ids and language not in self.lang_ids:
            raise EdgeqError(
                f"unknown language {language!r}; this model knows {', '.join(sorted(self.lang_ids))}"
            )
        if task is not None and self.task_ids and task not in self.task_ids:
            raise EdgeqError(f"unknown task {task!r}; choose one of {', '.join(self.task_ids)}")
        return replace(
            self,
            language=language if self.lang_ids else None,
            task=task or self.task,
        )

    @property
    def multilingual(self) -> bool:
        return bool(self.lang_ids)

    @property
    def timestamp_begin(self) -> int | None:
        """Id of <|0.00|>: Whisper's timestamp tokens follow <|notimestamps|>, one per 0.02 s."""
        if self.no_timestamps is None or self.no_timestamps + 1 >= self.vocab_size:
            return None
        return int(self.no_timestamps) + 1

    @property
    def no_speech(self) -> int | None:
        """<|nocaptions|> (<|nospeech|> in v3) sits just before <|notimestamps|> in every Whisper."""
        return int(self.no_timestamps) - 1 if self.no_timestamps is not None else None

    def prompt(self, language: str | None, timestamps: bool = False) -> list[int]:
        ids = [self.sot]
        if self.multilingual:
            ids.append(self.lang_ids[language or "en"])
            ids.append(self.task_ids.get(self.task, self.sot + 1))
        if self.no_timestamps is not None and not timestamps:
            ids.append(int(self.no_timestamps))
        return ids


@dataclass(frozen=True)
class DecodeOptions:
    """How to decode, as openai-whisper's `transcribe()` options (its defaults unless noted)."""

    timestamps: bool = True
    """Predict timestamp tokens (segments). Audio over 30 s is always decoded with them."""
    beam_size: int = 1
    """1: greedy search. N > 1: beam search with N beams at temperature 0 (N times the decoder steps)."""
    patience: float = 1.0
    """Beam search stops once beam_size * patience hypotheses have ended (arXiv:2204.05424)."""
    length_penalty: float | None = None
    """None: rank finished beams by log-probability / length; else Google NMT's ((5 + len) / 6) ** a."""
    temperatures: tuple[float, ...] = FALLBACK_TEMPERATURES
    """Tried in order until a window passes the thresholds below; (0.0,) turns fallback off."""
    best_of: int = 5
    """Samples drawn at each temperature above 0; the most likely one is kept."""
    compression_ratio_threshold: float | None = 2.4
    """A window whose text gzip-compresses better than this is repetitive (a loop): fall back."""
    logprob_threshold: float | None = -1.0
    """A window whose mean token log-probability is below this is unreliable: fall back."""
    no_speech_threshold: float | None = 0.6
    """A window whose <|nospeech|> probability is above this (and fails logprob_threshold) is silence."""
    condition_on_previous_text: bool = True
    """Prompt each window with the text before it (reset after a window decoded above 0.5)."""
    seed: int = 0
    """Random generator seed for temperature sampling, so a run can be repeated exactly."""
    recheck_sparse_segments: bool = True
    """Decode again, alone, a segment whose span holds seconds its text does not explain (Whisper
    skipped a sentence in it), and edgeq's other checks beyond openai-whisper's loop (a loud span
    between segments, a window declared done early, a quiet end of the recording not decoded as a
    window of its own): see edgeq.runtime.longform."""
    vad: bool = False
    """Jump over silence found by Silero VAD (pip install 'edgeq[vad]') instead of decoding it."""
    encoder_window: str = "fit"
    """"fit": a window holding less than 30 s of audio is encoded on its audio plus
    ENCODER_FIT_MARGIN_S only (whisper.cpp's audio_ctx), when the bundle's engine allows it; a
    decode that then looks broken (repetitive, or at the token limit) is redone on the full window.
    "full": every window is encoded as 30 s, padded, as Whisper was trained. On speech-dev clips
    (whisper-base onnx-int8-dynamic, 2 threads) fit took 0.38x the time at the same WER (2.43 %)."""

    def __post_init__(self):
        if self.encoder_window not in ENCODER_WINDOWS:
            raise EdgeqError(f"--encoder-window must be one of {', '.join(ENCODER_WINDOWS)}, not {self.encoder_window!r}")
        if self.beam_size < 1:
            raise EdgeqError(f"--beam-size must be at least 1, got {self.beam_size}")
        if self.patience <= 0:
            raise EdgeqError(f"--patience must be positive, got {self.patience}")
        if not self.temperatures or any(t < 0 for t in self.temperatures):
            raise EdgeqError(f"temperatures must be >= 0, got {self.temperatures}")
        if self.best_of < 1:
            raise EdgeqError(f"best_of must be at least 1, got {self.best_of}")

    @property
    def fallback(self) -> bool:
        return len(self.temperatures) > 1

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["temperatures"] = list(self.temperatures)
        return d


# The study's decoding: greedy, no timestamps, no fallback, no silence skip. `edgeq bench` uses it
# by default so that its WER stays comparable with the published numbers. The encoder window is
# fitted to each clip as everywhere (a speed choice that kept WER on speech-dev; --encoder-window full).
STUDY_OPTIONS = DecodeOptions(
    timestamps=False, temperatures=(0.0,), compression_ratio_threshold=None, logprob_threshold=None,
    no_speech_threshold=None,
)


@dataclass
class DecodeResult:
    tokens: list[int]  # sampled tokens (timestamps included), without end-of-text
    language: str | None
    encoder_s: float
    decode_s: float
    steps: int  # decoder calls, the prompt included
    truncated: bool  # stopped at the token limit without an end-of-text token
    sum_logprob: float = 0.0
    avg_logprob: float = 0.0
    no_speech_prob: float | None = None
    temperature: float = 0.0


def log_softmax(x: np.ndarray) -> np.ndarray:
    m = np.max(x)
    if not np.isfinite(m):
        return np.full_like(x, -np.inf)
    shifted = x - m
    return shifted - np.log(np.sum(np.exp(shifted)))


def _logsumexp(x: np.ndarray) -> float:
    m = np.max(x)
    if not np.isfinite(m):
        return -np.inf
    return float(m + np.log(np.sum(np.exp(x - m))))


class WindowDecoder:
    """Decodes one window (its encoder output) with the settings and options it was made with."""

    def __init__(self, settings: DecodeSettings, options: DecodeOptions = DecodeOptions()):
        self.settings = settings
        self.options = options
        s = settings
        self.timestamps = options.timestamps and s.timestamp_begin is not None
        if options.timestamps and s.timestamp_begin is None:
            raise EdgeqError("this model has no timestamp tokens (no <|notimestamps|> in its generation_config.json); "
                             "decode without timestamps")
        mask = np.zeros(s.vocab_size, dtype=bool)
        # Without timestamps no special token (ids above end-of-text) may ever be produced; with
        # them only the timestamp tokens may (SuppressTokens + ApplyTimestampRules' <|notimestamps|>).
        mask[s.eot + 1 : s.timestamp_begin if self.timestamps else None] = True
        mask[[t for t in s.suppress if 0 <= t < s.vocab_size]] = True
        self._suppress = mask
        self._begin = np.array([t for t in s.begin_suppress if 0 <= t < s.vocab_size], dtype=np.int64)
        self._lang_codes = list(s.lang_ids)
        self._lang_token_ids = np.array(list(s.lang_ids.values()), dtype=np.int64)
        self._max_initial = round(1.0 / TIME_PRECISION)  # first timestamp at most 1.0 s, as openai-whisper

    # ------------------------------------------------------------------ prompt and language

    def detect_language(self, engine: Engine, encoder_state: Any) -> tuple[str, float]:
        """The most likely language and its probability among the language tokens."""
        logits, _ = engine.step(engine.start(encoder_state), [self.settings.sot])
        lang_logprobs = log_softmax(logits[self._lang_token_ids])
        best = int(np.argmax(lang_logprobs))
        return self._lang_codes[best], float(np.exp(lang_logprobs[best]))

    def prefix(self, language: str | None, previous: list[int] = ()) -> tuple[list[int], list[int]]:
        """(tokens up to <|startoftranscript|>, the task tokens after it).

        The previous text comes first, behind <|startofprev|>, at most n_text_ctx // 2 - 1 tokens
        of it (openai-whisper's limit), and the sample length shrinks so that all of it fits.
        """
        s = self.settings
        head: list[int] = []
        if previous and s.sot_prev is not None:
            head = [s.sot_prev, *list(previous)[-(s.n_text_ctx // 2 - 1):]]
        task = s.prompt(language, timestamps=self.timestamps)
        return [*head, task[0]], task[1:]

    # ------------------------------------------------------------------ logit filters

    def filter_logits(self, logits: np.ndarray, sampled: list[int]) -> np.ndarray:
        """SuppressTokens, SuppressBlank and ApplyTimestampRules on a copy of `logits`."""
        out = np.where(self._suppress, -np.inf, logits).astype(np.float32, copy=False)
        if not sampled and self._begin.size:
            out[self._begin] = -np.inf
        if self.timestamps:
            self._apply_timestamp_rules(out, sampled)
        return out

    def _apply_timestamp_rules(self, logits: np.ndarray, sampled: list[int]) -> None:
        ts, eot = self.settings.timestamp_begin, self.settings.eot
        # Timestamps come in pairs (start, end), except the single one that may precede end-of-text.
        last_ts = len(sampled) >= 1 and sampled[-1] >= ts
        penultimate_ts = len(sampled) < 2 or sampled[-2] >= ts
        if last_ts:
            if penultimate_ts:  # a pair just closed: text must follow
                logits[ts:] = -np.inf
            else:  # a segment's start: its end (or end-of-text) must follow, not more text
                logits[:eot] = -np.inf
        stamps = [t for t in sampled if t >= ts]
        if stamps:
            # Timestamps never go back, and a segment has non-zero length (no infinite loop).
            floor = stamps[-1] if last_ts and not penultimate_ts else stamps[-1] + 1
            logits[ts:floor] = -np.inf
        if not sampled:
            logits[:ts] = -np.inf  # a window starts with a timestamp
            logits[ts + self._max_initial + 1 :] = -np.inf
        # Sample a timestamp when all of them together are more likely than any single text token.
        # On the logits themselves: openai-whisper compares log-probabilities, but both sides carry
        # the same normalizer. Its form (a log-softmax of the whole vocabulary, then the test) took
        # 75-107 us a step, more than the rest of this filter (57-85 us), of a whisper-base step of
        # 2.5-3 ms (benchmarks/logit_filters.py, AMD EPYC, two runs).
        if _logsumexp(logits[ts:]) > np.max(logits[:ts]):
            logits[:ts] = -np.inf

    # ------------------------------------------------------------------ searches

    def decode(self, engine: Engine, features: np.ndarray) -> DecodeResult:
        """One window from its features: greedy at temperature 0, no previous text (the bench's
        short-clip path and calibration)."""
        t0 = time.perf_counter()
        encoder_state = engine.encode(features)
        encoder_s = time.perf_counter() - t0
        language, steps = self.settings.language, 0
        if self.settings.multilingual and language is None:
            language, _ = self.detect_language(engine, encoder_state)
            steps = 1
        result = self.decode_window(engine, encoder_state, language)
        result.encoder_s, result.steps = encoder_s, result.steps + steps
        return result

    def decode_window(self, engine: Engine, encoder_state: Any, language: str | None,
                      previous: list[int] = (), temperature: float = 0.0,
                      rng: np.random.Generator | None = None, want_no_speech: bool = False,
                      stop_in_a_loop: bool = False) -> DecodeResult:
        """Decode a window whose encoder has run; `previous`: text tokens to condition on.
        `stop_in_a_loop`: a sample that is `in_a_loop` ends there, as truncated (beam search runs
        its course)."""
        s, o = self.settings, self.options
        t0 = time.perf_counter()
        head, rest = self.prefix(language, previous)
        state = engine.start(encoder_state)
        steps = 0
        no_speech_prob = None
        if want_no_speech and rest and s.no_speech is not None:
            # <|nospeech|> is read at <|startoftranscript|>, which is not the last prompt position:
            # feed the prompt in two calls (the cache makes that one extra call, not a re-run).
            logits, state = engine.step(state, head)
            no_speech_prob = float(np.exp(log_softmax(logits)[s.no_speech]))
            logits, state = engine.step(state, rest)
            steps += 2
        else:
            logits, state = engine.step(state, head + rest)
            steps += 1
            if want_no_speech and s.no_speech is not None:
                no_speech_prob = float(np.exp(log_softmax(logits)[s.no_speech]))
        sample_len = max(1, min(s.max_new_tokens, s.n_text_ctx - len(head) - len(rest)))
        if temperature > 0:
            rng = rng or np.random.default_rng(o.seed)
            candidates, n = [], 0
            for i in range(o.best_of):
                branch = state if i == o.best_of - 1 else engine.fork(state)
                tokens, score, done, n = self._sample(engine, branch, logits, sample_len, temperature, rng,
                                                      stop_in_a_loop)
                candidates.append((tokens, score, done))
                steps += n
        elif o.beam_size > 1:
            candidates, n = self._beam_search(engine, state, logits, sample_len)
            steps += n
        else:
            tokens, score, done, n = self._sample(engine, state, logits, sample_len, 0.0, None, stop_in_a_loop)
            candidates = [(tokens, score, done)]
            steps += n
        tokens, score, done = max(candidates, key=lambda c: self._rank(c[1], len(c[0])))
        return DecodeResult(
            tokens=list(tokens), language=language, encoder_s=0.0, decode_s=time.perf_counter() - t0,
            steps=steps, truncated=not done, sum_logprob=score, avg_logprob=score / (len(tokens) + 1),
            no_speech_prob=no_speech_prob, temperature=temperature,
        )

    def _sample(self, engine: Engine, state: Any, logits: np.ndarray, sample_len: int, temperature: float,
                rng: np.random.Generator | None, stop_in_a_loop: bool = False) -> tuple[list[int], float, bool, int]:
        """Greedy (temperature 0) or sampled decoding: (tokens, sum of log-probs, ended, steps)."""
        eot = self.settings.eot
        tokens: list[int] = []
        score, steps = 0.0, 0
        for i in range(sample_len):
            filtered = self.filter_logits(logits, tokens)
            logprobs = log_softmax(filtered)
            if temperature == 0:
                token = int(np.argmax(filtered))
            else:
                p = np.exp(log_softmax(filtered / temperature).astype(np.float64))
                token = int(rng.choice(p.size, p=p / p.sum()))
            score += float(logprobs[token])
            if token == eot:
                return tokens, score, True, steps
            tokens.append(token)
            if i + 1 == sample_len or (stop_in_a_loop and in_a_loop(tokens)):
                break
            logits, state = engine.step(state, [token])
            steps += 1
        return tokens, score, False, steps

    def _beam_search(self, engine: Engine, state: Any, logits: np.ndarray,
                     sample_len: int) -> tuple[list[tuple[list[int], float, bool]], int]:
        """openai-whisper's BeamSearchDecoder for one audio: keep `beam_size` open hypotheses,
        stop once `beam_size * patience` have ended; returns the finished candidates."""
        o, eot = self.options, self.settings.eot
        max_candidates = max(1, round(o.beam_size * o.patience))
        beams: list[tuple[tuple[int, ...], float, Any, np.ndarray]] = [((), 0.0, state, logits)]
        finished: dict[tuple[int, ...], float] = {}
        steps = 0
        for i in range(sample_len):
            scores: dict[tuple[int, ...], tuple[float, int]] = {}
            for b, (tokens, total, _, beam_logits) in enumerate(beams):
                logprobs = log_softmax(self.filter_logits(beam_logits, list(tokens)))
                top = np.argpartition(-logprobs, o.beam_size)[: o.beam_size + 1]
                for token in top:
                    if np.isfinite(logprobs[token]):
                        scores[(*tokens, int(token))] = (total + float(logprobs[token]), b)
            kept, ended = [], {}
            for seq in sorted(scores, key=lambda q: scores[q][0], reverse=True):
                if seq[-1] == eot:
                    ended[seq[:-1]] = scores[seq][0]
                else:
                    kept.append(seq)
                    if len(kept) == o.beam_size:
                        break
            for seq in sorted(ended, key=ended.get, reverse=True):
                if len(finished) >= max_candidates:
                    break
                finished[seq] = ended[seq]
            if len(finished) >= max_candidates or not kept or i + 1 == sample_len:
                break
            # Advance the kept hypotheses; a parent with several children is forked for all but one.
            children: dict[int, int] = {}
            for seq in kept:
                children[scores[seq][1]] = children.get(scores[seq][1], 0) + 1
            new_beams = []
            for seq in kept:
                parent = scores[seq][1]
                children[parent] -= 1
                parent_state = beams[parent][2]
                branch = parent_state if children[parent] == 0 else engine.fork(parent_state)
                next_logits, branch = engine.step(branch, [seq[-1]])
                steps += 1
                new_beams.append((seq, scores[seq][0], branch, next_logits))
            beams = new_beams
        candidates = [(list(seq), score, True) for seq, score in finished.items()]
        if len(candidates) < o.beam_size:  # not enough ended: the open ones count, best first
            opened = sorted(((seq, scores[seq][0]) for seq in kept), key=lambda q: q[1], reverse=True)
            for seq, score in opened[: o.beam_size - len(candidates)]:
                candidates.append((list(seq), score, False))
        return candidates, steps

    def _rank(self, sum_logprob: float, length: int) -> float:
        """MaximumLikelihoodRanker: log-probability over a length penalty."""
        penalty = self.options.length_penalty
        norm = max(length, 1) if penalty is None else ((5 + length) / 6) ** penalty
        return sum_logprob / norm


def choose_options(base: DecodeOptions, beam_size: int | None = None, patience: float | None = None,
                   length_penalty: float | None = None, fallback: bool | None = None,
                   condition_on_previous_text: bool | None = None, timestamps: bool | None = None,
                   vad: bool | None = None, encoder_window: str | None = None) -> DecodeOptions:
    """`base` with the choices a user made (None: keep base's). Fallback on restores Whisper's
    thresholds too; off keeps them for the silence skip and gap reports, at temperature 0 only."""
    changes: dict[str, Any] = {}
    if fallback is True:
        defaults = DecodeOptions()
        changes.update(temperatures=defaults.temperatures, compression_ratio_threshold=defaults.compression_ratio_threshold,
                       logprob_threshold=defaults.logprob_threshold, no_speech_threshold=defaults.no_speech_threshold)
    elif fallback is False:
        changes["temperatures"] = (0.0,)
    for name, value in (("beam_size", beam_size), ("patience", patience), ("length_penalty", length_penalty),
                        ("condition_on_previous_text", condition_on_previous_text), ("timestamps", timestamps),
                        ("vad", vad), ("encoder_window", encoder_window)):
        if value is not None:
            changes[name] = value
    return replace(base, **changes)


def options_from_dict(data: dict[str, Any]) -> DecodeOptions:
    """The inverse of DecodeOptions.to_dict (bench jobs cross a process boundary as JSON)."""
    return DecodeOptions(**{**data, "temperatures": tuple(data.get("temperatures", (0.0,)))})
