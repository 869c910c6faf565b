"""Reading audio into what Whisper expects: mono float32 at 16 kHz.

libsndfile (through soundfile) reads WAV, FLAC, OGG/Vorbis/Opus and MP3 without ffmpeg, which is
what we want on a Pi; soxr resamples any other rate. Audio longer than Whisper's 30 s window is
split at the quietest moment near each boundary so that no word is cut in half.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from edgeq.errors import AudioError
from edgeq.util import one_line

SAMPLE_RATE = 16000
WINDOW_SECONDS = 30.0


def load_audio(path: str | Path, sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """Decode `path` to mono float32 at `sample_rate`."""
    import soundfile as sf

    path = Path(path)
    if not path.is_file():
        raise AudioError(f"{path}: no such audio file")
    try:
        data, file_rate = sf.read(str(path), dtype="float32", always_2d=True)
    except (sf.LibsndfileError, RuntimeError, TypeError, ValueError) as err:
        raise AudioError(f"{path}: cannot decode audio ({one_line(err)})") from None
    return to_mono_16k(data, file_rate, str(path), sample_rate)


def to_mono_16k(
    data: np.ndarray, rate: int, name: str = "audio", sample_rate: int = SAMPLE_RATE
) -> np.ndarray:
    """Mix down to mono and resample an array of shape [samples] or [samples, channels]."""
    data = np.asarray(data, dtype=np.float32)
    if data.ndim == 2:
        data = data.mean(axis=1)
    if data.ndim != 1:
        raise AudioError(f"{name}: expected [samples] or [samples, channels], got shape {data.shape}")
    if data.size == 0:
        raise AudioError(f"{name}: holds no samples")
    if not np.isfinite(data).all():
        raise AudioError(f"{name}: holds NaN or infinite samples")
    if rate <= 0:
        raise AudioError(f"{name}: invalid sample rate {rate}")
    if rate != sample_rate:
        import soxr

        data = soxr.resample(data, rate, sample_rate, quality="HQ").astype(np.float32)
    return np.ascontiguousarray(data)


def split_long_audio(
    audio: np.ndarray,
    sample_rate: int = SAMPLE_RATE,
    max_seconds: float = WINDOW_SECONDS,
    search_seconds: float = 5.0,
) -> list[np.ndarray]:
    """Cut audio longer than one Whisper window into segments of at most `max_seconds`.

    Each cut goes at the quietest 100 ms (lowest RMS, 20 ms hop) in the last `search_seconds`
    before the window boundary: without timestamps Whisper cannot tell us where a segment ended,
    so cutting in a pause is what keeps words whole.
    """
    window = int(max_seconds * sample_rate)
    if len(audio) <= window:
        return [audio]
    frame, hop = int(0.1 * sample_rate), int(0.02 * sample_rate)
    search = int(search_seconds * sample_rate)
    segments, start = [], 0
    while len(audio) - start > window:
        lo, hi = start + window - search, start + window
        region = audio[lo:hi]
        n = 1 + (len(region) - frame) // hop
        frames = np.lib.stride_tricks.as_strided(
            region, shape=(n, frame), strides=(region.strides[0] * hop, region.strides[0])
        )
        quietest = int(np.argmin(np.sqrt(np.mean(frames * frames, axis=1))))
        cut = lo + quietest * hop + frame // 2
        segments.append(audio[start:cut])
        start = cut
    segments.append(audio[start:])
    return segments
