"""Media input for offline generation: audio decoded by content, images sniffed by content.

Formats are recognised from their first bytes, never from a file name or a client's
``Content-Type``, and the matching FFmpeg demuxer is forced so FFmpeg's own probing
never wanders into unexpected formats. Audio becomes 16 kHz mono float32 for the
motion model; the original file is kept for the output's sound track.

Framework-free: no aiohttp here.
"""

from __future__ import annotations

import io
import logging
import math
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import av
import numpy as np

log = logging.getLogger(__name__)

MODEL_RATE = 16000
AUDIO_FORMATS = ("wav", "mp3", "ogg", "flac", "m4a")
IMAGE_FORMATS = ("png", "jpeg", "webp")

# The FFmpeg demuxer forced for each sniffed format.
_DEMUXERS = {"wav": "wav", "mp3": "mp3", "ogg": "ogg", "flac": "flac", "m4a": "mov"}


class MediaError(ValueError):
    """An input file is unusable. ``code`` names the problem for API clients."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


@dataclass(frozen=True)
class AudioClip:
    """Decoded audio: ``pcm`` is 16 kHz mono float32 in -1..1."""

    pcm: np.ndarray
    duration: float
    format: str
    source_rate: int
    source_channels: int
    path: Path | None = None

    @property
    def sample_rate(self) -> int:
        return MODEL_RATE


def sniff_audio(head: bytes) -> str | None:
    """The audio format of a file from its first bytes (at least 12), or None."""
    if len(head) >= 12 and head[:4] in (b"RIFF", b"RF64") and head[8:12] == b"WAVE":
        return "wav"
    if head[:4] == b"fLaC":
        return "flac"
    if head[:4] == b"OggS":
        return "ogg"
    if len(head) >= 8 and head[4:8] == b"ftyp":
        return "m4a"
    if head[:3] == b"ID3":
        return "mp3"
    # An MPEG audio frame header: 11 sync bits, a valid version and layer III/II.
    if len(head) >= 2 and head[0] == 0xFF and (head[1] & 0xE0) == 0xE0 and (head[1] & 0x06) != 0:
        return "mp3"
    return None


def sniff_image(head: bytes) -> str | None:
    """The image format of a file from its first bytes (at least 12), or None."""
    if head[:8] == b"\x89PNG\r\n\x1a\n":
        return "png"
    if head[:3] == b"\xff\xd8\xff":
        return "jpeg"
    if len(head) >= 12 and head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "webp"
    return None


def _open(source: str | Path | bytes, fmt: str) -> av.container.InputContainer:
    target = io.BytesIO(source) if isinstance(source, bytes) else str(source)
    try:
        return av.open(target, mode="r", format=_DEMUXERS[fmt])
    except (av.FFmpegError, OSError, ValueError) as exc:
        raise MediaError("corrupt_audio", f"cannot read the {fmt} audio: {exc}") from None


def _read_head(source: str | Path | bytes) -> tuple[bytes, int]:
    if isinstance(source, bytes):
        return source[:64], len(source)
    path = Path(source)
    try:
        with path.open("rb") as fh:
            head = fh.read(64)
        return head, path.stat().st_size
    except OSError as exc:
        raise MediaError("unreadable_audio", f"cannot read {path.name}: {exc.strerror}") from None


def _check_source(source: str | Path | bytes, max_bytes: int | None) -> str:
    head, size = _read_head(source)
    if size == 0:
        raise MediaError("empty_audio", "the audio file is empty")
    if max_bytes is not None and size > max_bytes:
        raise MediaError("audio_too_large", f"the audio file is {size} bytes; the limit is {max_bytes}")
    fmt = sniff_audio(head)
    if fmt is None:
        raise MediaError("not_audio", "the audio is not a WAV, MP3, OGG, FLAC or M4A file")
    return fmt


def decode_audio(
    source: str | Path | bytes,
    *,
    max_bytes: int | None = None,
    max_seconds: float | None = None,
) -> AudioClip:
    """Decode a WAV/MP3/OGG/FLAC/M4A file (detected by content) to 16 kHz mono float32.

    Raises :class:`MediaError` with a ``code`` for empty, oversized, overlong,
    unrecognised or corrupt input.
    """
    fmt = _check_source(source, max_bytes)
    chunks: list[np.ndarray] = []
    with _open(source, fmt) as container:
        if not container.streams.audio:
            raise MediaError("no_audio_stream", f"the {fmt} file holds no audio stream")
        stream = container.streams.audio[0]
        rate = int(stream.codec_context.sample_rate or 0)
        channels = int(stream.codec_context.channels or 0)
        # MP4 states its exact length (edit list); the AAC decoder adds encoder padding at the end.
        exact = None
        if fmt == "m4a" and stream.duration and stream.time_base:
            exact = int(round(float(stream.duration * stream.time_base) * MODEL_RATE))
        if max_seconds is not None and container.duration is not None:
            declared = container.duration / av.time_base
            if declared > max_seconds + 1.0:
                raise MediaError(
                    "audio_too_long", f"the audio lasts {declared:.1f} s; the limit is {max_seconds:g} s"
                )
        resampler = av.AudioResampler(format="flt", layout="mono", rate=MODEL_RATE)
        limit = None if max_seconds is None else int(math.ceil(max_seconds * MODEL_RATE))
        total = 0
        try:
            for frame in container.decode(stream):
                frame.pts = None  # let the resampler count samples; some files carry broken pts
                for out in resampler.resample(frame):
                    chunks.append(out.to_ndarray().reshape(-1).copy())
                    total += chunks[-1].size
                if limit is not None and total > limit:
                    raise MediaError(
                        "audio_too_long", f"the audio lasts more than the limit of {max_seconds:g} s"
                    )
        except av.FFmpegError as exc:
            # A file cut short (an interrupted download) keeps what decoded; garbage is refused.
            if total < MODEL_RATE // 2:
                raise MediaError("corrupt_audio", f"the {fmt} audio is corrupt: {exc}") from None
            log.warning(
                "the %s audio is damaged after %.2f s; using what decoded: %s", fmt, total / MODEL_RATE, exc
            )
        for out in resampler.resample(None):
            chunks.append(out.to_ndarray().reshape(-1).copy())
    pcm = np.concatenate(chunks).astype(np.float32, copy=False) if chunks else np.zeros(0, np.float32)
    if exact is not None and 0 < exact < pcm.size:
        pcm = pcm[:exact]
    if limit is not None and pcm.size > limit:
        raise MediaError("audio_too_long", f"the audio lasts more than the limit of {max_seconds:g} s")
    if pcm.size == 0:
        raise MediaError("empty_audio", "the audio holds no samples")
    np.nan_to_num(pcm, copy=False, nan=0.0, posinf=0.0, neginf=0.0)
    np.clip(pcm, -1.0, 1.0, out=pcm)
    return AudioClip(
        pcm=pcm,
        duration=pcm.size / MODEL_RATE,
        format=fmt,
        source_rate=rate or MODEL_RATE,
        source_channels=channels or 1,
        path=None if isinstance(source, bytes) else Path(source),
    )


def iter_source_frames(
    source: str | Path | bytes, *, rate: int, layout: str, max_samples: int, frame_size: int = 1024
) -> Iterator[av.AudioFrame]:
    """The original audio re-decoded as planar float32 frames of ``frame_size`` samples.

    Used for the output's sound track, so it keeps the source quality rather than the
    model's 16 kHz mono. The frames go to the AAC encoder as they are (no copy through
    numpy, which would hold the GIL for every 1024 samples); their ``pts`` is unset.
    Stops after ``max_samples``; the last frame may be shorter.
    """
    fmt = _check_source(source, None)
    resampler = av.AudioResampler(format="fltp", layout=layout, rate=rate, frame_size=frame_size)
    sent = 0
    with _open(source, fmt) as container:
        stream = container.streams.audio[0]

        def frames() -> Iterator[av.AudioFrame]:
            for frame in container.decode(stream):
                frame.pts = None
                yield from resampler.resample(frame)
            yield from resampler.resample(None)

        for frame in frames():
            left = max_samples - sent
            if left <= 0:
                return
            if frame.samples > left:  # the last one, cut to the length asked for
                cut = np.ascontiguousarray(frame.to_ndarray()[:, :left])
                frame = av.AudioFrame.from_ndarray(cut, format="fltp", layout=layout)
                frame.sample_rate = rate
            sent += frame.samples
            frame.pts = None
            yield frame


def iter_source_audio(
    source: str | Path | bytes, *, rate: int, layout: str, max_samples: int, frame_size: int = 1024
) -> Iterator[np.ndarray]:
    """:func:`iter_source_frames` as float32 arrays of shape (channels, samples)."""
    channels = 2 if layout == "stereo" else 1
    for frame in iter_source_frames(
        source, rate=rate, layout=layout, max_samples=max_samples, frame_size=frame_size
    ):
        yield np.ascontiguousarray(frame.to_ndarray().reshape(channels, -1), dtype=np.float32)
