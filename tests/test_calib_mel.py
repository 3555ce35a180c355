"""calib/mel.py: Whisper's log-mel in numpy equals transformers' WhisperFeatureExtractor."""

import numpy as np
import pytest

from calib.audio import load_audio
from calib.mel import log_mel, mel_filters


def _feature_extractor(seconds):
    from transformers import WhisperFeatureExtractor

    return WhisperFeatureExtractor(chunk_length=seconds)  # pads/cuts to `seconds`, like our windows


def test_filterbank_equals_transformers_slaney_filters():
    from transformers.audio_utils import mel_filter_bank

    reference = mel_filter_bank(num_frequency_bins=201, num_mel_filters=80, min_frequency=0.0, max_frequency=8000.0,
                                sampling_rate=16000, norm="slaney", mel_scale="slaney")
    assert mel_filters().shape == (201, 80)
    np.testing.assert_allclose(mel_filters(), reference, rtol=0, atol=1e-12)
    assert mel_filters() is mel_filters()  # computed once


@pytest.mark.parametrize("seconds", [2, 10])
def test_log_mel_matches_whisper_feature_extractor_on_speech(speech_dir, seconds):
    audio = load_audio(speech_dir / "utt3.wav")  # about 9 s of speech
    window = np.zeros(seconds * 16000, dtype=np.float32)
    n = min(len(audio), len(window))
    window[:n] = audio[:n]  # zero-padded like the last window of a file

    ours = log_mel(window)
    fe = _feature_extractor(seconds)
    reference = fe(audio[: seconds * 16000], sampling_rate=16000, return_tensors="np").input_features[0]  # [80, frames]
    numpy_reference = fe._np_extract_fbank_features(window[None], "cpu")[0]

    assert ours.shape == (seconds * 100, 80) and ours.dtype == np.float32
    assert np.abs(ours - reference.T).max() < 1e-4
    assert np.abs(ours - numpy_reference.T).max() < 1e-4
    assert ours.max() > ours.min() + 1  # real speech, not a floor


def test_log_mel_matches_on_loud_noise_and_quiet_signal():
    rng = np.random.default_rng(3)
    fe = _feature_extractor(1)
    for audio in (rng.uniform(-1, 1, 16000).astype(np.float32), (1e-3 * rng.standard_normal(16000)).astype(np.float32)):
        reference = fe(audio, sampling_rate=16000, return_tensors="np").input_features[0]
        assert np.abs(log_mel(audio) - reference.T).max() < 1e-4


def test_batch_equals_one_by_one_and_floor_is_per_window():
    rng = np.random.default_rng(0)
    loud = rng.standard_normal(16000).astype(np.float32)
    quiet = 1e-3 * loud
    batch = log_mel(np.stack([loud, quiet]))
    assert batch.shape == (2, 100, 80)
    np.testing.assert_array_equal(batch[0], log_mel(loud))
    np.testing.assert_array_equal(batch[1], log_mel(quiet))
    # Each window gets its own max-8 floor, so the quiet window is not floored by the loud one.
    assert batch[1].min() > batch[0].min() - 1.6


def test_silence_is_the_constant_whisper_floor():
    mel = log_mel(np.zeros(16000, dtype=np.float32))
    np.testing.assert_array_equal(mel, np.full((100, 80), (np.log10(1e-10) + 4) / 4, dtype=np.float32))


def test_too_short_input_is_refused():
    with pytest.raises(ValueError, match="at least 201 samples"):
        log_mel(np.zeros(100, dtype=np.float32))


def test_sparse_mel_projection_equals_the_dense_filterbank():
    from calib.mel import _mel_projection

    power = (np.random.default_rng(1).random((300, 201)) ** 4).astype(np.float32)
    out = np.full((300, 80), np.nan, dtype=np.float32)
    _mel_projection(power, out)
    dense = power.astype(np.float64) @ mel_filters()
    assert np.abs(out - dense).max() <= 1e-6 * np.abs(dense).max()
