"""Calibration audio for static schemes: real utterances turned into features, and a runner."""

from __future__ import annotations

import numpy as np

from edgeq.audio import load_audio, split_long_audio
from edgeq.backends.base import Calibration
from edgeq.datasets import open_dataset
from edgeq.decoding import DecodeSettings, GreedyDecoder
from edgeq.features import log_mel_spectrogram


def prepare_calibration(spec: str, samples: int, settings: DecodeSettings, n_mels: int,
                        progress=None) -> Calibration:
    dataset = open_dataset(spec, limit=samples)
    features: list[np.ndarray] = []
    for i, utt in enumerate(dataset.utterances):
        if progress:
            progress("reading calibration audio", i, len(dataset))
        features.append(log_mel_spectrogram(split_long_audio(load_audio(utt.audio))[0], n_mels))
    decoder = GreedyDecoder(settings)

    def run(model) -> None:
        from edgeq.engines.torch_engine import TorchEngine

        engine = TorchEngine(model)
        for i, f in enumerate(features):
            if progress:
                progress("calibrating", i, len(features))
            decoder.decode(engine, f)

    return Calibration(features, run)
