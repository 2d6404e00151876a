"""Audio ingest: decoded WebRTC audio frames -> one session timeline at 16 kHz and 48 kHz.

The session's master clock is the index of 16 kHz samples on its *timeline*. Every
frame from the peer is mapped to a timeline position from its RTP timestamp, so a
lost packet becomes silence of the same length and the clock never drifts. The same
samples are also kept at 48 kHz (exactly three per clock tick) for the returned voice.

The session may also fill the timeline with silence on the wall clock when the peer
stops sending (idle). Real audio that arrives after such a fill is re-anchored to the
end of the timeline instead of overwriting it. Framework-free: frames are duck-typed
PyAV ``AudioFrame`` objects (``to_ndarray``, ``sample_rate``, ``pts``, ``layout``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import av
import numpy as np
from numpy.lib.stride_tricks import as_strided
from scipy.signal import firwin

RATE = 16000
OUT_RATE = 48000
_DECIMATE = OUT_RATE // RATE
# A 48 kHz -> 16 kHz anti-alias filter: 0.5 ms group delay, flat to 7 kHz.
_TAPS = firwin(48, 7200.0, fs=OUT_RATE).astype(np.float32)
_TAPS_REVERSED = np.ascontiguousarray(_TAPS[::-1])


@dataclass(frozen=True, slots=True)
class AudioChunk:
    """Samples added to the timeline: ``pcm`` (16 kHz) starts at clock ``start``."""

    start: int
    pcm: np.ndarray  # float32, 16 kHz mono
    pcm48: np.ndarray  # float32, 48 kHz mono, len == 3 * len(pcm)
    real: bool  # False for silence the ingest or the session filled in

    @property
    def end(self) -> int:
        return self.start + len(self.pcm)


def frame_to_mono(frame: Any) -> tuple[np.ndarray, int]:
    """A PyAV audio frame (any format, channel count or rate) as mono float32 and its rate."""
    channels = len(frame.layout.channels)
    fmt = frame.format
    if fmt.name == "s16" and channels == 2:
        # what aiortc's Opus decoder gives, 50 times a second per session: read the plane
        # directly (to_ndarray stacks planes in Python) and downmix in one pass, no mean()
        pairs = np.frombuffer(frame.planes[0], np.int16, count=2 * frame.samples).reshape(-1, 2)
        x = (pairs[:, 0].astype(np.float32) + pairs[:, 1]) * np.float32(0.5 / 32768.0)
        return x, int(frame.sample_rate)
    data = frame.to_ndarray()
    integer = data.dtype.kind in "iu"
    if data.dtype == np.int16:
        x = data.astype(np.float32) * np.float32(1.0 / 32768.0)
    elif data.dtype == np.int32:
        x = data.astype(np.float32) * np.float32(1.0 / 2147483648.0)
    elif data.dtype == np.uint8:
        x = (data.astype(np.float32) - 128.0) * np.float32(1.0 / 128.0)
    else:
        x = data.astype(np.float32)
    if channels > 1:
        x = x.reshape(channels, -1).mean(axis=0) if fmt.is_planar else x.reshape(-1, channels).mean(axis=1)
    else:
        x = x.reshape(-1)
    if not integer:  # only float samples can carry NaN or inf
        x = np.nan_to_num(x, nan=0.0, posinf=0.0, neginf=0.0)
    return x.astype(np.float32, copy=False), int(frame.sample_rate)


class _Resampler48:
    """Any rate -> 48 kHz mono float32 (identity for 48 kHz, the Opus rate)."""

    def __init__(self, rate: int) -> None:
        self.rate = rate
        self._swr = (
            None if rate == OUT_RATE else av.AudioResampler(format="flt", layout="mono", rate=OUT_RATE)
        )

    def __call__(self, mono: np.ndarray) -> np.ndarray:
        if self._swr is None:
            return mono
        frame = av.AudioFrame.from_ndarray(
            mono.reshape(1, -1).astype(np.float32), format="flt", layout="mono"
        )
        frame.sample_rate = self.rate
        out = [f.to_ndarray().reshape(-1) for f in self._swr.resample(frame)]
        return np.concatenate(out).astype(np.float32) if out else np.zeros(0, np.float32)


class _Decimator:
    """Stateful 48 kHz -> 16 kHz decimation that keeps phase across chunks of any length.

    Polyphase: only the kept third of the filter outputs is computed, as one matrix-vector
    product over windows of the input and the previous chunk's tail.
    """

    def __init__(self) -> None:
        self._tail = np.zeros(len(_TAPS) - 1, np.float32)  # the input just before the next chunk
        self._phase = 0  # index of the next kept sample within the incoming chunk

    def __call__(self, x48: np.ndarray) -> np.ndarray:
        if len(x48) == 0:
            return np.zeros(0, np.float32)
        x = np.concatenate([self._tail, x48.astype(np.float32, copy=False)])
        # output i (input index within x48) is sum_j taps[j] * x48[i - j]: the window of x ending at i
        n_out = (len(x48) - self._phase + _DECIMATE - 1) // _DECIMATE
        step = x.strides[0]
        # a strided view, not sliding_window_view: that wrapper costs more than the product here
        windows = as_strided(x[self._phase :], (n_out, len(_TAPS)), (_DECIMATE * step, step), writeable=False)
        out = windows @ _TAPS_REVERSED
        self._tail = x[len(x) - len(self._tail) :]
        self._phase = (self._phase - len(x48)) % _DECIMATE
        return out


class AudioIngest:
    """Maps decoded frames onto the session timeline; returns what each call added.

    ``max_gap`` (seconds): a jump in RTP time longer than this is treated as a new
    talk spurt (re-anchored) rather than filled, so a peer that muted for minutes does
    not flood the pipeline with silence.
    """

    def __init__(self, max_gap: float = 1.0) -> None:
        self.clock = 0  # 16 kHz samples on the timeline so far
        self._pending48 = np.zeros(0, np.float32)  # < 3 samples not yet on the timeline
        self._resampler: _Resampler48 | None = None
        self._decimator = _Decimator()
        self._offset: int | None = None  # timeline position (48 kHz) minus frame pts (48 kHz)
        self._filled_since_real = False
        self._max_gap48 = int(max_gap * OUT_RATE)
        self._next_pts48: int | None = None  # where the sender's next frame would start
        self.after_gap = False  # the last frame came after a gap in the sender's time (DTX, loss)
        self.frames = 0
        self.gaps_filled = 0  # 16 kHz samples of silence inserted for lost packets
        self.reanchors = 0
        self.dropped = 0  # duplicate / late frames ignored
        self.skipped = 0  # quiet frames left out to catch up with the wall clock

    @property
    def clock48(self) -> int:
        return self.clock * _DECIMATE + len(self._pending48)

    def push_frame(self, frame: Any) -> list[AudioChunk]:
        """Add one decoded frame; returns the chunks (gap silence, then audio) it produced."""
        mono, rate = frame_to_mono(frame)
        if self._resampler is None or self._resampler.rate != rate:
            self._resampler = _Resampler48(rate)
        x48 = self._resampler(mono)
        pts48 = self._pts48(frame, rate)
        chunks: list[AudioChunk] = []
        self.after_gap = pts48 is not None and self._next_pts48 is not None and pts48 > self._next_pts48
        if pts48 is not None:
            self._next_pts48 = pts48 + len(x48)
            if self._offset is None or self._filled_since_real:
                self._reanchor(pts48)
            pos = pts48 + self._offset  # type: ignore[operator]
            here = self.clock48
            if pos > here:
                if pos - here > self._max_gap48:
                    self._reanchor(pts48)
                else:
                    gap = pos - here
                    self.gaps_filled += gap // _DECIMATE
                    chunks += self._append(np.zeros(gap, np.float32), real=False)
            elif pos < here:
                overlap = here - pos
                if overlap >= len(x48):
                    if overlap > self._max_gap48:
                        # the sender restarted its clock: treat as a new talk spurt
                        self._reanchor(pts48)
                    else:
                        self.dropped += 1
                        return chunks
                else:
                    x48 = x48[overlap:]
        self._filled_since_real = False
        self.frames += 1
        chunks += self._append(x48, real=True)
        return chunks

    def skip(self) -> None:
        """Leave the next frame's time off the timeline (catch-up); the frame after it re-anchors."""
        self._filled_since_real = True
        self.skipped += 1

    def push_silence(self, samples: int) -> list[AudioChunk]:
        """Fill ``samples`` (16 kHz) of silence on the wall clock, e.g. while the peer is silent."""
        if samples <= 0:
            return []
        self._filled_since_real = True
        return self._append(np.zeros(samples * _DECIMATE, np.float32), real=False)

    def _pts48(self, frame: Any, rate: int) -> int | None:
        pts = getattr(frame, "pts", None)
        if pts is None:
            return None
        tb = getattr(frame, "time_base", None)
        if tb is None:
            return int(pts) * OUT_RATE // rate
        return int(pts) * OUT_RATE * tb.numerator // tb.denominator

    def _reanchor(self, pts48: int) -> None:
        if self._offset is not None:
            self.reanchors += 1
        self._offset = self.clock48 - pts48

    def _append(self, x48: np.ndarray, *, real: bool) -> list[AudioChunk]:
        buf = np.concatenate([self._pending48, x48]) if len(self._pending48) else x48
        usable = len(buf) - len(buf) % _DECIMATE
        self._pending48 = buf[usable:].copy()
        if usable == 0:
            return []
        x48 = buf[:usable].astype(np.float32, copy=False)
        pcm = self._decimator(x48)
        chunk = AudioChunk(self.clock, pcm, x48, real)
        self.clock += len(pcm)
        return [chunk]
