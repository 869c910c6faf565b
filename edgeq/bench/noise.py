"""Harder conditions without test-other: noise mixed into each utterance at a fixed SNR (numpy only).

The noise for an utterance depends only on (seed, utterance id, source), so two runs, a resumed
run and every recipe of a sweep hear exactly the same noisy audio. Sources:
  * `white`: Gaussian white noise;
  * `babble`: the sum of three other utterances of the same dataset, each at equal loudness
    (a crowd of readers; harder than white at the same SNR because it is speech-shaped);
  * a noise audio file, or a folder of them (one chosen per utterance, at a random offset, looped).
"""

from __future__ import annotations

import zlib
from pathlib import Path

import numpy as np

from edgeq.errors import DatasetError

BABBLE_TALKERS = 3
_AUDIO = (".wav", ".flac", ".mp3", ".ogg", ".opus")


def _noise_files(source: str) -> list[Path]:
    path = Path(source).expanduser()
    if path.is_file():
        return [path]
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.suffix.lower() in _AUDIO)
        if not files:
            raise DatasetError(f"--noise-source {source}: the folder holds no audio files")
        return files
    raise DatasetError(f"--noise-source {source}: not white, babble, or an audio file or folder")


def check_noise_source(source: str) -> None:
    """Fail in one line before a run starts when the noise source is unusable."""
    if source not in ("white", "babble"):
        _noise_files(source)


def _rms(x: np.ndarray) -> float:
    return float(np.sqrt(np.mean(np.square(x, dtype=np.float64)))) if x.size else 0.0


def _fit(noise: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    """`n` samples of `noise` from a random offset, looped when it is shorter."""
    if noise.size == 0:
        return np.zeros(n, dtype=np.float32)
    start = int(rng.integers(noise.size))
    reps = -(-(start + n) // noise.size)
    return np.tile(noise, reps)[start:start + n]


class NoiseMixer:
    def __init__(self, snr_db: float, source: str = "white", seed: int = 0, others: list[Path] | None = None):
        check_noise_source(source)
        self.snr_db, self.source, self.seed = float(snr_db), source, seed
        self._files = [] if source in ("white", "babble") else _noise_files(source)
        self._others = list(others or [])  # babble: the dataset's audio files
        if source == "babble" and len(self._others) < 2:
            raise DatasetError("--noise-source babble needs a dataset of at least 2 utterances")
        self._cache: dict[Path, np.ndarray] = {}

    def _load(self, path: Path) -> np.ndarray:
        from edgeq.runtime.audio import load_audio

        if path not in self._cache:
            self._cache[path] = load_audio(path)
        return self._cache[path]

    def noise(self, n: int, utt_id: str, own: Path | None = None) -> np.ndarray:
        rng = np.random.default_rng([self.seed, zlib.crc32(utt_id.encode())])
        if self.source == "white":
            return rng.standard_normal(n).astype(np.float32)
        if self.source == "babble":
            pool = [p for p in self._others if p != own]
            picks = rng.choice(len(pool), size=min(BABBLE_TALKERS, len(pool)), replace=False)
            total = np.zeros(n, dtype=np.float32)
            for i in picks:
                talker = _fit(self._load(pool[i]), n, rng)
                total += talker / (_rms(talker) or 1.0)
            return total
        return _fit(self._load(self._files[int(rng.integers(len(self._files)))]), n, rng)

    def mix(self, audio: np.ndarray, utt_id: str, own: Path | None = None) -> np.ndarray:
        """`audio` plus noise scaled so that 10*log10(P_speech / P_noise) == snr_db."""
        speech = _rms(audio)
        if speech == 0.0:
            return audio  # silence has no SNR; adding noise would invent a level
        noise = self.noise(audio.size, utt_id, own)
        level = _rms(noise)
        if level == 0.0:
            return audio
        scale = speech / (level * 10 ** (self.snr_db / 20))
        return (audio + scale * noise).astype(np.float32)
