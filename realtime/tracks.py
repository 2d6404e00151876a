"""The outgoing WebRTC tracks: lip-synced video and the delayed voice, on one playout clock.

Both tracks are paced by a :class:`PlayoutClock`: timeline time ``s`` (seconds of input
audio) leaves the server at wall time ``t0 + delay + s``. Video frame *n* shows audio
time *n / fps*; audio frame *k* carries timeline samples ``[960 k, 960 (k + 1))`` at
48 kHz. So lips and voice leave together by construction and their offset cannot drift.
:class:`AdaptiveDelay` moves ``delay`` for both when the host is too slow for it.

``recv()`` is the only thing aiortc calls. It never raises on a late frame: the video
track repeats the last frame and counts a drop; the audio track sends what it has
(silence where the input has not arrived).
"""

from __future__ import annotations

import asyncio
import contextlib
import fractions
import logging
import math
import time
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import av
import numpy as np
from aiortc.codecs.vpx import Vp8Encoder
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack
from av import AudioFrame, VideoFrame
from av.frame import Frame

log = logging.getLogger(__name__)

VIDEO_CLOCK = 90000
VIDEO_TIME_BASE = fractions.Fraction(1, VIDEO_CLOCK)
AUDIO_RATE = 48000
AUDIO_TIME_BASE = fractions.Fraction(1, AUDIO_RATE)
AUDIO_SAMPLES = 960  # 20 ms at 48 kHz
# A frame ready up to this many frame periods after its send time still goes out (late, with its own
# pts) instead of a repeat of the last one. Sent late, frame n shows for less than a period and the
# frame before it for more; repeated, n is never shown. Either way a packet leaves late: a repeat waits
# out the whole grace first. One period is the most that holds back no other frame (n + 1 only waits
# for n's encode). Against 0.75, 4 sessions repeated 9 frames in all against 47 over 6 pairs, and
# Chromium's jitter buffer was no larger with frames 40 or 60 ms late than 28 ms (bench/live.md).
GRACE_PERIODS = 1.0
# If a track's consumer falls this many frame periods behind the clock, jump to now
# instead of bursting old frames out (pipecat-style drift reset).
MAX_BEHIND_PERIODS = 3
# The returned voice: mono Opus at WebRTC's usual voice rate (aiortc sends 96 kbit/s stereo).
OPUS_BITRATE = 32000


@dataclass
class PlayoutClock:
    """Wall time (``time.monotonic``) at which timeline time ``s`` is sent: ``t0 + delay + s``."""

    t0: float
    delay: float

    def wall(self, s: float) -> float:
        return self.t0 + self.delay + s

    def timeline(self, wall: float) -> float:
        return wall - self.t0 - self.delay


class AdaptiveDelay:
    """Moves a :class:`PlayoutClock`'s delay with how early frames are ready: a jitter buffer for compute.

    On a shared or busy host a frame's compute sometimes takes several times its CPU time (the
    thread waits for a core or the GIL). A frame ready more than the video track's grace after
    its send time repeats the last one: a visible stutter. One stall now and then is not worth
    more latency (the frames it made late have repeated already); stalls again and again, or a
    host too slow for many frames in a row, are. A frame is late when it is ready later than
    ``low`` (default: 8 ms late, a fifth of that grace at 25 fps); late frames less than
    ``episode_gap`` apart are one episode. When an episode starts within ``window`` seconds of the
    last late frame, or one reaches ``sustained`` late frames, the delay rises by this frame's
    lateness, rounded up to ``step``s, up to ``ceiling``: frames then leave later instead of
    repeating (or of going out late within the grace, as jitter). Audio and video
    share the clock, so lips and voice stay together; the peer's jitter buffer absorbs the step.
    After ``settle`` seconds in which every frame was ready at least a step before its send time,
    and only while the input is quiet (the voice then loses milliseconds of silence, not of a
    word), it lowers one step, never below ``floor``. With ``ceiling`` equal to ``floor`` the
    delay is fixed.
    """

    def __init__(
        self,
        clock: PlayoutClock,
        floor: float,
        ceiling: float,
        *,
        step: float = 0.010,
        low: float = -0.008,
        window: float = 2.0,
        episode_gap: float = 0.25,
        sustained: int = 4,
        settle: float = 5.0,
    ) -> None:
        self.clock = clock
        self.floor = floor
        self.ceiling = max(floor, ceiling)
        self.step = step
        self.low = low
        self.window = window
        self.episode_gap = episode_gap
        self.sustained = sustained
        self.settle = settle
        self.raised = 0
        self.lowered = 0
        self.highest = clock.delay
        # (timeline seconds, new delay) of every change, the last 64: which delay held when
        self.changes: deque[tuple[float, float]] = deque(maxlen=64)
        self._late_at: float | None = None  # when a frame was last later than ``low``
        self._episode_late = 0  # late frames in the current episode
        self._calm_since: float | None = None  # since when every frame had a step to spare

    def observe(self, slack: float, now: float, *, quiet: bool) -> float:
        """Take a frame's slack (seconds before its send time it was ready); returns the change made."""
        if self._calm_since is None or slack < self.step:
            self._calm_since = now
        if slack < self.low:
            gap = math.inf if self._late_at is None else now - self._late_at
            self._late_at = now
            if gap > self.episode_gap:  # a new stall
                self._episode_late, again = 1, gap <= self.window
            else:
                self._episode_late += 1
                again = self._episode_late >= self.sustained
            room = self.ceiling - self.clock.delay
            if again and room > 1e-9:
                steps = math.ceil(-slack / self.step - 1e-9)  # enough for this frame to have been on time
                return self._move(min(room, steps * self.step), now)
            return 0.0
        if (
            quiet
            and self.clock.delay - self.step >= self.floor - 1e-9
            and now - self._calm_since >= self.settle
        ):
            return self._move(-self.step, now)
        return 0.0

    def _move(self, change: float, now: float) -> float:
        self.clock.delay += change
        if change > 0:
            self.raised += 1
        else:
            self.lowered += 1
        self.highest = max(self.highest, self.clock.delay)
        self.changes.append((round(self.clock.timeline(now), 3), round(self.clock.delay, 4)))
        self._calm_since = now  # the next step down waits a whole settle time
        return change


def video_pts(n: int, fps: int) -> int:
    """90 kHz pts of frame ``n`` (exact for 25 and 30 fps)."""
    return n * VIDEO_CLOCK // fps


@dataclass(slots=True)
class ReadyFrame:
    """A rendered frame waiting for its send time."""

    index: int
    frame: VideoFrame
    payload: dict | None = None  # the per-frame motion message for the data channel


class FrameBuffer:
    """Rendered frames by index, bounded; the video track takes them in order."""

    def __init__(self, capacity: int = 50) -> None:
        self._frames: OrderedDict[int, ReadyFrame] = OrderedDict()
        self._capacity = capacity
        self._event = asyncio.Event()
        self.consumed = -1  # highest index the track has sent or given up on
        self.overflow = 0

    def put(self, item: ReadyFrame) -> None:
        if item.index <= self.consumed:
            return  # too late: the track already moved past it
        self._frames[item.index] = item
        while len(self._frames) > self._capacity:
            self._frames.popitem(last=False)
            self.overflow += 1
        self._event.set()

    def take(self, n: int) -> ReadyFrame | None:
        """Frame ``n`` if ready; frames before it are discarded.

        While frame ``n`` is missing it is still accepted: the track waits up to its grace for it.
        (Marking ``n`` consumed here, as before, dropped every frame that came in that wait, so
        any frame not ready by its send time repeated.) A frame that comes after the track gave up
        on it waits here until the next ``take`` discards it.
        """
        self.consumed = max(self.consumed, n - 1)
        while self._frames:
            first = next(iter(self._frames))
            if first >= n:
                break
            self._frames.popitem(last=False)
        item = self._frames.pop(n, None)
        if item is not None:
            self.consumed = max(self.consumed, n)
        return item

    def newest_index(self) -> int:
        return next(reversed(self._frames)) if self._frames else -1

    async def wait_for_new(self, seconds: float) -> None:
        """Wait until a frame is added or ``seconds`` pass."""
        self._event.clear()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._event.wait(), seconds)


class SampleRing:
    """48 kHz samples by absolute timeline position, bounded; unknown positions read as zeros."""

    def __init__(self, seconds: float = 8.0) -> None:
        self._cap = int(seconds * AUDIO_RATE)
        self._buf = np.zeros(self._cap, np.float32)
        self.end = 0  # one past the highest position written

    def write(self, pos: int, x: np.ndarray) -> None:
        if len(x) == 0:
            return
        if len(x) > self._cap:
            pos, x = pos + len(x) - self._cap, x[-self._cap :]
        if pos > self.end:  # a skipped span must not replay stale samples
            self._clear(self.end, pos)
        i = pos % self._cap
        first = min(len(x), self._cap - i)
        self._buf[i : i + first] = x[:first]
        self._buf[: len(x) - first] = x[first:]
        self.end = max(self.end, pos + len(x))

    def _clear(self, lo: int, hi: int) -> None:
        lo = max(lo, hi - self._cap)
        for a in range(lo, hi, self._cap):
            b = min(hi, a + self._cap)
            i, n = a % self._cap, b - a
            first = min(n, self._cap - i)
            self._buf[i : i + first] = 0.0
            self._buf[: n - first] = 0.0

    def read(self, pos: int, n: int) -> tuple[np.ndarray, int]:
        """``n`` samples from ``pos`` and how many of them had been written (the rest are zeros)."""
        out = np.zeros(n, np.float32)
        lo, hi = max(pos, self.end - self._cap), min(pos + n, self.end)
        if hi <= lo:
            return out, 0
        i, m = lo % self._cap, hi - lo
        first = min(m, self._cap - i)
        out[lo - pos : lo - pos + first] = self._buf[i : i + first]
        out[lo - pos + first : hi - pos] = self._buf[: m - first]
        return out, m


class AvatarVideoTrack(MediaStreamTrack):
    """The avatar video: frame n (pts n*90000/fps) leaves at ``clock.wall(n / fps)``.

    ``placeholder`` is shown until the first rendered frame exists (never black).
    ``on_sent(index, ready_frame, repeated)`` is called for every frame handed to aiortc;
    ``on_encoded(seconds)`` with the time aiortc's sender spent encoding and sending the previous one.
    """

    kind = "video"

    def __init__(
        self,
        clock: PlayoutClock,
        fps: int,
        frames: FrameBuffer,
        placeholder: VideoFrame,
        *,
        grace: float | None = None,
        on_sent: Callable[[int, ReadyFrame | None, bool], None] | None = None,
        on_encoded: Callable[[float], None] | None = None,
    ) -> None:
        super().__init__()
        self.clock = clock
        self.fps = fps
        self.frames = frames
        self._last = placeholder
        # how long after its send time a frame may still come and go out (late) instead of a repeat
        self.grace = (GRACE_PERIODS / fps) if grace is None else grace
        self._on_sent = on_sent
        self._on_encoded = on_encoded
        self._returned_at: float | None = None
        self._next: int | None = None
        self.sent = 0
        self.dropped = 0
        self.sent_late = 0  # frames that came within the grace, after their send time
        self.repeats_before_first = 0
        self.first_sent_at: float | None = None
        self._have_real = False

    async def recv(self) -> VideoFrame:
        if self.readyState != "live":
            raise MediaStreamError
        if self._returned_at is not None and self._on_encoded is not None:
            # aiortc's sender encodes and sends the previous frame between our return and this call
            self._on_encoded(time.monotonic() - self._returned_at)
        try:
            frame = await self._recv()
        except asyncio.CancelledError:
            raise
        except Exception:  # never let an error freeze the video: repeat the last frame
            log.exception("video track: error producing a frame; repeating the last one")
            self.dropped += 1
            frame = self._last
        self._returned_at = time.monotonic()
        return frame

    async def _recv(self) -> VideoFrame:
        now = time.monotonic()
        at_now = int(np.floor(self.clock.timeline(now) * self.fps))
        if self._next is None:
            n = max(0, at_now)
        else:
            n = self._next
            if at_now - n > MAX_BEHIND_PERIODS:
                # the encoder or loop fell behind: skip ahead rather than burst stale frames
                skipped = at_now - n
                self.dropped += skipped
                n = at_now
                if self._on_sent is not None:
                    for _ in range(skipped):
                        self._on_sent(-1, None, True)
        first = self._next is None
        self._next = n + 1
        target = self.clock.wall(n / self.fps)
        wait = target - time.monotonic()
        if wait > 0 and not first:  # the first frame goes out at once: the peer sees the avatar sooner
            await asyncio.sleep(wait)
        ready = self.frames.take(n)
        if ready is None and not first:
            deadline = target + self.grace
            while ready is None and (left := deadline - time.monotonic()) > 0:
                await self.frames.wait_for_new(left)
                ready = self.frames.take(n)
            self.sent_late += ready is not None
        repeated = ready is None
        if ready is not None:
            frame = ready.frame
            self._last = frame
            self._have_real = True
        else:
            frame = self._last
            if self._have_real:
                self.dropped += 1
            else:
                self.repeats_before_first += 1
        frame.pts = video_pts(n, self.fps)
        frame.time_base = VIDEO_TIME_BASE
        self.sent += 1
        if self.first_sent_at is None:
            self.first_sent_at = time.monotonic()
        if self._on_sent is not None:
            self._on_sent(n, ready, repeated and self._have_real)
        return frame


class AvatarAudioTrack(MediaStreamTrack):
    """The input voice, delayed to leave with the lips: 48 kHz mono, 20 ms frames, pts from the timeline.

    Once :meth:`encode_opus` is called (the answer negotiated Opus), ``recv()`` returns Opus
    packets encoded here instead of frames. aiortc would otherwise upmix every 20 ms frame to
    stereo, encode it at 96 kbit/s on a thread-pool hop and measure its level in a Python loop
    over the samples: about 0.33 ms of CPU per frame (0.13 here), 50 frames a second per session, for a
    voice that is mono. Packets keep the timeline's pts, so RTP time follows the playout clock.
    """

    kind = "audio"

    def __init__(self, clock: PlayoutClock, ring: SampleRing) -> None:
        super().__init__()
        self.clock = clock
        self.ring = ring
        self._next: int | None = None
        self._opus: Any = None
        self.sent = 0
        self.underruns = 0  # frames sent with samples that had not arrived in time

    @property
    def encoder(self) -> str:
        """Who encodes the voice: ``opus-mono`` (this track) or ``aiortc``."""
        return "aiortc" if self._opus is None else "opus-mono"

    def encode_opus(self, bitrate: int = OPUS_BITRATE) -> None:
        """Send Opus packets (mono voice) instead of raw frames from now on."""
        self._opus = open_opus_encoder(bitrate)

    async def recv(self) -> AudioFrame | av.Packet:
        if self.readyState != "live":
            raise MediaStreamError
        try:
            return await self._recv()
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("audio track: error producing a frame; sending silence")
            return self._frame(np.zeros(AUDIO_SAMPLES, np.float32), self._next or 0)

    async def _recv(self) -> AudioFrame | av.Packet:
        dur = AUDIO_SAMPLES / AUDIO_RATE
        at_now = int(np.floor(self.clock.timeline(time.monotonic()) / dur))
        if self._next is None or at_now - self._next > MAX_BEHIND_PERIODS:
            k = max(0, at_now)
        else:
            k = self._next
        self._next = k + 1
        wait = self.clock.wall(k * dur) - time.monotonic()
        if wait > 0:
            await asyncio.sleep(wait)
        pcm, got = self.ring.read(k * AUDIO_SAMPLES, AUDIO_SAMPLES)
        if got < AUDIO_SAMPLES and self.ring.end > 0:
            self.underruns += 1
        self.sent += 1
        frame = self._frame(pcm, k)
        if self._opus is None:
            return frame
        packets = self._opus.encode(frame)
        if len(packets) != 1:  # not one packet per 20 ms frame: let aiortc's encoder take it
            return frame
        packet = packets[0]
        packet.pts = frame.pts  # the encoder's own pts starts at minus its look-ahead
        packet.time_base = AUDIO_TIME_BASE
        return packet

    @staticmethod
    def _frame(pcm: np.ndarray, k: int) -> AudioFrame:
        s16 = (np.clip(pcm, -1.0, 1.0) * 32767.0).astype(np.int16).reshape(1, -1)
        frame = AudioFrame.from_ndarray(s16, format="s16", layout="mono")
        frame.sample_rate = AUDIO_RATE
        frame.pts = k * AUDIO_SAMPLES
        frame.time_base = AUDIO_TIME_BASE
        return frame


def open_opus_encoder(bitrate: int = OPUS_BITRATE) -> Any:
    """libopus for a voice: 48 kHz mono s16 in 20 ms frames, one packet per frame."""
    codec = av.CodecContext.create("libopus", "w")
    codec.bit_rate = bitrate
    codec.format = "s16"
    codec.layout = "mono"
    codec.sample_rate = AUDIO_RATE
    codec.time_base = AUDIO_TIME_BASE
    codec.options = {"application": "voip", "frame_duration": "20"}
    codec.open()
    return codec


class AvatarVp8Encoder(Vp8Encoder):
    """aiortc's VP8 encoder with settings for a rendered face instead of a camera.

    aiortc opens libvpx with the temporal denoiser on (``noise-sensitivity`` 4) and
    ``cpu-used`` -6, tuned for noisy webcams. Rendered frames have no sensor noise to remove,
    and a faster motion search loses nothing on a face that moves a few pixels a frame.
    Outside the renderer's animated region every frame is the photo, so ``static-thresh`` 500
    lets libvpx skip a macroblock whose error against the previous frame is that small (an
    MSE of about 2 per pixel) instead of searching and coding it: at the 1.5 Mb/s a loopback
    or LAN peer's REMB soon allows, a frame encodes in 0.55x the CPU time into 27 % fewer
    bytes (fewer RTP packets), at 46.5 instead of 47.4 dB in the face region; at 500 kb/s in
    0.86x the time at a slightly higher PSNR (``avatar bench encode``, docs/bench/live.md).
    Everything else (bitrate from REMB, keyframes on PLI, packetisation) is aiortc's: this
    only opens the codec before aiortc would.
    """

    OPTIONS = {"noise-sensitivity": "0", "cpu-used": "-12", "static-thresh": "500"}

    def __init__(self, max_bitrate: int = 0) -> None:
        self.max_bitrate = max_bitrate  # bits/s; 0 = aiortc's own maximum
        super().__init__()
        self.target_bitrate = Vp8Encoder.target_bitrate.fget(self)  # apply the cap to the default

    @property
    def target_bitrate(self) -> int:
        return Vp8Encoder.target_bitrate.fget(self)

    @target_bitrate.setter
    def target_bitrate(self, bitrate: int) -> None:
        # aiortc sets this from every REMB the peer sends; the cap holds against all of them
        capped = min(bitrate, self.max_bitrate) if self.max_bitrate > 0 else bitrate
        Vp8Encoder.target_bitrate.fset(self, capped)

    def encode(self, frame: Frame, force_keyframe: bool = False) -> tuple[list[bytes], int]:
        assert isinstance(frame, VideoFrame)
        codec = self.codec
        # the conditions under which aiortc's encode() would (re)open the codec
        if (
            codec is None
            or frame.width != codec.width
            or frame.height != codec.height
            or abs(self.target_bitrate - codec.bit_rate) / codec.bit_rate > 0.1
        ):
            self.codec = _open_vp8(frame.width, frame.height, self.target_bitrate, self.OPTIONS)
        return super().encode(frame, force_keyframe)


def _open_vp8(width: int, height: int, bitrate: int, changes: dict[str, str]) -> Any:
    codec = av.CodecContext.create("libvpx", "w")
    codec.width, codec.height = width, height
    codec.bit_rate = bitrate
    codec.pix_fmt = "yuv420p"
    codec.gop_size = 3000  # keyframes only when the receiver asks (PLI/FIR), as aiortc does
    codec.qmin, codec.qmax = 2, 56
    codec.options = {
        "bufsize": str(bitrate),
        "deadline": "realtime",
        "lag-in-frames": "0",
        "minrate": str(bitrate),  # minrate = maxrate = bitrate: CBR, as aiortc
        "maxrate": str(bitrate),
        "overshoot-pct": "15",
        "partitions": "0",
        "static-thresh": "1",
        "undershoot-pct": "100",
        **changes,
    }
    codec.thread_count = 1  # sessions scale by processes, not by encoder threads
    return codec


def use_opus_packets(pc: Any, track: AvatarAudioTrack) -> bool:
    """Make ``track`` send Opus packets if the answer negotiated Opus for it (else frames stay)."""
    for t in pc.getTransceivers():
        if t.kind != "audio" or t.sender is None or t.sender.track is not track:
            continue
        codecs = getattr(t, "_codecs", None)
        if not codecs or codecs[0].mimeType.lower() != "audio/opus":
            return False
        track.encode_opus()
        return True
    return False


def use_avatar_encoder(pc: Any, max_kbps: int = 0) -> bool:
    """Give the VP8 video sender of ``pc`` an :class:`AvatarVp8Encoder` (after negotiation),
    its bitrate capped at ``max_kbps`` (0: no cap).

    aiortc creates its encoder lazily, only if none is set; this sets ours first. Returns
    False (aiortc's own encoder stays) for another codec or an aiortc without the attribute.
    """
    for t in pc.getTransceivers():
        if t.kind != "video" or t.sender is None or not getattr(t, "_codecs", None):
            continue
        if t._codecs[0].mimeType.lower() != "video/vp8":
            return False
        if not hasattr(t.sender, "_RTCRtpSender__encoder"):
            return False
        t.sender._RTCRtpSender__encoder = AvatarVp8Encoder(max_bitrate=1000 * max_kbps)
        return True
    return False
