"""Audio of any length, decoded as openai-whisper's `transcribe()` does: seek by timestamps.

Fixed 30 s windows cut where the audio happens to be, and greedy decoding without timestamps
ends a dense window early with nothing to tell; on 20 minutes of joined speech-dev clips that
lost 198 words (WER 9.5 % vs 2.65 % clip by clip). Here every window is decoded with timestamp
tokens, its complete segments are kept, and the next window starts at the last complete
timestamp, so a sentence the model did not finish is decoded again from its start. Each window
is conditioned on the text before it (<|startofprev|>), re-decoded at higher temperatures when it
looks like a loop or is unlikely (temperature fallback), and skipped when the model says it holds
no speech. What still cannot be transcribed (a window that ran to the token limit without one
complete segment, or whose best decoding is still a loop) is reported as a `Gap`, never dropped
silently.

Features are computed per window from the samples, which come from an `AudioStream` when
transcribing a file: memory does not grow with the length of the recording (a 3-hour file would
be 690 MB of float32 samples and a 350 MB spectrogram if either were held whole).
"""

from __future__ import annotations

import logging
import math
import re
import time
import zlib
from dataclasses import dataclass, field, replace

import numpy as np

from edgeq.runtime.audio import AudioStream, quietest_moment
from edgeq.runtime.decoding import (
    TIME_PRECISION,
    DecodeOptions,
    DecodeResult,
    DecodeSettings,
    WindowDecoder,
    fit_window,
)
from edgeq.runtime.features import HOP_LENGTH, N_FRAMES, SAMPLE_RATE, log_mel_spectrogram
from edgeq.runtime.tokenizer import WhisperTokenizer
from edgeq.runtime.vad import SpeechFinder
from edgeq.spec.protocols import Engine, Progress

log = logging.getLogger(__name__)

FRAMES_PER_TOKEN = 2  # the encoder halves the 3000 mel frames into 1500 positions of 0.02 s
# A segment is decoded again alone when its span is this much longer than its text needs at the
# recording's speech rate. Measured on 20 min of joined speech-dev (244 segments): the 8 segments
# that had lost words had 1.2-6.2 s unexplained, normal ones up to 2.6 s.
RECHECK_EXCESS_S = 1.5
# A span between two segments is decoded alone when its RMS is at least this share of the 2 s of
# audio either side: a pause between sentences is 20 dB or more quieter; another speaker recorded
# at a lower level is not (LibriSpeech spliced between TTS sentences: 0.28-0.38 of them).
HOLE_MIN_LOUDNESS = 0.2
RECHECK_MIN_GAIN_CHARS = 10  # about two words more, or the first decoding stays
# A recheck's text is refused when a segment holds this many times the recording's characters
# per second (plus 0.5 s of timestamp slack), or repeats a phrase of this many words.
MAX_RATE_FACTOR = 2.5
MIN_REPEATED_WORDS = 3
RECHECK_MAX_DEPTH = 1  # a segment of a rechecked span is looked at once more, not again and again
# A fitted encoder window whose first decode compresses better than this (a loop) is decoded again
# on the full window; openai-whisper's fallback threshold.
FIT_MAX_COMPRESSION_RATIO = 2.4
# A window decoded with the previous text as prompt at a mean log-probability below this (or above
# temperature 0) is decoded again without it, and the likelier of the two kept. Whisper-base's
# windows read -0.1 to -0.3 on speech-dev; openai-whisper's fallback acts only below -1. Was -0.5:
# on a 5 min join (benchmarks/longform_wer.py, recording 4, int8 with AVX2 kernels) a prompted
# window at -0.44 skipped an 11 s sentence and the next window repeated its end (WER 7.51 %;
# decoded alone, 4.06 %), while the other 429 windows of those six joins (fp32, int8, 4-bit decoder;
# AMX and AVX2 kernels) read -0.07 to -0.31, short last windows to -0.51. Pooled default-decoding
# WER at -0.4: int8 4.20 -> 3.63 % with AVX2 kernels, every other bundle and kind of kernels the same.
PROMPT_DOUBT_LOGPROB = -0.4
GAP_EXCESS_S = 4.0  # still unexplained after the recheck: reported as a Gap
DEFAULT_CHARS_PER_S = 15.0  # English read speech, until the recording has its own median
DIGITAL_SILENCE = 1e-4  # peak amplitude (-80 dBFS) of a window that holds no sound at all
VAD_PAD_S = 0.4
# What is left after the last complete segment, when shorter than this and quieter than the speech
# before it (HOLE_MIN_LOUDNESS), is the recording's trailing silence, not a window: decoded alone it
# read "Thank you.", "A little bit more." and "in the" on three of the 24 speech-dev clips (quanto
# int8; 0.01-0.46 s left, at 0.02-0.14 of the loudness before). whisper.cpp stops with under 1 s left.
TAIL_MAX_S = 1.0
VAD_MIN_SILENCE_S = 2.0


@dataclass
class Timings:
    features_s: float = 0.0
    encoder_s: float = 0.0
    decode_s: float = 0.0
    total_s: float = 0.0
    tokens: int = 0  # generated tokens kept in the transcript (timestamps included)
    decoder_steps: int = 0
    refits: int = 0  # windows encoded again in full after a fitted window decoded badly
    unprompted: int = 0  # windows whose decoding without the previous text was kept (PROMPT_DOUBT_LOGPROB)

    @property
    def per_token_s(self) -> float:
        return self.decode_s / self.decoder_steps if self.decoder_steps else 0.0


@dataclass
class Segment:
    start: float  # seconds from the start of the audio
    end: float
    text: str
    tokens: list[int]
    avg_logprob: float
    no_speech_prob: float | None
    compression_ratio: float
    temperature: float


@dataclass
class Gap:
    """A span of the audio whose words are not (reliably) in the transcript, and why."""

    start: float
    end: float
    reason: str


@dataclass
class LongformResult:
    segments: list[Segment]
    tokens: list[int]
    language: str | None
    language_prob: float | None  # None when the language was given
    gaps: list[Gap]
    windows: int  # windows decoded (a window re-decoded at a higher temperature counts once)
    decodes: int  # decodings, temperature fallbacks included
    skipped_silence: int  # windows skipped as no speech
    vad_skipped_s: float  # seconds jumped over as silence by voice activity detection
    rechecks: int  # segments decoded again alone (RECHECK_EXCESS_S)
    timings: Timings = field(default_factory=Timings)


def _chars_per_second(segments: list[Segment]) -> float:
    rates = [len(s.text) / (s.end - s.start) for s in segments[-200:] if s.end - s.start >= 1.0]
    return float(np.median(rates)) if len(rates) >= 8 else DEFAULT_CHARS_PER_S


def _holds_sound(window: _Window, a: int, b: int) -> bool:
    """Whether samples a:b hold sound rather than a pause: their RMS against the 2 s either side
    that the window has (HOLE_MIN_LOUDNESS)."""
    pad = 2 * SAMPLE_RATE
    around = np.concatenate([window.span(a - pad, a), window.span(b, b + pad)])
    inside = window.span(a, b)
    if not len(around) or not len(inside):
        return False
    return bool(np.sqrt(np.mean(inside**2)) >= HOLE_MIN_LOUDNESS * np.sqrt(np.mean(around**2)))


def _trailing_silence(previous: _Window | None, a: int, b: int) -> bool:
    """Whether samples a:b, the end of the recording left after the window before, are quieter
    than that window's last 2 s of speech (HOLE_MIN_LOUDNESS): a pause, not words."""
    if previous is None or not previous.start < a <= previous.start + len(previous.samples):
        return False  # nothing heard just before (the first window, or one VAD jumped to)
    return not _holds_sound(previous, a, b)


def _made_up(found: list[Segment], rate: float) -> bool:
    """Text a decoding alone invented rather than heard: a phrase said twice in a row ("they were
    not able to do so, they were not able to do so"), or more characters than the span could hold
    (90 in 0.5 s). Decoding a span again alone is asked for more words; without this, a
    hallucination is the easiest way to give them (20 min of joined speech-dev, seed 1: 32 words
    inserted by rechecks that only read longer)."""
    for seg in found:
        if len(seg.text) > MAX_RATE_FACTOR * rate * (seg.end - seg.start + 0.5):
            return True
    words = re.findall(r"[\w']+", " ".join(seg.text for seg in found).lower())
    return any(words[i:i + n] == words[i + n:i + 2 * n]
               for n in range(MIN_REPEATED_WORDS, len(words) // 2 + 1) for i in range(len(words) - 2 * n + 1))


@dataclass(frozen=True)
class _Window:
    """The samples of the window being decoded, at absolute sample index `start`: what rechecks
    read (an AudioStream reads forward only, and a window's spans all lie inside it)."""

    samples: np.ndarray
    start: int

    def clamp(self, a: int, b: int) -> tuple[int, int]:
        """Samples a:b cut to the window's audio (a timestamp can fall in the padding after it)."""
        return max(a, self.start), min(b, self.start + len(self.samples))

    def span(self, a: int, b: int) -> np.ndarray:
        a, b = self.clamp(a, b)
        return self.samples[a - self.start:max(a, b) - self.start]


def compression_ratio(text: str) -> float:
    """How much better than 1:1 the text gzip-compresses: a loop ("the the the ...") is > 2.4."""
    data = text.encode("utf-8")
    return len(data) / len(zlib.compress(data)) if data else 0.0


def split_segments(tokens: list[int], ts_begin: int | None, offset: float,
                   duration: float) -> tuple[list[tuple[float, float, list[int]]], float | None]:
    """A window's tokens as (start, end, tokens) segments, and the seconds of it they finish:
    up to the last complete timestamp pair, or None when the whole window is done (it ended with a
    single timestamp, has no pair, or was decoded without timestamps): openai-whisper's rule."""
    is_ts = [ts_begin is not None and t >= ts_begin for t in tokens]
    single_ending = is_ts[-2:] == [False, True]
    pairs = [i + 1 for i in range(len(tokens) - 1) if is_ts[i] and is_ts[i + 1]]
    if not pairs:
        stamps = [t for t, ts in zip(tokens, is_ts) if ts]
        end = duration
        if stamps and stamps[-1] != ts_begin:
            end = (stamps[-1] - ts_begin) * TIME_PRECISION
        return [(offset, offset + end, tokens)], None
    pieces, last = [], 0
    for cut in pairs + ([len(tokens)] if single_ending else []):
        piece = tokens[last:cut]
        pieces.append((offset + (piece[0] - ts_begin) * TIME_PRECISION, offset + (piece[-1] - ts_begin) * TIME_PRECISION,
                       piece))
        last = cut
    if single_ending:  # nothing after the last timestamp: the window is done
        return pieces, None
    return pieces, (tokens[last - 1] - ts_begin) * TIME_PRECISION  # decode the unfinished one again


class LongformTranscriber:
    """The seek loop over one recording, for one engine, tokenizer and set of options."""

    def __init__(self, engine: Engine, tokenizer: WhisperTokenizer, settings: DecodeSettings,
                 options: DecodeOptions, n_mels: int = 80):
        self.engine = engine
        self.tokenizer = tokenizer
        self.settings = settings
        self.options = options
        self.n_mels = n_mels

    def run(self, samples: np.ndarray | AudioStream, progress: Progress | None = None) -> LongformResult:
        """Transcribe `samples` (mono 16 kHz): an array, or a stream read forward window by window."""
        options = self.options
        if len(samples) > N_FRAMES * HOP_LENGTH and not options.timestamps:
            # Long audio is always sought by timestamps: fixed windows lose words at their edges.
            options = replace(options, timestamps=True)
        decoder = WindowDecoder(self.settings, options)
        rng = np.random.default_rng(options.seed)
        timings = Timings()
        content_frames = math.ceil(len(samples) / HOP_LENGTH)
        total_s = len(samples) / SAMPLE_RATE
        ts_begin = self.settings.timestamp_begin
        seek, prompt_since = 0, 0
        all_tokens: list[int] = []
        segments: list[Segment] = []
        gaps: list[Gap] = []
        language, language_prob = self.settings.language, None
        windows = decodes = skipped = rechecks = 0
        vad_skipped = 0.0
        finder = SpeechFinder() if options.vad else None
        last_window: _Window | None = None  # its audio precedes what a window leaves of the recording
        while seek < content_frames:
            if progress:
                progress("transcribing", int(seek * HOP_LENGTH / SAMPLE_RATE), int(total_s))
            if finder is not None:
                while seek < content_frames and (jump := self._silence_ahead(finder, samples, seek, content_frames)):
                    vad_skipped += jump * HOP_LENGTH / SAMPLE_RATE
                    seek += jump
                if seek >= content_frames:
                    break
            offset = seek * HOP_LENGTH / SAMPLE_RATE
            size = min(N_FRAMES, content_frames - seek)
            duration = size * HOP_LENGTH / SAMPLE_RATE
            t0 = time.perf_counter()
            seek_start = seek * HOP_LENGTH
            chunk = samples[seek_start : (seek + size) * HOP_LENGTH]
            if options.recheck_sparse_segments and duration < TAIL_MAX_S \
                    and _trailing_silence(last_window, seek_start, seek_start + len(chunk)):
                log.debug("the last %.2f s after %.2f s are trailing silence: done", duration, offset)
                break
            here = last_window = _Window(chunk, seek_start)  # what the checks below read
            if float(np.max(np.abs(chunk))) < DIGITAL_SILENCE:
                # Whisper reads digital silence as "you you you" with confidence (whisper-base: avg
                # log-prob above -1, so the no-speech rule keeps it): nothing to decode here.
                skipped += 1
                seek += size
                continue
            full = log_mel_spectrogram(chunk, self.n_mels)
            features = self._fitted(full, size, options)
            t1 = time.perf_counter()
            encoder_state = self.engine.encode(features)
            timings.features_s += t1 - t0
            timings.encoder_s += time.perf_counter() - t1
            if self.settings.multilingual and language is None:
                language, language_prob = decoder.detect_language(self.engine, encoder_state)
                timings.decoder_steps += 1
            windows += 1
            fitted = None
            if features is not full:
                fitted = self._decode_fitted(decoder, encoder_state, language, all_tokens[prompt_since:], rng,
                                             timings)
                decodes += 1
            if fitted is not None:
                result, ratio = fitted
            else:
                if features is not full:
                    # A short encoder window can send Whisper into a loop where the full one does
                    # not (speech-dev clips under 3 s, with a 1 s margin): decode it as trained.
                    log.debug("window %.2f s: fitted encoder window gave a broken decode; full window", offset)
                    timings.refits += 1
                    t1 = time.perf_counter()
                    encoder_state = None  # not held while the next window encodes (see below)
                    encoder_state = self.engine.encode(full)
                    timings.encoder_s += time.perf_counter() - t1
                result, ratio, tries = self._decode_with_fallback(
                    decoder, encoder_state, language, all_tokens[prompt_since:], rng, timings)
                decodes += tries
            previous = all_tokens[prompt_since:]
            if previous and options.recheck_sparse_segments and (
                    result.temperature > 0 or result.avg_logprob < PROMPT_DOUBT_LOGPROB):
                # The previous text can lead the model astray: on a 20 min join (seed 2) a window
                # prompted with it jumped 20 s ahead and looped (avg log-prob -0.61, 29 words
                # wrong); the same window alone read every word at -0.21. Both at their lowest
                # temperature, the one the model finds more likely is kept.
                alone, alone_ratio, tries = self._decode_with_fallback(decoder, encoder_state, language, [], rng,
                                                                       timings)
                decodes += tries
                if (alone.temperature, -alone.avg_logprob) < (result.temperature, -result.avg_logprob):
                    log.debug("window %.2f s: decoded better without the previous text (%.2f vs %.2f)", offset,
                              alone.avg_logprob, result.avg_logprob)
                    result, ratio = alone, alone_ratio
                    timings.unprompted += 1
            # The window's encoder output (the cross-attention keys/values: 110 MB in float32 for a
            # full window of whisper-small) is not read after this point. Held until the next
            # encode returned, it was resident beside the next window's: whisper-small shape (fused
            # encoder attention), four full windows, peak 720 -> 591 MB.
            encoder_state = None
            log.debug("window %.2f-%.2f s: T=%.1f no_speech=%s avg_logprob=%.2f ratio=%.2f tokens=%d truncated=%s",
                      offset, offset + duration, result.temperature, result.no_speech_prob, result.avg_logprob,
                      ratio, len(result.tokens), result.truncated)
            if self._is_silence(result, options):
                log.debug("window %.2f-%.2f s skipped as no speech", offset, offset + duration)
                skipped += 1
                seek += size
                continue
            pieces, consumed = split_segments(result.tokens, ts_begin if decoder.timestamps else None, offset, duration)
            checks = decoder.timestamps and options.recheck_sparse_segments
            if consumed is None and checks:
                consumed = self._unheard_tail(pieces, offset, duration, here)
            seek += size if consumed is None else round(consumed / TIME_PRECISION) * FRAMES_PER_TOKEN
            if consumed is None and result.truncated:
                stamps = [t for t in result.tokens if decoder.timestamps and t >= ts_begin]
                covered = offset + ((stamps[-1] - ts_begin) * TIME_PRECISION if stamps else 0.0)
                gaps.append(Gap(round(covered, 2), round(offset + duration, 2),
                                f"the decoder ran to its {len(result.tokens)}-token limit without ending a segment"))
            if options.compression_ratio_threshold is not None and ratio > options.compression_ratio_threshold:
                gaps.append(Gap(round(offset, 2), round(pieces[-1][1], 2),
                                f"repetitive output (compression ratio {ratio:.1f}) at every temperature"))
            for start, end, piece in pieces:
                text = self._text(piece)
                if start == end or not text or start >= offset + duration:
                    # an instantaneous or empty segment, or one that starts in the padding after the
                    # audio (a 10 s clip once had segments to 26.9 s): kept out of the text and the prompt
                    continue
                if start < offset + duration < end:
                    # The last timestamp can fall in the padding after the audio (more often in a
                    # fitted window's 2 s margin): a segment ends where the audio does.
                    end = offset + duration
                found = [Segment(round(start, 2), round(end, 2), text, piece, result.avg_logprob,
                                 result.no_speech_prob, ratio, result.temperature)]
                if checks:
                    rate = _chars_per_second(segments)
                    found, tried = self._recheck(found[0], here, decoder, language, rng, timings, rate, gaps)
                    rechecks += tried
                    if segments:
                        hole, tried = self._fill_hole(segments[-1].end, found[0].start, here, decoder, language,
                                                      rng, timings, rate)
                        found, rechecks = hole + found, rechecks + tried
                segments.extend(found)
                for seg in found:
                    all_tokens.extend(seg.tokens)
            if not options.condition_on_previous_text or result.temperature > 0.5:
                prompt_since = len(all_tokens)  # text decoded at a high temperature is no prompt
        if progress:
            progress("transcribing", int(total_s), int(total_s))
        timings.tokens = len(all_tokens)
        return LongformResult(segments, all_tokens, language, language_prob, gaps, windows, decodes, skipped,
                              round(vad_skipped, 2), rechecks, timings)

    def _fitted(self, features: np.ndarray, content: int, options: DecodeOptions) -> np.ndarray:
        """The first frames of `features` that hold the window's `content` frames of audio plus the
        margin (an even number, the encoder's stride), or all of them."""
        if options.encoder_window != "fit" or not getattr(self.engine, "variable_window", False):
            return features
        return fit_window(features, content)

    @staticmethod
    def _silence_ahead(finder: SpeechFinder, samples, seek: int, content_frames: int) -> int:
        """Frames of silence to jump from `seek`: a whole window without speech, or the silence
        before the first speech when it is long enough to matter (faster-whisper's VAD defaults:
        speech padded by 0.4 s, silences under 2 s kept)."""
        end = min(seek + N_FRAMES, content_frames)
        speech = finder.next_speech(samples, seek * HOP_LENGTH, end * HOP_LENGTH)
        if speech is None:
            return end - seek
        lead = (speech - seek * HOP_LENGTH) / SAMPLE_RATE - VAD_PAD_S
        return int(lead * SAMPLE_RATE) // HOP_LENGTH if lead >= VAD_MIN_SILENCE_S else 0

    def _recheck(self, seg: Segment, window: _Window, decoder: WindowDecoder, language: str | None,
                 rng: np.random.Generator, timings: Timings, rate: float,
                 gaps: list[Gap], depth: int = 0) -> tuple[list[Segment], bool]:
        """Decode again, alone, a segment whose span holds far more time than its text needs.

        In a dense window Whisper can skip a whole sentence inside one long segment (on 20 minutes
        of joined speech-dev clips, base int8: 5.4 s skipped in a 10 s segment of 10 words; 78
        words in runs). Decoded alone, with no other sentence around it, the span gives its
        words back. `rate` is this recording's own speech rate (median characters per second so far).
        When the span alone still reads short (a 2-3 s utterance of another speaker spliced
        between two sentences: whisper-base skips it even alone, greedy or beam 5), its two
        halves, cut at the quietest 100 ms of its middle 60 %, are decoded alone each.
        """
        excess = (seg.end - seg.start) - len(seg.text) / rate
        if excess < RECHECK_EXCESS_S:
            return [seg], False
        a, b = round(seg.start * SAMPLE_RATE), round(seg.end * SAMPLE_RATE)
        found, unreliable = self._decode_alone(window, a, b, decoder, language, rng, timings, rate)
        if found and not unreliable and depth < RECHECK_MAX_DEPTH:
            # Alone, the span's timestamps place the skipped sentence better: one of its shorter
            # segments still reads short ("Mr. Quilter is the" over 6.8 s, after a complete
            # sentence). Look again there, where its halves cut near the skipped words, not at a
            # pause inside a sentence that was never lost.
            found = [f for part in found for f in (
                self._recheck(part, window, decoder, language, rng, timings, rate, [], depth + 1)[0]
                if part.end - part.start < seg.end - seg.start - RECHECK_EXCESS_S else [part])]
        gained = sum(len(f.text) for f in found) - len(seg.text)
        log.debug("recheck %.2f-%.2f s (%.1f s unexplained): %+d characters", seg.start, seg.end, excess, gained)
        if found and not unreliable and gained >= RECHECK_MIN_GAIN_CHARS:
            return found, True
        lo = a + (b - a) // 5
        cut = lo + quietest_moment(window.span(lo, b - (b - a) // 5))
        halves = [self._decode_alone(window, lo, hi, decoder, language, rng, timings, rate)
                  for lo, hi in ((a, cut), (cut, b))]
        split = [f for part, _ in halves for f in part]
        gained = sum(len(f.text) for f in split) - len(seg.text)
        log.debug("recheck %.2f-%.2f s in halves at %.2f s: %+d characters", seg.start, seg.end, cut / SAMPLE_RATE, gained)
        if all(part and not unreliable for part, unreliable in halves) and gained >= RECHECK_MIN_GAIN_CHARS:
            return split, True
        if excess >= GAP_EXCESS_S:
            gaps.append(Gap(seg.start, seg.end, f"{excess:.1f} s of this segment are not explained by its text, "
                                                "and decoding it alone found nothing more: speech may be missing"))
        return [seg], True

    @staticmethod
    def _unheard_tail(pieces: list[tuple[float, float, list[int]]], offset: float, duration: float,
                      window: _Window) -> float | None:
        """Seconds of a window declared done to seek by, when its last segment ends seconds before
        its audio and what follows holds sound: the next window starts there instead of after it.

        Whisper's rule moves to the window's end when its text ends with a single timestamp; in a
        dense window the model can end early (20 min of joined speech-dev, seed 1: the last segment
        ended at 814.8 s and the next window began at 825 s: 35 words never decoded). None: the
        window is done as Whisper says.
        """
        last = pieces[-1][1] if pieces else offset
        end = offset + duration
        if last <= offset or end - last < RECHECK_EXCESS_S:
            return None
        if not _holds_sound(window, round(last * SAMPLE_RATE), round(end * SAMPLE_RATE)):
            return None
        log.debug("window %.2f-%.2f s ended at %.2f s before its audio did: seeking there", offset, end, last)
        return last - offset

    def _fill_hole(self, start_s: float, end_s: float, window: _Window, decoder: WindowDecoder, language: str | None,
                   rng: np.random.Generator, timings: Timings, rate: float) -> tuple[list[Segment], bool]:
        """Decode alone a span no segment covers, between two segments, when it holds sound.

        Whisper's timestamps can step over a sentence (20 minutes of joined speech-dev, seed 1:
        5.8 s of speech between two segments, 17 words). A pause is quieter than the speech
        around it; a span as loud as its neighbours is decoded alone and kept when it reads as
        words at temperature 0.
        """
        if end_s - start_s < RECHECK_EXCESS_S:
            return [], False
        a, b = window.clamp(round(start_s * SAMPLE_RATE), round(end_s * SAMPLE_RATE))
        if b - a < RECHECK_EXCESS_S * SAMPLE_RATE:
            return [], False
        if not _holds_sound(window, a, b):
            return [], False
        found, unreliable = self._decode_alone(window, a, b, decoder, language, rng, timings, rate)
        chars = sum(len(f.text) for f in found)
        log.debug("hole %.2f-%.2f s decoded alone: %d characters", start_s, end_s, chars)
        if unreliable or chars < RECHECK_MIN_GAIN_CHARS:
            return [], True
        return found, True

    def _decode_alone(self, window: _Window, a: int, b: int, decoder: WindowDecoder, language: str | None,
                      rng: np.random.Generator, timings: Timings, rate: float) -> tuple[list[Segment], bool]:
        """Samples a:b decoded as a window of their own, greedily with no previous text: their
        segments, and whether these are unreliable (repetitive, unlikely, or made up at the
        recording's speech `rate`): never kept.

        Only temperature 0 is tried: sampled text is a guess, not words found (a half decoded at
        T=1.0 once read "Printing." eight times). What is judged is the text inside a:b: the model
        often goes on in the fitted window's margin after the audio (a loop there, dropped anyway,
        had sent a perfect 10 s decoding of 35 words to the fallback and out).
        """
        a, b = window.clamp(a, b)
        t0 = time.perf_counter()
        features = self._fitted(log_mel_spectrogram(window.span(a, b), self.n_mels), math.ceil((b - a) / HOP_LENGTH),
                                decoder.options)
        t1 = time.perf_counter()
        encoder_state = self.engine.encode(features)
        timings.features_s += t1 - t0
        timings.encoder_s += time.perf_counter() - t1
        result = decoder.decode_window(self.engine, encoder_state, language, [], 0.0, rng)
        timings.decode_s += result.decode_s
        timings.decoder_steps += result.steps
        start_s, end_s = a / SAMPLE_RATE, b / SAMPLE_RATE
        pieces, _ = split_segments(result.tokens, self.settings.timestamp_begin, start_s, end_s - start_s)
        kept = []
        for start, end, piece in pieces:
            text = self._text(piece)
            end = min(end, end_s)  # a timestamp in the fitted window's margin
            if text and end > start:
                kept.append((start, end, text, piece))
        ratio = compression_ratio(" ".join(text for _, _, text, _ in kept))
        found = [Segment(round(start, 2), round(end, 2), text, piece, result.avg_logprob, result.no_speech_prob, ratio,
                         0.0) for start, end, text, piece in kept]
        o = decoder.options
        unreliable = (o.compression_ratio_threshold is not None and ratio > o.compression_ratio_threshold) \
            or (o.logprob_threshold is not None and result.avg_logprob < o.logprob_threshold) or _made_up(found, rate)
        return found, unreliable

    def _decode_fitted(self, decoder: WindowDecoder, encoder_state, language: str | None, previous: list[int],
                       rng: np.random.Generator, timings: Timings) -> tuple[DecodeResult, float] | None:
        """One decode of a fitted window at the first temperature; None when it looks broken:
        in a loop (cut short there: decoding.in_a_loop), at the token limit, repetitive, or (with
        fallback on) past the compression-ratio threshold or unlikely and not silence. Its remedy
        is the full window, as Whisper was trained, not higher temperatures on the short one: a
        looping fitted window used to cost its whole decode at every temperature (5 samples each)
        before the full window was tried.
        whisper-small shape, random weights (every fitted decode loops from its third token), two
        clips: 896 -> 525 decoder steps, 20.4 -> 14.3 s (the same output)."""
        o = decoder.options
        want_no_speech = o.no_speech_threshold is not None
        result = decoder.decode_window(self.engine, encoder_state, language, previous, o.temperatures[0], rng,
                                       want_no_speech, stop_in_a_loop=True)
        timings.decode_s += result.decode_s
        timings.decoder_steps += result.steps
        ratio = compression_ratio(self._text(result.tokens))
        # With fallback on, the thresholds that would send a full window to a higher temperature
        # send a fitted one to the full window.
        repetitive = ratio > FIT_MAX_COMPRESSION_RATIO or (
            o.fallback and o.compression_ratio_threshold is not None and ratio > o.compression_ratio_threshold)
        unlikely = o.fallback and o.logprob_threshold is not None and result.avg_logprob < o.logprob_threshold
        silent = unlikely and result.no_speech_prob is not None and o.no_speech_threshold is not None \
            and result.no_speech_prob > o.no_speech_threshold
        if result.truncated or repetitive or (unlikely and not silent):
            return None
        return result, ratio

    def _decode_with_fallback(self, decoder: WindowDecoder, encoder_state, language: str | None,
                              previous: list[int], rng: np.random.Generator,
                              timings: Timings) -> tuple[DecodeResult, float, int]:
        """openai-whisper's decode_with_fallback: raise the temperature until the window passes.

        When no temperature passes, faster-whisper's choice rather than openai-whisper's last
        (most random) sample: the likeliest decoding that is not a loop, else the likeliest. On a
        10 s clip whose last 0.44 s were left for a window of their own (quanto int8), the T=1.0
        sample kept there read "maybe others, maybe others. Let's, you know, ..." (18 words)."""
        o = decoder.options
        want_no_speech = o.no_speech_threshold is not None
        result, ratio, tries = None, 0.0, 0
        failed: list[tuple[DecodeResult, float, bool]] = []
        for temperature in o.temperatures:
            result = decoder.decode_window(self.engine, encoder_state, language, previous, temperature, rng,
                                           want_no_speech)
            tries += 1
            timings.decode_s += result.decode_s
            timings.decoder_steps += result.steps
            ratio = compression_ratio(self._text(result.tokens))
            too_repetitive = o.compression_ratio_threshold is not None and ratio > o.compression_ratio_threshold
            unlikely = o.logprob_threshold is not None and result.avg_logprob < o.logprob_threshold
            # A likely-silent window is not re-decoded: the seek loop skips it (openai-whisper's rule).
            silent = unlikely and result.no_speech_prob is not None and o.no_speech_threshold is not None \
                and result.no_speech_prob > o.no_speech_threshold
            if (too_repetitive or unlikely) and not silent:
                failed.append((result, ratio, too_repetitive))
                continue
            break
        else:
            result, ratio, _ = max([f for f in failed if not f[2]] or failed, key=lambda f: f[0].avg_logprob)
        return result, ratio, tries

    def _text(self, tokens: list[int]) -> str:
        # A tokenizer.json may not flag <|0.00|>... as special (whisper-base's does not), so
        # skip_special_tokens would keep them in the text: leave them out by id.
        ts = self.settings.timestamp_begin
        return self.tokenizer.decode([t for t in tokens if ts is None or t < ts])

    @staticmethod
    def _is_silence(result: DecodeResult, o: DecodeOptions) -> bool:
        """No speech: <|nospeech|> is likely and (when that threshold is set) the text is not."""
        if o.no_speech_threshold is None or result.no_speech_prob is None:
            return False
        if result.no_speech_prob <= o.no_speech_threshold:
            return False
        return o.logprob_threshold is None or result.avg_logprob <= o.logprob_threshold
