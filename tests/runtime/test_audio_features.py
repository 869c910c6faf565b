from __future__ import annotations

import numpy as np
import pytest
from helpers import tone

from edgeq.errors import AudioError
from edgeq.runtime.audio import load_audio, split_long_audio, to_mono_16k
from edgeq.runtime.features import log_mel_spectrogram


@pytest.mark.parametrize("name,seconds", [("a_16k.wav", 2.0), ("b_44k_stereo.flac", 2.0), ("c_8k.ogg", 1.5), ("d.mp3", 1.5)])
def test_formats_and_rates_become_mono_16k(audio_dir, name, seconds):
    audio = load_audio(audio_dir / name)
    assert audio.dtype == np.float32 and audio.ndim == 1
    assert abs(len(audio) / 16000 - seconds) < 0.1  # mp3 adds encoder padding


def test_missing_empty_and_corrupt_audio(tmp_path):
    with pytest.raises(AudioError, match="no such audio file"):
        load_audio(tmp_path / "nope.wav")
    bad = tmp_path / "bad.wav"
    bad.write_bytes(b"RIFF0000WAVEjunkjunk")
    with pytest.raises(AudioError, match="cannot decode audio"):
        load_audio(bad)
    import soundfile as sf

    sf.write(tmp_path / "empty.wav", np.zeros(0, dtype=np.float32), 16000)
    with pytest.raises(AudioError, match="holds no samples"):
        load_audio(tmp_path / "empty.wav")
    with pytest.raises(AudioError, match="NaN"):
        to_mono_16k(np.array([0.0, np.nan], dtype=np.float32), 16000)


def test_long_audio_is_split_in_the_quiet_and_kept_whole():
    speech = tone(26.0)
    pause = np.zeros(8000, dtype=np.float32)
    audio = np.concatenate([speech, pause, tone(26.0), pause, tone(12.0)])
    parts = split_long_audio(audio)
    assert len(parts) == 3
    assert sum(len(p) for p in parts) == len(audio)
    assert all(len(p) <= 30 * 16000 for p in parts)
    # The first cut lands inside the half-second pause after 26 s.
    assert 26 * 16000 <= len(parts[0]) <= 26 * 16000 + 8000


def test_features_match_transformers(audio_dir):
    transformers = pytest.importorskip("transformers")
    fe = transformers.WhisperFeatureExtractor(feature_size=80)
    for name in ("a_16k.wav", "b_44k_stereo.flac"):
        audio = load_audio(audio_dir / name)
        ours = log_mel_spectrogram(audio)
        ref = fe(audio, sampling_rate=16000, return_tensors="np").input_features[0]
        assert ours.shape == ref.shape == (80, 3000)
        assert np.abs(ours - ref).max() <= 1e-4


@pytest.mark.parametrize("samples", [1, 37 * 160 + 13, 479_799, 479_800, 479_999, 480_000])
def test_features_of_every_length_match_transformers(samples):
    # Only frames that hold audio are transformed: near the window's end the reflection padding
    # brings audio into the last frames too, which must not be taken for silence.
    transformers = pytest.importorskip("transformers")
    fe = transformers.WhisperFeatureExtractor(feature_size=80)
    audio = (0.1 * np.random.default_rng(samples).standard_normal(samples)).astype(np.float32)
    ref = fe(audio, sampling_rate=16000, return_tensors="np").input_features[0]
    assert np.abs(log_mel_spectrogram(audio) - ref).max() <= 1e-4


def test_features_128_mels_for_large_v3(audio_dir):
    transformers = pytest.importorskip("transformers")
    fe = transformers.WhisperFeatureExtractor(feature_size=128)
    audio = load_audio(audio_dir / "a_16k.wav")
    ref = fe(audio, sampling_rate=16000, return_tensors="np").input_features[0]
    assert np.abs(log_mel_spectrogram(audio, 128) - ref).max() <= 1e-4


@pytest.mark.parametrize("name", ["a_16k.wav", "b_44k_stereo.flac", "c_8k.ogg"])
def test_audio_stream_reads_what_load_audio_reads(audio_dir, name):
    from edgeq.runtime.audio import AudioStream

    whole = load_audio(audio_dir / name)
    stream = AudioStream(audio_dir / name)
    assert abs(len(stream) - len(whole)) <= 1
    parts = [stream[i : i + 7000] for i in range(0, len(stream), 7000)]
    joined = np.concatenate(parts)
    n = min(len(joined), len(whole))
    assert np.abs(joined[:n] - whole[:n]).max() < 2e-3  # soxr's stream and one-shot filters agree
    with pytest.raises(ValueError, match="forward only"):
        stream[0:10]


def test_audio_stream_refuses_bad_files(tmp_path):
    from edgeq.runtime.audio import AudioStream

    with pytest.raises(AudioError, match="no such audio file"):
        AudioStream(tmp_path / "nope.wav")
    (tmp_path / "empty.wav").write_bytes(b"")
    with pytest.raises(AudioError, match="cannot decode audio"):
        AudioStream(tmp_path / "empty.wav")


def _blas_threads() -> list[int]:
    from threadpoolctl import threadpool_info

    return [i["num_threads"] for i in threadpool_info() if i.get("user_api") == "blas"]


def test_mel_product_runs_on_one_blas_thread_and_the_callers_setting_comes_back(monkeypatch):
    # NumPy's OpenBLAS would run the filterbank product on every core and leave its threads spinning
    # into the encoder's run (edgeq/runtime/blas.py): the product must see one thread, and the
    # caller's own BLAS setting must be as it was afterwards.
    from threadpoolctl import threadpool_limits

    from edgeq.runtime import features

    seen = []

    class Filters(np.ndarray):
        def __rmatmul__(self, power):  # power @ filters lands here: Filters is the right operand's subclass
            seen.append(_blas_threads())
            return np.matmul(power, self.view(np.ndarray))

    real = features.mel_filters
    monkeypatch.setattr(features, "mel_filters", lambda n: real(n).view(Filters))
    audio = tone(3.0)
    with threadpool_limits(limits=2, user_api="blas"):
        before = _blas_threads()
        got = features.log_mel_spectrogram(audio)
        after = _blas_threads()
    if not before:
        pytest.skip("threadpoolctl finds no BLAS library in this NumPy")
    assert seen and all(threads == [1] * len(before) for threads in seen)
    assert after == before
    monkeypatch.setattr(features, "mel_filters", real)
    expected = features.log_mel_spectrogram(audio)
    assert np.array_equal(got, expected)
