"""Long recordings made of short ones: utterances joined end to end, with their joined reference.

LibriSpeech has no long files with references; joining its utterances (in a seeded order,
repeated until a target length) gives real speech of any length whose every word is known, which
is what measuring long-form transcription needs: words lost or doubled at window edges show up
as runs of deletions or insertions against the joined reference.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from edgeq.data.datasets import Dataset, Utterance
from edgeq.errors import DatasetError
from edgeq.runtime.audio import SAMPLE_RATE, load_audio


@dataclass(frozen=True)
class JoinedAudio:
    samples: np.ndarray  # mono float32 at 16 kHz
    reference: str
    parts: tuple[Utterance, ...]  # in the order joined

    @property
    def seconds(self) -> float:
        return len(self.samples) / SAMPLE_RATE


def join_utterances(dataset: Dataset, min_seconds: float = 0.0, pause_s: float = 0.0, pause_noise: float = 0.0,
                    seed: int = 0) -> JoinedAudio:
    """All utterances of `dataset` once, then again in new seeded orders until `min_seconds`,
    with `pause_s` of silence between them (Gaussian noise of deviation `pause_noise`: a room)."""
    utts = [u for u in dataset.utterances if u.reference]
    if not utts:
        raise DatasetError(f"{dataset.spec}: no utterance has a reference to join")
    audio = {u.id: load_audio(u.audio) for u in utts}
    rng = np.random.default_rng(seed)
    order: list[Utterance] = list(utts)
    seconds = sum(len(audio[u.id]) for u in order) / SAMPLE_RATE
    while seconds < min_seconds:
        for i in rng.permutation(len(utts)):
            order.append(utts[i])
            seconds += len(audio[utts[i].id]) / SAMPLE_RATE
            if seconds >= min_seconds:
                break
    pieces = []
    for u in order:
        pause = (pause_noise * rng.standard_normal(int(pause_s * SAMPLE_RATE))).astype(np.float32)
        pieces += [audio[u.id], pause]
    samples = np.concatenate(pieces[:-1]) if pieces else np.zeros(0, np.float32)
    return JoinedAudio(samples, " ".join(u.reference for u in order), tuple(order))
