"""Loading a bundle and transcribing audio with it: `edgeq.load(path).transcribe(audio)`."""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from edgeq.errors import BundleError, DeviceError, EdgeqError
from edgeq.format import configs
from edgeq.format.bundle import CONFIG, GENERATION_CONFIG, TOKENIZER, Bundle, open_bundle
from edgeq.runtime import heap
from edgeq.runtime.audio import SAMPLE_RATE, load_audio, split_long_audio, to_mono_16k
from edgeq.runtime.decoding import DecodeSettings, Engine, GreedyDecoder
from edgeq.runtime.features import log_mel_spectrogram
from edgeq.runtime.tokenizer import WhisperTokenizer
from edgeq.spec.catalogue import backend_spec, load_engine_module
from edgeq.util import read_json


@dataclass
class Timings:
    features_s: float = 0.0
    encoder_s: float = 0.0
    decode_s: float = 0.0
    total_s: float = 0.0
    tokens: int = 0  # generated text tokens
    decoder_steps: int = 0

    @property
    def per_token_s(self) -> float:
        return self.decode_s / self.decoder_steps if self.decoder_steps else 0.0


@dataclass
class Transcription:
    text: str
    tokens: list[int]
    language: str | None
    audio_s: float
    segments: int
    truncated: bool  # a segment hit the token limit without end-of-text (often a loop)
    timings: Timings = field(default_factory=Timings)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["timings"]["per_token_s"] = self.timings.per_token_s
        return d


class Transcriber:
    """A loaded bundle: decodes audio with greedy search, one 30 s window at a time."""

    def __init__(self, engine: Engine, tokenizer: WhisperTokenizer, settings: DecodeSettings,
                 bundle: Bundle | None = None, n_mels: int = 80, device: str = "cpu"):
        self.engine = engine
        self.tokenizer = tokenizer
        self.settings = settings
        self.bundle = bundle
        self.n_mels = n_mels
        self.device = device
        self._decoder = GreedyDecoder(settings)

    def transcribe(self, audio: str | Path | np.ndarray, sample_rate: int | None = None,
                   language: str | None = None) -> Transcription:
        """Transcribe a file path, or an array of samples at `sample_rate` (default 16 kHz)."""
        start = time.perf_counter()
        if isinstance(audio, (str, Path)):
            samples = load_audio(audio)
        else:
            samples = to_mono_16k(audio, sample_rate or SAMPLE_RATE)
        decoder = self._decoder
        if language is not None:
            decoder = GreedyDecoder(self.settings.with_options(language=language))
        timings = Timings()
        tokens: list[int] = []
        texts: list[str] = []
        detected, truncated = None, False
        segments = split_long_audio(samples)
        for segment in segments:
            t0 = time.perf_counter()
            features = log_mel_spectrogram(segment, self.n_mels)
            timings.features_s += time.perf_counter() - t0
            result = decoder.decode(self.engine, features)
            timings.encoder_s += result.encoder_s
            timings.decode_s += result.decode_s
            timings.decoder_steps += result.steps
            tokens.extend(result.tokens)
            texts.append(self.tokenizer.decode(result.tokens))
            detected = detected or result.language
            truncated = truncated or result.truncated
        timings.tokens = len(tokens)
        timings.total_s = time.perf_counter() - start
        text = " ".join(t for t in texts if t)
        return Transcription(text, tokens, detected, len(samples) / SAMPLE_RATE, len(segments), truncated, timings)


def load(path: str | Path, device: str = "cpu", threads: int | None = None,
         language: str | None = None, verify: bool = True) -> Transcriber:
    """Load a bundle (checking its manifest hashes) and return a Transcriber.

    Only the bundle is read: no original checkpoint, no network. An ONNX bundle is run by ONNX
    Runtime and never imports torch.
    """
    if threads is not None and threads < 1:
        raise EdgeqError(f"threads must be 1 or more, not {threads}")
    bundle = open_bundle(path, verify_hashes=verify)
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
        engine = engines.load_engine(bundle, device=device, threads=threads)
        tokenizer = WhisperTokenizer(bundle.file(TOKENIZER))
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

