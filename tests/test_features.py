"""Streaming log-mel features: chunk invariance, causality, gain/DC robustness, resampling."""

from __future__ import annotations

import numpy as np
import pytest

from realtime.features import (
    HOP,
    N_MELS,
    SILENT_FEATURE,
    FeatureExtractor,
    StreamResampler,
    frame_windows,
    last_mel_index,
    logmel,
    resample,
)


def _chunked(pcm: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    fe = FeatureExtractor()
    out, i = [], 0
    while i < pcm.size:
        n = int(rng.choice([0, 1, 7, 160, 333, 640, 1601]))
        out.append(fe.push(pcm[i : i + n])[0])
        i += n
    return np.concatenate(out)


def test_any_chunking_gives_the_whole_file_result(speech_16k: np.ndarray) -> None:
    whole, _ = logmel(speech_16k)
    assert whole.shape == (speech_16k.size // HOP, N_MELS)
    for seed in range(3):
        np.testing.assert_allclose(_chunked(speech_16k, np.random.default_rng(seed)), whole, atol=1e-4)


def test_features_are_causal() -> None:
    """A click at sample s changes only mel frames that end after s."""
    pcm = np.zeros(16000)
    base, _ = logmel(pcm)
    s = 8000
    pcm[s] = 0.9
    clicked, _ = logmel(pcm)
    changed = np.flatnonzero(np.abs(clicked - base).max(axis=1) > 1e-6)
    ends = (changed + 1) * HOP  # frame j ends at sample 160 (j + 1)
    assert changed.size > 0 and ends.min() > s
    # and a motion frame's window never reaches past t + lookahead
    for fps in (25, 30):
        for n in range(0, 20):
            last = last_mel_index(n, fps, 60)
            assert (last + 1) * 10 <= n * 1000 / fps + 60 + 1e-9
            assert (last + 2) * 10 > n * 1000 / fps + 60


def test_gain_does_not_matter_after_the_first_second(speech_16k: np.ndarray) -> None:
    pcm = np.tile(speech_16k, 2)
    ref, rel_ref = logmel(pcm)
    skip = len(ref) // 2  # the second copy: the level follower has converged
    speech = rel_ref[skip:] > -3.0
    for gain_db in (-24.0, -12.0, 10.0):
        feats, _ = logmel(pcm * 10 ** (gain_db / 20))
        err = np.abs(feats[skip:] - ref[skip:])[speech].mean()
        assert err < 0.35, (gain_db, err)  # natural-log units; raw log-mel would be off by |gain| * 0.23


def test_dc_offset_and_bad_values_are_harmless(speech_16k: np.ndarray) -> None:
    ref, rel = logmel(speech_16k)
    dc, _ = logmel(speech_16k + 0.3)
    speech = rel > -3.0
    assert np.abs(dc - ref)[speech].mean() < 0.3
    bad = speech_16k.copy()
    bad[100:200] = np.nan
    bad[300] = np.inf
    feats, rel_bad = logmel(bad)
    assert np.isfinite(feats).all() and np.isfinite(rel_bad).all()
    loud, _ = logmel(np.clip(speech_16k * 1000, -1, 1))
    assert np.isfinite(loud).all()
    silent, rel_sil = logmel(np.zeros(4000))
    np.testing.assert_allclose(silent, SILENT_FEATURE, atol=1e-3)
    assert (rel_sil < -3).all()
    with pytest.raises(ValueError):
        logmel(np.zeros((2, 3, 4)))


@pytest.mark.parametrize("rate", [8000, 22050, 44100, 48000])
def test_stream_resampler_matches_whole_file_and_is_accurate(rate: int) -> None:
    t = np.arange(rate) / rate
    x = np.sin(2 * np.pi * 440 * t)
    whole = resample(x, rate)
    assert whole.size == 16000
    rs = StreamResampler(rate)
    rng = np.random.default_rng(1)
    parts, i = [], 0
    while i < x.size:
        n = int(rng.integers(0, 900))
        parts.append(rs.push(x[i : i + n]))
        i += n
    parts.append(rs.flush())
    np.testing.assert_allclose(np.concatenate(parts), whole, atol=1e-9)
    ref = np.sin(2 * np.pi * 440 * np.arange(16000) / 16000)
    assert np.abs(whole[200:-200] - ref[200:-200]).max() < 2e-3
    with pytest.raises(ValueError):
        StreamResampler(0)


def test_frame_windows_pad_with_silence_before_the_start() -> None:
    feats = np.ones((100, N_MELS), np.float32)
    w = frame_windows(feats, np.arange(3), 25, 60, 16)
    assert w.shape == (3, 16, N_MELS)
    # frame 0 sees mel frames up to index 5: 6 real frames, 10 of silence before the start
    assert (w[0, :10] == SILENT_FEATURE).all() and (w[0, 10:] == 1).all()
    with pytest.raises(ValueError):
        frame_windows(feats, np.array([1000]), 25, 60, 16)


def test_stream_state_is_per_extractor(speech_16k: np.ndarray) -> None:
    a, b = FeatureExtractor(), FeatureExtractor()
    fa = a.push(speech_16k[:8000])[0]
    fb = b.push(speech_16k[:8000])[0]
    np.testing.assert_array_equal(fa, fb)
    assert a.frames_out == b.frames_out == 8000 // HOP
