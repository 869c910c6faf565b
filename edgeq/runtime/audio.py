"""Reading audio into what Whisper expects: mono float32 at 16 kHz.

libsndfile (through soundfile) reads WAV, FLAC, OGG/Vorbis/Opus and MP3 without ffmpeg, which is
what we want on a Pi; soxr resamples any other rate. A long file is read as an `AudioStream`,
window by window, so a 3-hour recording never sits in memory whole (690 MB as float32).
`split_long_audio` (cuts at the quietest moment near each 30 s boundary) is what edgeq did before
long-form transcription; calibration still takes the first piece of each file with it.
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


class AudioStream:
    """The samples of a file, mono at 16 kHz, read forward on demand: `len(stream)` and
    `stream[a:b]` as for an array, but only from the last window asked for onwards is kept.

    The seek loop of long-form transcription only ever moves forward, so a buffer of one window
    plus one read block is all the memory a recording of any length needs.
    """

    BLOCK_SECONDS = 10

    def __init__(self, path: str | Path, sample_rate: int = SAMPLE_RATE):
        import soundfile as sf

        path = Path(path)
        if not path.is_file():
            raise AudioError(f"{path}: no such audio file")
        try:
            self._file = sf.SoundFile(str(path))
        except (sf.LibsndfileError, RuntimeError, TypeError, ValueError) as err:
            raise AudioError(f"{path}: cannot decode audio ({one_line(err)})") from None
        self.name, self.sample_rate, self._rate = str(path), sample_rate, self._file.samplerate
        if self._file.frames <= 0:
            raise AudioError(f"{path}: holds no samples")
        self._length = int(round(self._file.frames * sample_rate / self._rate))
        self._resampler = None
        if self._rate != sample_rate:
            import soxr

            self._resampler = soxr.ResampleStream(self._rate, sample_rate, 1, dtype="float32", quality="HQ")
        self._buffer = np.zeros(0, dtype=np.float32)
        self._start = 0  # sample index of _buffer[0]
        self._eof = False

    def __len__(self) -> int:
        return self._length

    def __getitem__(self, key: slice) -> np.ndarray:
        start, stop, _ = key.indices(self._length)
        if start < self._start:
            raise ValueError(f"{self.name}: an AudioStream reads forward only ({start} < {self._start})")
        while not self._eof and self._start + len(self._buffer) < stop:
            self._read_block()
        self._buffer = self._buffer[start - self._start :]
        self._start = start
        return self._buffer[: max(stop - start, 0)].copy()

    def _read_block(self) -> None:
        import soundfile as sf

        try:
            data = self._file.read(self._rate * self.BLOCK_SECONDS, dtype="float32", always_2d=True)
        except (sf.LibsndfileError, RuntimeError, ValueError) as err:
            raise AudioError(f"{self.name}: cannot decode audio ({one_line(err)})") from None
        last = len(data) < self._rate * self.BLOCK_SECONDS
        mono = data.mean(axis=1) if data.shape[1] > 1 else data[:, 0]
        if not np.isfinite(mono).all():
            raise AudioError(f"{self.name}: holds NaN or infinite samples")
        if self._resampler is not None:
            mono = self._resampler.resample_chunk(mono, last=last)
        self._buffer = np.concatenate([self._buffer, mono.astype(np.float32, copy=False)])
        if last:
            self._eof = True
            self._file.close()


def quietest_moment(region: np.ndarray, sample_rate: int = SAMPLE_RATE) -> int:
    """The index in `region` at the centre of its quietest 100 ms (lowest RMS, 20 ms hop): where a
    cut keeps words whole. The middle of a region shorter than 100 ms."""
    frame, hop = int(0.1 * sample_rate), int(0.02 * sample_rate)
    region = np.ascontiguousarray(region, dtype=np.float32)
    if len(region) < frame:
        return len(region) // 2
    n = 1 + (len(region) - frame) // hop
    frames = np.lib.stride_tricks.as_strided(region, shape=(n, frame), strides=(region.strides[0] * hop, region.strides[0]))
    return int(np.argmin(np.sqrt(np.mean(frames * frames, axis=1)))) * hop + frame // 2


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
    search = int(search_seconds * sample_rate)
    segments, start = [], 0
    while len(audio) - start > window:
        lo = start + window - search
        cut = lo + quietest_moment(audio[lo:start + window], sample_rate)
        segments.append(audio[start:cut])
        start = cut
    segments.append(audio[start:])
    return segments
