"""Audio decoding by content (wav/mp3/ogg/flac/m4a -> 16 kHz mono), sniffing and input limits."""

from __future__ import annotations

import shutil
import subprocess
import wave
from pathlib import Path

import numpy as np
import pytest

from realtime.media import MediaError, decode_audio, iter_source_audio, sniff_audio, sniff_image

FORMATS = {"wav": "x.wav", "mp3": "x.mp3", "ogg": "x.ogg", "flac": "x.flac", "m4a": "x.m4a"}


def ffmpeg(*args: str) -> None:
    if shutil.which("ffmpeg") is None:
        pytest.skip("ffmpeg is not installed")
    subprocess.run(["ffmpeg", "-loglevel", "error", "-y", *args], check=True)


def write_wav(path: Path, pcm: np.ndarray, rate: int = 16000, channels: int = 1) -> Path:
    data = (np.clip(pcm, -1, 1) * 32767).astype("<i2")
    with wave.open(str(path), "wb") as wf:
        wf.setnchannels(channels)
        wf.setsampwidth(2)
        wf.setframerate(rate)
        wf.writeframes(data.tobytes())
    return path


@pytest.fixture(scope="module")
def encoded(speech_wav: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The speech fixture in every supported format, named without telling extensions."""
    folder = tmp_path_factory.mktemp("formats")
    out = {}
    for fmt in FORMATS:
        path = folder / f"speech-{fmt}.bin"  # the extension must not matter
        muxer = {"m4a": "ipod", "ogg": "ogg"}.get(fmt, fmt)
        ffmpeg("-i", str(speech_wav), "-f", muxer, str(path))
        out[fmt] = path
    return out


def _best_corr(a: np.ndarray, b: np.ndarray, max_lag: int = 2000) -> float:
    """Peak normalised cross-correlation over small lags (lossy codecs add a delay)."""
    n = min(a.size, b.size) - max_lag
    best = 0.0
    for lag in range(0, max_lag, 8):
        x, y = a[lag : lag + n], b[:n]
        best = max(best, float(np.dot(x, y) / (np.linalg.norm(x) * np.linalg.norm(y) + 1e-9)))
        x, y = a[:n], b[lag : lag + n]
        best = max(best, float(np.dot(x, y) / (np.linalg.norm(x) * np.linalg.norm(y) + 1e-9)))
    return best


@pytest.mark.parametrize("fmt", list(FORMATS))
def test_decodes_every_format_by_content(fmt: str, encoded: dict[str, Path], speech_16k: np.ndarray) -> None:
    clip = decode_audio(encoded[fmt])
    assert clip.format == fmt
    assert clip.pcm.dtype == np.float32 and clip.pcm.ndim == 1 and clip.sample_rate == 16000
    reference = speech_16k.size / 16000
    # Lossy codecs pad a little at the ends; within 60 ms of the source is the same audio.
    assert abs(clip.duration - reference) < 0.06, (fmt, clip.duration, reference)
    assert _best_corr(clip.pcm, speech_16k) > 0.9


def test_decodes_bytes_and_resamples_stereo(tmp_path: Path, speech_16k: np.ndarray) -> None:
    # 44.1 kHz stereo with the voice on the left only: mono mixdown at 16 kHz keeps it.
    stereo = tmp_path / "st.wav"
    up = np.interp(np.arange(0, speech_16k.size, 16000 / 44100), np.arange(speech_16k.size), speech_16k)
    inter = np.stack([up, np.zeros_like(up)], axis=1).reshape(-1)
    write_wav(stereo, inter, rate=44100, channels=2)
    clip = decode_audio(stereo.read_bytes())
    assert clip.source_rate == 44100 and clip.source_channels == 2 and clip.path is None
    assert abs(clip.duration - speech_16k.size / 16000) < 0.01
    assert _best_corr(clip.pcm, speech_16k) > 0.95


def test_source_audio_keeps_rate_and_length(encoded: dict[str, Path]) -> None:
    blocks = list(iter_source_audio(encoded["flac"], rate=16000, layout="stereo", max_samples=20000))
    assert all(b.shape[0] == 2 and b.dtype == np.float32 for b in blocks)
    assert sum(b.shape[1] for b in blocks) == 20000


def test_sniffing() -> None:
    assert sniff_audio(b"RIFF\x00\x00\x00\x00WAVEfmt ") == "wav"
    assert sniff_audio(b"ID3\x04" + bytes(8)) == "mp3"
    assert sniff_audio(b"\xff\xfb\x90\x00" + bytes(8)) == "mp3"
    assert sniff_audio(b"OggS" + bytes(8)) == "ogg"
    assert sniff_audio(b"fLaC" + bytes(8)) == "flac"
    assert sniff_audio(b"\x00\x00\x00\x20ftypM4A ") == "m4a"
    assert sniff_audio(b"\x89PNG\r\n\x1a\n" + bytes(4)) is None
    assert sniff_audio(b"hello world!") is None
    assert sniff_image(b"\x89PNG\r\n\x1a\n" + bytes(4)) == "png"
    assert sniff_image(b"\xff\xd8\xff\xe0" + bytes(8)) == "jpeg"
    assert sniff_image(b"RIFF\x00\x00\x00\x00WEBPVP8 ") == "webp"
    assert sniff_image(b"RIFF\x00\x00\x00\x00WAVEfmt ") is None


def _code(source: Path | bytes, **limits: float) -> str:
    with pytest.raises(MediaError) as info:
        decode_audio(source, **limits)  # type: ignore[arg-type]
    assert str(info.value)  # every error says what is wrong
    return info.value.code


def test_bad_input_errors(tmp_path: Path, encoded: dict[str, Path], speech_wav: Path) -> None:
    assert _code(b"") == "empty_audio"
    assert _code(b"this is plainly not audio, just text") == "not_audio"
    assert _code(b"\x89PNG\r\n\x1a\n" + bytes(100)) == "not_audio"
    # A WAV header with no samples at all.
    assert _code(write_wav(tmp_path / "zero.wav", np.zeros(0))) == "empty_audio"
    # The right magic, then garbage.
    assert _code(b"fLaC" + bytes(range(256)) * 8) in ("corrupt_audio", "empty_audio")
    assert _code(b"OggS" + b"\x00garbage" * 100) in ("corrupt_audio", "empty_audio")
    # Limits: size checked before decoding, duration both declared and counted.
    assert _code(speech_wav, max_bytes=1000) == "audio_too_large"
    assert _code(speech_wav, max_seconds=1.0) == "audio_too_long"
    assert _code(encoded["mp3"], max_seconds=1.0) == "audio_too_long"
    assert _code(tmp_path / "missing.wav") == "unreadable_audio"


def test_truncated_file_decodes_what_is_there(encoded: dict[str, Path], tmp_path: Path) -> None:
    data = encoded["flac"].read_bytes()
    cut = tmp_path / "cut.flac"
    cut.write_bytes(data[: len(data) // 2])
    clip = decode_audio(cut)
    assert 0.3 < clip.duration < 3.5
