"""Loading a bundle and transcribing audio with it: `edgeq.load(path).transcribe(audio)`."""

from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from edgeq.errors import BundleError, DeviceError, EdgeqError
from edgeq.format import configs
from edgeq.format.bundle import CONFIG, DECODE_TABLE, GENERATION_CONFIG, TOKENIZER, Bundle, open_bundle
from edgeq.runtime import heap
from edgeq.runtime.audio import SAMPLE_RATE, AudioStream, to_mono_16k
from edgeq.runtime.decoding import DecodeOptions, DecodeSettings
from edgeq.runtime.longform import Gap, LongformTranscriber, Segment, Timings
from edgeq.runtime.tokenizer import WhisperTokenizer
from edgeq.spec.catalogue import backend_spec, load_engine_module
from edgeq.spec.protocols import SPINNING, Engine, Progress, Spinning
from edgeq.util import read_json, usable_cpus

log = logging.getLogger(__name__)


@dataclass
class Transcription:
    text: str
    tokens: list[int]  # every generated token kept, timestamps included
    language: str | None
    audio_s: float
    segments: list[Segment]  # (start, end, text) spans; one [0, audio_s] span without timestamps
    windows: int  # 30 s windows decoded
    truncated: bool  # a window hit the token limit without end-of-text (often a loop)
    timings: Timings = field(default_factory=Timings)
    gaps: list[Gap] = field(default_factory=list)  # spans not (reliably) transcribed, and why
    language_prob: float | None = None  # probability of the detected language (None: it was given)
    options: dict[str, Any] = field(default_factory=dict)  # the DecodeOptions used
    vad_skipped_s: float = 0.0  # seconds jumped over as silence (options.vad)
    rechecks: int = 0  # segments decoded again alone because their text left seconds unexplained

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["timings"]["per_token_s"] = self.timings.per_token_s
        return d


class Transcriber:
    """A loaded bundle: transcribes audio of any length with Whisper's long-form algorithm."""

    def __init__(self, engine: Engine, tokenizer: WhisperTokenizer, settings: DecodeSettings,
                 bundle: Bundle | None = None, n_mels: int = 80, device: str = "cpu"):
        self.engine = engine
        self.tokenizer = tokenizer
        self.settings = settings
        self.bundle = bundle
        self.n_mels = n_mels
        self.device = device

    def transcribe(self, audio: str | Path | np.ndarray, sample_rate: int | None = None,
                   language: str | None = None, options: DecodeOptions | None = None,
                   progress: Progress | None = None) -> Transcription:
        """Transcribe a file path, or an array of samples at `sample_rate` (default 16 kHz).

        `options` default to openai-whisper's transcribe(): timestamps, greedy search, temperature
        fallback, previous-text prompts; `edgeq.runtime.decoding.STUDY_OPTIONS` is the bench's
        greedy decoding without timestamps (audio over 30 s is decoded with timestamps anyway).
        """
        start = time.perf_counter()
        if isinstance(audio, (str, Path)):
            samples = AudioStream(audio)  # read window by window: memory does not grow with length
        else:
            samples = to_mono_16k(audio, sample_rate or SAMPLE_RATE)
        settings = self.settings if language is None else self.settings.with_options(language=language)
        options = options or DecodeOptions()
        result = LongformTranscriber(self.engine, self.tokenizer, settings, options, self.n_mels).run(samples, progress)
        timings = result.timings
        timings.total_s = time.perf_counter() - start
        truncated = any(g.reason.startswith("the decoder ran to its") for g in result.gaps)
        return Transcription(
            text=" ".join(seg.text for seg in result.segments), tokens=result.tokens, language=result.language,
            audio_s=len(samples) / SAMPLE_RATE, segments=result.segments, windows=result.windows,
            truncated=truncated, timings=timings, gaps=result.gaps, language_prob=result.language_prob,
            options=options.to_dict(), vad_skipped_s=result.vad_skipped_s, rechecks=result.rechecks,
        )


def load(path: str | Path, device: str = "cpu", threads: int | None = None,
         language: str | None = None, verify: bool = True, spinning: Spinning = "off") -> Transcriber:
    """Load a bundle (checking its manifest hashes) and return a Transcriber.

    Only the bundle is read: no original checkpoint, no network. An ONNX bundle is run by ONNX
    Runtime and never imports torch. `spinning="decoder"`: the decoder's idle threads spin between
    operators, faster on a CPU nothing else uses and slower on a shared one (docs/performance.md "Threads");
    ONNX bundles only.
    """
    if threads is not None and threads < 1:
        raise EdgeqError(f"threads must be 1 or more, not {threads}")
    if spinning not in SPINNING:
        raise EdgeqError(f"spinning must be one of {', '.join(SPINNING)}, not {spinning!r}")
    usable = usable_cpus()
    if threads is not None and threads > usable:
        # Correct, but slow: more compute threads than CPUs take turns and wait for each other.
        log.warning("%d threads asked for, but this process can run on %d CPUs: expect it to be slower "
                    "than with --threads %d", threads, usable, usable)
        if spinning != "off":
            # A spinning thread would hold a CPU another of these threads is waiting for.
            log.warning("spinning turned off: it needs a CPU for every thread")
            spinning = "off"
    # Hashes are checked before anything is deserialised, but only once per version of each file:
    # unchanged since its last full check, the bundle is not hashed again (edgeq.format.verified).
    bundle = open_bundle(path, verify_hashes=verify, reuse_verification=True)
    # Through bundle.file: only files the manifest lists (and open_bundle verified) are read.
    config = read_json(bundle.file(CONFIG), BundleError)
    generation = read_json(bundle.file(GENERATION_CONFIG), BundleError)
    default_language = bundle.manifest.decoding.language
    settings = DecodeSettings.from_configs(generation, config, language or default_language, where=str(bundle.path))
    device = _check_device(bundle, device)
    backend = backend_spec(bundle.recipe.backend)
    # By name from the catalogue: a torch bundle's engine imports torch, an ONNX one never does.
    engines = load_engine_module(backend, f"bundle {bundle.name}")
    with heap.loading():  # weight staging buffers go back to the kernel: see runtime/heap.py
        engine = engines.load_engine(bundle, device=device, threads=threads, spinning=spinning)
        tokenizer = WhisperTokenizer(bundle.file(DECODE_TABLE if DECODE_TABLE in bundle.manifest.files else TOKENIZER))
    n_mels = configs.parse(configs.ModelConfig, config, f"{bundle.path}/{CONFIG}").num_mel_bins
    return Transcriber(engine, tokenizer, settings, bundle, n_mels, device)


def _check_device(bundle: Bundle, device: str) -> str:
    if device not in ("cpu", "cuda"):
        raise DeviceError(f"unknown device {device!r}; choose cpu or cuda")
    allowed = bundle.recipe.devices
    if device not in allowed:
        raise DeviceError(
            f"bundle {bundle.name} runs on {', '.join(allowed)} only (its recipe says so), not {device}"
        )
    return device

