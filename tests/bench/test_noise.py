"""Noise mixing for `edgeq bench --noise`: the SNR asked for is the SNR produced, the same noise every
run for an utterance, different noise for different utterances; sources white, babble, file, folder."""

from __future__ import annotations

import numpy as np
import pytest
from helpers import tone

from edgeq.bench.noise import NoiseMixer, check_noise_source
from edgeq.errors import EdgeqError


def _snr(clean: np.ndarray, mixed: np.ndarray) -> float:
    noise = mixed.astype(np.float64) - clean
    return 10 * np.log10(np.mean(clean.astype(np.float64) ** 2) / np.mean(noise**2))


@pytest.fixture(scope="module")
def sources(tmp_path_factory):
    import soundfile as sf

    d = tmp_path_factory.mktemp("noise")
    (d / "hum").mkdir()
    sf.write(d / "hum" / "a.wav", tone(0.3, freq=60), 16000)  # shorter than the speech: looped
    sf.write(d / "hum" / "b.flac", tone(2.0, freq=90), 16000)
    talkers = []
    for i in range(4):
        sf.write(d / f"t{i}.wav", tone(1.0 + i * 0.2, freq=150 + 70 * i), 16000)
        talkers.append(d / f"t{i}.wav")
    return {"file": str(d / "hum" / "a.wav"), "folder": str(d / "hum"), "talkers": talkers}


@pytest.mark.parametrize("kind", ["white", "file", "folder", "babble"])
@pytest.mark.parametrize("snr", [0.0, 10.0, 20.0])
def test_mixed_at_the_snr_asked(sources, kind, snr):
    source = sources.get(kind, kind)
    mixer = NoiseMixer(snr, source, others=sources["talkers"])
    speech = tone(1.5, freq=300)
    mixed = mixer.mix(speech, "utt-1", sources["talkers"][0])
    assert mixed.dtype == np.float32 and mixed.shape == speech.shape
    assert _snr(speech, mixed) == pytest.approx(snr, abs=0.01)


def test_same_utterance_same_noise_other_utterance_other_noise():
    speech = tone(1.0)
    a = NoiseMixer(5.0).mix(speech, "u1")
    assert np.array_equal(a, NoiseMixer(5.0).mix(speech, "u1"))  # a resumed run hears the same audio
    assert not np.allclose(a, NoiseMixer(5.0).mix(speech, "u2"))
    assert not np.allclose(a, NoiseMixer(5.0, seed=1).mix(speech, "u1"))


def test_babble_never_uses_the_utterance_itself(sources):
    # Two talkers, tones at 150 Hz (the utterance) and 220 Hz: the babble must be the other one.
    talkers = sources["talkers"][:2]
    noise = NoiseMixer(0.0, "babble", others=talkers).noise(32000, "x", own=talkers[0])
    spectrum = np.abs(np.fft.rfft(noise))
    assert np.argmax(spectrum) * 16000 / noise.size == pytest.approx(220, abs=2)


def test_silence_stays_silent():
    silence = np.zeros(16000, dtype=np.float32)
    assert np.array_equal(NoiseMixer(10.0).mix(silence, "s"), silence)


@pytest.mark.parametrize("bad", ["/no/such/noise.wav", "pink"])
def test_bad_source_is_one_line(bad):
    with pytest.raises(EdgeqError, match="--noise-source") as err:
        check_noise_source(bad)
    assert "\n" not in str(err.value)


def test_babble_needs_two_utterances(sources):
    with pytest.raises(EdgeqError, match="at least 2"):
        NoiseMixer(10.0, "babble", others=sources["talkers"][:1])


def test_bench_rejects_a_bad_noise_source_in_one_line(tmp_path):
    import soundfile as sf
    from helpers import assert_one_line_error, edgeq

    sf.write(tmp_path / "a.wav", tone(1.0), 16000)
    proc = edgeq("bench", tmp_path / "no-bundle", "-d", tmp_path, "--noise", "10", "--noise-source", "/no/noise",
                 "-o", tmp_path / "out")
    assert_one_line_error(proc, r"--noise-source /no/noise: not white, babble, or an audio file or folder")
