from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).parent))

from helpers import SPEECH_DEV, WHISPER_BASE, real_data_available, tone  # noqa: E402


@pytest.fixture(autouse=True, scope="session")
def _own_cache(tmp_path_factory):
    """Caches edgeq keeps under ~/.cache/edgeq (sensitivity scans) go to the test session's folder."""
    mp = pytest.MonkeyPatch()
    mp.setenv("EDGEQ_CACHE", str(tmp_path_factory.mktemp("edgeq-cache")))
    yield
    mp.undo()


def pytest_collection_modifyitems(config, items):
    if real_data_available():
        return
    skip = pytest.mark.skip(
        reason=f"real tier needs {WHISPER_BASE} and {SPEECH_DEV} (set EDGEQ_SHARED to their parent folder)"
    )
    for item in items:
        if "real" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> Path:
    from tiny import make_tiny_whisper

    return make_tiny_whisper(tmp_path_factory.mktemp("tiny-whisper"))


@pytest.fixture(scope="session")
def audio_dir(tmp_path_factory) -> Path:
    """Generated audio: 16 kHz mono wav, 44.1 kHz stereo flac, 8 kHz ogg, mp3, silence, 65 s."""
    import soundfile as sf

    d = tmp_path_factory.mktemp("audio")
    sf.write(d / "a_16k.wav", tone(2.0), 16000)
    sf.write(d / "b_44k_stereo.flac", tone(2.0, 44100, 300, channels=2), 44100)
    sf.write(d / "c_8k.ogg", tone(1.5, 8000, 200), 8000)
    sf.write(d / "d.mp3", tone(1.5, 16000, 500), 16000, format="MP3")
    sf.write(d / "e_silence.wav", np.zeros(16000, dtype=np.float32), 16000)
    return d


@pytest.fixture(scope="session")
def calibration_dir(tmp_path_factory) -> Path:
    import soundfile as sf

    d = tmp_path_factory.mktemp("calib")
    for i in range(3):
        sf.write(d / f"c{i}.wav", tone(1.0 + i, freq=200 + 150 * i), 16000)
    return d
