"""Calibration audio for static schemes: real utterances turned into features, and a runner."""

from __future__ import annotations

import numpy as np

from edgeq.backends.base import Calibration
from edgeq.data.datasets import open_dataset
from edgeq.runtime.audio import load_audio, split_long_audio
from edgeq.runtime.decoding import STUDY_OPTIONS, DecodeSettings, WindowDecoder
from edgeq.runtime.features import log_mel_spectrogram


def prepare_calibration(spec: str, samples: int, settings: DecodeSettings, n_mels: int,
                        progress=None, reference_model=None) -> Calibration:
    """Features of `samples` utterances of `spec`, and a runner that shows them to a model.

    With `reference_model` (the float model, before quantization) each utterance is transcribed
    once up front and calibration replays that transcript in one teacher-forced decoder pass.
    Decoding greedily with the model under calibration instead lets half-calibrated scales steer
    it into loops that run to the token limit (quanto static on whisper-base: minutes per
    utterance) and calibrates on tokens the float model would never produce.
    """
    dataset = open_dataset(spec, limit=samples)
    features: list[np.ndarray] = []
    for i, utt in enumerate(dataset.utterances):
        if progress:
            progress("reading calibration audio", i, len(dataset))
        features.append(log_mel_spectrogram(split_long_audio(load_audio(utt.audio))[0], n_mels))
    decoder = WindowDecoder(settings, STUDY_OPTIONS)
    transcripts: list[list[int]] = []
    if reference_model is not None:
        from edgeq.torch_runtime import TorchEngine

        reference = TorchEngine(reference_model)
        for i, f in enumerate(features):
            if progress:
                progress("transcribing calibration audio", i, len(features))
            r = decoder.decode(reference, f)
            transcripts.append([*settings.prompt(r.language), *r.tokens, settings.eot])

    def run(model) -> None:
        from edgeq.torch_runtime import TorchEngine

        engine = TorchEngine(model)
        for i, f in enumerate(features):
            if progress:
                progress("calibrating", i, len(features))
            if transcripts:
                engine.step(engine.start(engine.encode(f)), transcripts[i])
            else:
                decoder.decode(engine, f)

    return Calibration(features, run)
