"""What a loaded model says about some audio: greedy tokens and the first step's logits.

Run as a script it loads bundles in a fresh process (nothing shared with the builder):
    python tests/probe.py AUDIO BUNDLE...   -> one JSON object {bundle: probe}
"""

from __future__ import annotations

import json
import sys

import numpy as np


def probe(transcriber, audio_path: str) -> dict:
    from edgeq.runtime.audio import load_audio
    from edgeq.runtime.features import log_mel_spectrogram

    audio = load_audio(audio_path)
    from edgeq.runtime.decoding import STUDY_OPTIONS

    result = transcriber.transcribe(audio, options=STUDY_OPTIONS)  # greedy, no timestamps
    engine, settings = transcriber.engine, transcriber.settings
    features = log_mel_spectrogram(audio, transcriber.n_mels)
    logits, _ = engine.step(engine.start(engine.encode(features)), settings.prompt(settings.language or "en"))
    return {"tokens": result.tokens, "logits": np.asarray(logits, dtype=np.float32).tolist()}


def in_memory(model, source_dir, audio_path: str) -> dict:
    """Probe a torch model that lives in this process (the reference for the round trip)."""
    from pathlib import Path

    from edgeq.runtime.decoding import DecodeSettings
    from edgeq.runtime.tokenizer import WhisperTokenizer
    from edgeq.runtime.transcriber import Transcriber
    from edgeq.torch_runtime import TorchEngine

    source_dir = Path(source_dir)
    settings = DecodeSettings.from_configs(json.loads((source_dir / "generation_config.json").read_text()),
                                           json.loads((source_dir / "config.json").read_text()), "en")
    conv = model.model.encoder.conv1.weight
    transcriber = Transcriber(TorchEngine(model, "cpu", conv.dtype), WhisperTokenizer(source_dir / "tokenizer.json"), settings)
    return probe(transcriber, audio_path)


if __name__ == "__main__":
    import edgeq

    audio, bundles = sys.argv[1], sys.argv[2:]
    out = {b: probe(edgeq.load(b, language="en"), audio) for b in bundles}
    print(json.dumps({"torch_imported": "torch" in sys.modules, "probes": out}))
