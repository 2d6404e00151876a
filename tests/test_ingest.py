"""Ingest and VAD: decoded frames onto the 16 kHz timeline, gaps, re-anchoring, speech gating."""

from __future__ import annotations

import fractions

import av
import numpy as np
import pytest

from realtime.ingest import AudioIngest, frame_to_mono
from realtime.vad import VoiceActivity

TB48 = fractions.Fraction(1, 48000)


def opus_like(pcm48: np.ndarray, pts: int | None, stereo: bool = True) -> av.AudioFrame:
    """A frame shaped like aiortc's Opus decoder output: s16 packed, 48 kHz."""
    s16 = (np.clip(pcm48, -1, 1) * 32767).astype(np.int16)
    data = np.repeat(s16, 2).reshape(1, -1) if stereo else s16.reshape(1, -1)
    frame = av.AudioFrame.from_ndarray(data, format="s16", layout="stereo" if stereo else "mono")
    frame.sample_rate = 48000
    frame.pts = pts
    frame.time_base = TB48
    return frame


def tone(freq: float, n: int, rate: int = 48000, start: int = 0) -> np.ndarray:
    t = (np.arange(n) + start) / rate
    return (0.5 * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def test_frame_to_mono_formats() -> None:
    x = tone(440, 960)
    mono, rate = frame_to_mono(opus_like(x, 0))
    assert rate == 48000 and mono.shape == (960,)
    assert np.allclose(mono, x, atol=1e-4)
    planar = av.AudioFrame.from_ndarray(np.stack([x, -x]).astype(np.float32), format="fltp", layout="stereo")
    planar.sample_rate = 48000
    mono, _ = frame_to_mono(planar)
    assert np.allclose(mono, 0.0, atol=1e-6)


def test_continuous_stream_keeps_exact_clock_and_signal() -> None:
    ing = AudioIngest()
    sig = tone(1000, 960 * 50)
    out16, out48 = [], []
    for k in range(50):
        for c in ing.push_frame(opus_like(sig[k * 960 : (k + 1) * 960], 12345 + k * 960)):
            assert c.real and len(c.pcm48) == 3 * len(c.pcm)
            out16.append(c.pcm)
            out48.append(c.pcm48)
    assert ing.clock == 320 * 50 and ing.gaps_filled == 0
    y16 = np.concatenate(out16)
    # a 1 kHz tone survives decimation (after the filter's 0.5 ms delay); amplitude ~0.5
    ref = tone(1000, len(y16), rate=16000)
    lag = int(np.argmax([np.dot(y16[400:2000], np.roll(ref, d)[400:2000]) for d in range(0, 20)]))
    assert 6 <= lag <= 10  # 0.5 ms = 8 samples at 16 kHz
    assert 0.45 < np.abs(y16[1000:]).max() < 0.55
    assert np.allclose(np.concatenate(out48), sig, atol=1e-4)


def test_decimation_rejects_aliases() -> None:
    ing = AudioIngest()
    hi = tone(12000, 960 * 20)  # above 8 kHz Nyquist of the 16 kHz timeline
    y = np.concatenate(
        [c.pcm for k in range(20) for c in ing.push_frame(opus_like(hi[k * 960 : (k + 1) * 960], k * 960))]
    )
    assert np.sqrt(np.mean(y[200:] ** 2)) < 0.01


def test_lost_packets_become_silence_of_the_same_length() -> None:
    ing = AudioIngest()
    sig = tone(500, 960 * 10)
    chunks = []
    for k in (0, 1, 2, 5, 6):  # packets 3 and 4 lost
        chunks += ing.push_frame(opus_like(sig[k * 960 : (k + 1) * 960], k * 960))
    assert ing.clock == 7 * 320
    assert ing.gaps_filled == 2 * 320
    gap = [c for c in chunks if not c.real]
    assert len(gap) == 1 and gap[0].start == 3 * 320 and len(gap[0].pcm) == 640
    assert not gap[0].pcm48.any()


def test_duplicates_dropped_and_partial_overlap_trimmed() -> None:
    ing = AudioIngest()
    sig = tone(500, 960 * 4)
    ing.push_frame(opus_like(sig[:960], 0))
    ing.push_frame(opus_like(sig[:960], 0))  # duplicate
    assert ing.clock == 320 and ing.dropped == 1
    ing.push_frame(opus_like(sig[480:1440], 480))  # half overlaps
    assert ing.clock == 480


def test_silence_fill_then_reanchor() -> None:
    ing = AudioIngest()
    sig = tone(500, 960)
    ing.push_frame(opus_like(sig, 0))
    filled = ing.push_silence(1600)  # the peer paused; the session kept the clock on the wall
    assert sum(len(c.pcm) for c in filled) == 1600 and ing.clock == 1920
    # the peer resumes with RTP time that says "only 40 ms later": it lands at the end, not in the past
    chunks = ing.push_frame(opus_like(sig, 1920))
    assert chunks[0].start == 1920 and chunks[0].real and ing.clock == 2240
    assert ing.reanchors == 1


def test_huge_rtp_jump_is_a_new_talk_spurt_not_a_flood() -> None:
    ing = AudioIngest(max_gap=1.0)
    sig = tone(500, 960)
    ing.push_frame(opus_like(sig, 0))
    ing.push_frame(opus_like(sig, 48000 * 600))  # ten minutes later (muted peer)
    assert ing.clock == 640 and ing.gaps_filled == 0


def test_other_rates_and_missing_pts() -> None:
    ing = AudioIngest()
    for k in range(25):
        frame = av.AudioFrame.from_ndarray(
            (tone(300, 320, rate=16000, start=k * 320) * 32767).astype(np.int16).reshape(1, -1),
            format="s16",
            layout="mono",
        )
        frame.sample_rate = 16000
        frame.pts = None
        ing.push_frame(frame)
    # resampler start-up delay aside, 0.5 s in -> about 0.5 s on the timeline
    assert abs(ing.clock - 8000) < 400


def test_vad_gates_noise_and_passes_speech(speech_16k: np.ndarray) -> None:
    vad = VoiceActivity()
    rng = np.random.default_rng(0)
    noise = (rng.standard_normal(16000) * 10 ** (-60 / 20)).astype(np.float32)  # -60 dBFS hiss
    out, speech = vad.process(noise)
    assert not speech and not out.any()
    gated = np.concatenate([vad.process(speech_16k[i : i + 333])[0] for i in range(0, len(speech_16k), 333)])
    assert len(gated) == len(speech_16k)
    # most of the speech energy passes; the state saw speech
    assert np.sum(gated**2) > 0.9 * np.sum(speech_16k**2)
    assert vad.speech_frames > 20


def test_vad_onset_within_one_chunk_and_hangover(speech_16k: np.ndarray) -> None:
    vad = VoiceActivity(hangover=0.2)
    vad.process(np.zeros(8000, np.float32))
    assert not vad.speech
    loud = speech_16k[np.argmax(np.abs(speech_16k) > 0.2) :][:1280]  # 80 ms of voiced speech
    _, speech = vad.process(loud)
    assert speech
    vad.process(np.zeros(1600, np.float32))  # 100 ms of silence: still in hangover
    assert vad.speech
    vad.process(np.zeros(3200, np.float32))
    assert not vad.speech


def test_vad_rejects_bad_mode() -> None:
    with pytest.raises(ValueError, match="mode"):
        VoiceActivity(mode=7)


def test_skip_leaves_a_frame_off_the_timeline() -> None:
    ing = AudioIngest()
    sig = tone(500, 960 * 3)
    ing.push_frame(opus_like(sig[:960], 0))
    ing.skip()  # frame 1 dropped to catch up
    chunks = ing.push_frame(opus_like(sig[1920:], 1920))
    assert ing.clock == 640 and ing.gaps_filled == 0 and chunks[0].start == 320 and ing.skipped == 1
