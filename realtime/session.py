"""One live session: the wiring and lifecycle of one peer.

Audio from the peer goes through :class:`~realtime.ingest.AudioIngest` (timeline at
16 kHz), :class:`~realtime.vad.VoiceActivity` (silence -> zeros), the per-session
``MotionStream`` and the shared ``PortraitRenderer`` (both on ``engine.executor``), into
the :class:`~realtime.tracks.FrameBuffer` that the video track sends from. The voice
goes into a :class:`~realtime.tracks.SampleRing` that the audio track replays on the
same playout clock.

The session owns every task it starts; :meth:`LiveSession.aclose` cancels and awaits all
of them and closes the peer connection. It closes itself when the peer closes or fails,
never connects, vanishes (no RTP/RTCP/data-channel traffic for ``vanish_timeout``) or
sends no media for the idle timeout.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import time
import uuid
from collections import deque
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import asdict, dataclass, field, fields
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

import numpy as np
from aiortc import RTCPeerConnection
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack
from av import VideoFrame

from realtime.config import LiveConfig, ServerConfig
from realtime.ingest import RATE, AudioChunk, AudioIngest, frame_to_mono
from realtime.logs import bind_session, session_logger
from realtime.motion import CHANNELS, CONTROL_RANGES, MotionFrame
from realtime.tracks import (
    AdaptiveDelay,
    AvatarAudioTrack,
    AvatarVideoTrack,
    FrameBuffer,
    PlayoutClock,
    ReadyFrame,
    SampleRing,
)
from realtime.vad import VoiceActivity
from realtime.yuv import I420Converter, i420_frame

if TYPE_CHECKING:
    from realtime.engine import Engine
    from realtime.metrics import Metrics
    from realtime.renderer import PortraitRenderer

log = logging.getLogger(__name__)

# A peer that sends nothing (no RTP, no RTCP, no data-channel message) this long is gone. Receiver
# reports come every 0.5-1.5 s (aiortc) or ~1 s (Chrome), so 4 s is several missed in a row; with
# the 0.25 s watchdog tick the peer is freed within 5 s.
VANISH_TIMEOUT = 4.0
# A data channel with this label gets pongs but no per-frame motion: a client that only wants the
# heartbeat (the browser page in OBS / kiosk mode) spares the server 25 SCTP messages a second.
CONTROL_LABEL = "control"
# Input stalls longer than this are filled with silence on the wall clock (idle avatar).
STALL = 0.15
# ... and this long unless the peer is talking (see LiveSession._talking). A peer in DTX sends
# nothing in a pause (two packets every 400 ms), and frames may wait only about the latency margin
# for their audio; a packet that comes later than this is placed after the fill, as after any stall.
QUIET_STALL = 0.025
QUIET_FRAMES = 5  # 100 ms without voice is quiet; an Opus encoder enters DTX after 200 ms
TALK_RUN = 3  # packets in a row, with no gap in RTP time between them
RESUMED_FRAMES = 10  # ... after which a quiet peer holds the fill back too: it sends steadily
# How much of the stall the silence leaves unfilled, so resumed speech lands close to now.
FILL_KEEP = 0.02
# The pump wakes on the timeline's 20 ms grid (offset by FILL_KEEP), this long past each point.
PUMP_EVERY = 0.02
PUMP_PAST = 0.001
# Real audio lands on the timeline up to about this late (FILL_KEEP, packetisation, jitter).
ARRIVAL_MARGIN = 0.045
# Time allowed for the model + render of a chunk beyond the model's algorithmic latency.
COMPUTE_MARGIN = 0.045
# How far the timeline may run ahead of the wall clock before quiet input is dropped to catch up
# (MAX_BACKLOG: before any input is). ``ahead`` is measured as a 20 ms frame arrives, before it is
# added, so -20 ms keeps each frame's end at or behind the wall clock, where audio lands in a fresh
# session. Audio ahead of that only adds latency. The former +10 ms let the timeline stay ~30 ms
# ahead after an event-loop stall, adding that much latency for the rest of the session (measured).
MAX_AHEAD = -0.02
MAX_BACKLOG = 0.5
QUIET_RMS = 10 ** (-40 / 20)
# Audio waiting for the model (seconds) above which the sampler takes fewer steps.
DEGRADE_BACKLOG = 0.1
# After a frame was ready only after its send time, sample with one step fewer for this long: the
# host is short of CPU, and a step is ~15 % of a frame's compute. The mouth is unaffected (it comes
# from the sampler's first step); blinks, brows and head motion get a little less varied.
LATE_HOLD = 10.0
# The input must have been silence this long before the playout delay may move down: the
# shortened span then falls in that silence (the delay itself is well under this).
QUIET_FOR = 0.5
_AUDIO_QUEUE = 256  # 20 ms chunks: about 5 s of backlog before audio is dropped


class ParamError(ValueError):
    """A session parameter is out of range or of the wrong type."""


@dataclass(frozen=True)
class SessionParams:
    """Per-session settings; ``from_request`` validates a client's ``params`` object."""

    avatar: str = "default"
    fps: int = 25
    resolution: int = 512
    inference_steps: int = 3
    dynamic_scale: float = 1.0
    motion_scale: float = 1.0
    smooth_motion: float = 0.0
    align_mouth: float = 0.0
    seed: int = 0

    @classmethod
    def defaults(cls, live: LiveConfig) -> SessionParams:
        """The ``[live]`` config's values for every parameter it sets (``seed`` has none)."""
        return cls(**{f.name: getattr(live, f.name) for f in fields(cls) if hasattr(live, f.name)})

    @classmethod
    def from_request(cls, raw: Any, live: LiveConfig, avatar: Any = None) -> SessionParams:
        """Validate ``params`` (a JSON object or None) over the config defaults; raises ParamError."""
        base = asdict(cls.defaults(live))
        if raw is None:
            raw = {}
        if not isinstance(raw, Mapping):
            raise ParamError("'params' must be a JSON object")
        if avatar is not None:
            raw = {**raw, "avatar": avatar}
        unknown = sorted(set(raw) - set(base))
        if unknown:
            raise ParamError(f"unknown parameter(s): {', '.join(unknown)}; known: {', '.join(sorted(base))}")
        values = dict(base)
        for key, value in raw.items():
            values[key] = _check(key, value)
        return cls(**values)


_RANGES: Mapping[str, tuple[float, float]] = MappingProxyType({"resolution": (256, 1024), **CONTROL_RANGES})


def _check(key: str, value: Any) -> Any:
    if key == "avatar":
        if not isinstance(value, str) or not value or len(value) > 128:
            raise ParamError("'avatar' must be 'default' or a key returned by POST /api/avatars")
        return value
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ParamError(f"'{key}' must be a number")
    if key == "fps":
        if value not in (25, 30):
            raise ParamError("'fps' must be 25 or 30")
        return int(value)
    lo, hi = _RANGES[key]
    if key in ("resolution", "inference_steps", "seed"):
        if int(value) != value:
            raise ParamError(f"'{key}' must be an integer")
        value = int(value)
    if not lo <= value <= hi:
        unit = " ms" if key == "align_mouth" else ""
        raise ParamError(f"'{key}' must be in {lo:g}..{hi:g}{unit}, got {value:g}")
    return (
        value if isinstance(value, int) and key in ("resolution", "inference_steps", "seed") else float(value)
    )


@dataclass
class SessionStats:
    """Counters a session reports in ``GET /sessions/{id}``."""

    created: float = field(default_factory=time.time)
    audio_frames_in: int = 0
    speech_frames: int = 0
    silence_filled_s: float = 0.0
    audio_dropped_chunks: int = 0
    frames_rendered: int = 0
    frames_skipped_late: int = 0
    steps_changes: int = 0
    # why each repeated frame repeated: its audio had not arrived (input), the audio was there but
    # the frame was not ready (compute), or the send loop fell behind and skipped it (send)
    repeats: dict[str, int] = field(default_factory=lambda: {"input": 0, "compute": 0, "send": 0})
    latencies: deque = field(default_factory=lambda: deque(maxlen=500))
    # seconds from each rendered frame being ready to its send time (negative: it came too late)
    slack: deque = field(default_factory=lambda: deque(maxlen=1500))
    # seconds from the timeline time of each real audio chunk's end to its arrival here
    arrival_lag: deque = field(default_factory=lambda: deque(maxlen=1500))


class LiveSession:
    """A peer connection, its pipeline tasks and its outgoing tracks."""

    def __init__(
        self,
        pc: RTCPeerConnection,
        engine: Engine,
        metrics: Metrics,
        params: SessionParams,
        renderer: PortraitRenderer,
        server: ServerConfig,
        placeholder: np.ndarray,
        *,
        session_id: str | None = None,
        on_closed: Callable[[LiveSession], Awaitable[None] | None] | None = None,
        vanish_timeout: float = VANISH_TIMEOUT,
        margin_ms: float = (ARRIVAL_MARGIN + COMPUTE_MARGIN) * 1000.0,
        margin_max_ms: float | None = None,
    ) -> None:
        from realtime.generator import MotionControls, MotionStream

        self.id = session_id or uuid.uuid4().hex[:12]
        self.pc = pc
        self.engine = engine
        self.metrics = metrics
        self.params = params
        self.renderer = renderer
        self._to_i420 = I420Converter(renderer)
        self._checked_i420 = False
        self.server = server
        self.vanish_timeout = vanish_timeout
        self._on_closed = on_closed
        self.log = session_logger(log, self.id)
        controls = MotionControls(
            inference_steps=params.inference_steps,
            dynamic_scale=params.dynamic_scale,
            motion_scale=params.motion_scale,
            smooth_motion=params.smooth_motion,
            align_mouth=params.align_mouth,
            seed=params.seed,
        ).validated()
        self.stream = MotionStream(engine.motion_model, fps=params.fps, controls=controls)
        self.fps = params.fps
        # the stream's sampler steps, lowered under overload (see _adapt_steps)
        self._full_steps: int | None = getattr(self.stream, "steps", None)
        # Frame n needs audio up to n/fps + lookahead (+ any align_mouth hold): latency_ms minus the
        # chunk term, which only counts how long a sample between two frame times waits for one.
        chunk_ms = getattr(self.stream, "chunk_frames", 1) * 1000.0 / self.fps
        self.model_delay = max(0.0, float(self.stream.latency_ms) - chunk_ms) / 1000.0
        floor = self.model_delay + max(0.0, margin_ms) / 1000.0
        # AdaptiveDelay never lets the ceiling fall below the floor
        ceiling = floor if margin_max_ms is None else self.model_delay + margin_max_ms / 1000.0
        self.clock = PlayoutClock(t0=time.monotonic(), delay=floor)
        self.playout = AdaptiveDelay(self.clock, floor, ceiling)
        self.ingest = AudioIngest()
        self.vad = VoiceActivity()
        self.frames = FrameBuffer(capacity=max(25, int(2.0 * params.fps)))
        self.ring = SampleRing()
        self.stats = SessionStats()
        self.state = "new"
        self.close_reason: str | None = None
        self.outcome = "closed"  # metrics label: closed, failed, connect_timeout, vanished, idle, error, ...
        self.channels: list[Any] = []
        self._audio_q: asyncio.Queue[AudioChunk] = asyncio.Queue(maxsize=_AUDIO_QUEUE)
        self._arrivals: deque[tuple[int, float]] = deque(maxlen=512)  # (chunk end clock, arrival wall)
        self._tasks: set[asyncio.Task[Any]] = set()
        self._closing: asyncio.Task[None] | None = None
        self._closed = asyncio.Event()
        self._last_real_audio = 0.0
        self._in_a_row = 0  # audio frames in a row since the last gap in the peer's RTP time
        self._last_speech = -math.inf  # when the input was last speech (the delay moves down only in quiet)
        self._late_at = -LATE_HOLD  # when a frame was last ready after its send time
        self._last_media = time.monotonic()
        self._last_seen = time.monotonic()
        self._connected_at: float | None = None
        self._answered_at: float | None = None
        self._has_audio_input = False
        # the rest pose, rendered by the caller off the event loop, shows until the first frame
        self.video = AvatarVideoTrack(
            self.clock,
            self.fps,
            self.frames,
            self._to_video_frame(placeholder),
            on_sent=self._on_frame_sent,
            on_encoded=self.metrics.encode_seconds.observe,
        )
        self.audio = AvatarAudioTrack(self.clock, self.ring)

    # -- wiring ---------------------------------------------------------------
    def start(self) -> None:
        """Start the pipeline tasks (call once the answer is ready) and the lifecycle watchdog."""
        self._answered_at = time.monotonic()
        self.clock.t0 = time.monotonic()
        self.state = "connecting"
        self._spawn(self._pump(), "pump")
        self._spawn(self._infer(), "infer")
        self._spawn(self._watchdog(), "watchdog")

        @self.pc.on("connectionstatechange")
        async def _on_state() -> None:
            st = self.pc.connectionState
            self.log.info("connection state %s", st)
            if st == "connected" and self._connected_at is None:
                self._connected_at = time.monotonic()
                self._last_seen = time.monotonic()
                self._last_media = time.monotonic()
                self.state = "connected"
            elif st in ("failed", "closed"):
                self.close_soon(f"peer connection {st}", "failed" if st == "failed" else "closed")

    def add_input(self, track: MediaStreamTrack) -> None:
        """Consume an incoming track: audio feeds the pipeline; anything else is drained."""
        self.log.info("incoming %s track", track.kind)
        if track.kind == "audio" and not self._has_audio_input:
            # one voice drives the avatar; a second audio track is drained so it cannot pile up
            self._has_audio_input = True
            self._spawn(self._consume_audio(track), f"in-{track.kind}")
        else:
            self._spawn(self._drain(track), f"in-{track.kind}")

    def add_channel(self, channel: Any) -> None:
        """A data channel from the client: motion goes out on it (unless it is labelled ``control``),
        any message is a heartbeat."""
        self.channels.append(channel)
        self.log.info("data channel %r", channel.label)

        @channel.on("message")
        def _on_message(message: Any) -> None:
            self._last_seen = time.monotonic()
            if isinstance(message, str) and message.startswith("{"):
                with contextlib.suppress(ValueError):
                    msg = json.loads(message)
                    if isinstance(msg, dict) and msg.get("type") == "ping":
                        self._send(
                            channel, {"type": "pong", "t": msg.get("t"), "latency": self.latency_p50()}
                        )

        @channel.on("close")
        def _on_close() -> None:
            if channel in self.channels:
                self.channels.remove(channel)

    def _spawn(self, coro: Awaitable[Any], name: str) -> None:
        task = asyncio.ensure_future(self._guard(coro, name))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _guard(self, coro: Awaitable[Any], name: str) -> None:
        bind_session(self.id)
        try:
            await coro
        except asyncio.CancelledError:
            raise
        except Exception:
            self.log.exception("task %s failed; closing the session", name)
            self.close_soon(f"internal error in {name}", "error")

    # -- audio in -------------------------------------------------------------
    async def _consume_audio(self, track: MediaStreamTrack) -> None:
        while True:
            try:
                frame = await track.recv()
            except MediaStreamError:
                self.log.info("incoming audio ended")
                return
            now = time.monotonic()
            self._last_media = self._last_seen = now
            self.stats.audio_frames_in += 1
            if self._should_skip(frame, now):
                self._last_real_audio = now
                self.ingest.skip()
                continue
            try:
                chunks = self.ingest.push_frame(frame)
            except Exception:  # a malformed frame must not end the session
                self.log.exception("could not ingest an audio frame")
                continue
            for chunk in chunks:
                self._on_audio(chunk, now)
            self._in_a_row = 0 if self.ingest.after_gap else self._in_a_row + 1
            if self._in_a_row >= RESUMED_FRAMES or self._talking():
                # not the one or two packets a peer in DTX sends every 400 ms in a pause: they do
                # not hold the fill back, the pause goes on and frames must not wait for the next
                self._last_real_audio = now

    def _talking(self) -> bool:
        """Voice of late, in a run of TALK_RUN packets or more: a gap in the input is waited for longer.

        A peer in DTX sends one or two packets every 400 ms in a pause; comfort noise may sound like
        voice to the detector, but never makes a run.
        """
        return self._in_a_row >= TALK_RUN - 1 and self.vad.unvoiced_run < QUIET_FRAMES

    def _should_skip(self, frame: Any, now: float) -> bool:
        """Catch up when the timeline runs ahead of the wall clock (a burst after a network stall).

        Audio that arrives faster than real time would otherwise add its backlog to the latency
        for the rest of the session. Quiet frames are dropped first; a large backlog is dropped
        whatever it holds.
        """
        ahead = self.ingest.clock / RATE - (now - self.clock.t0)
        if ahead <= MAX_AHEAD:
            return False
        if ahead > MAX_BACKLOG:
            return True
        if self.vad.speech:
            return False
        try:
            mono, _ = frame_to_mono(frame)
        except Exception:
            return False
        return bool(len(mono)) and float(np.sqrt(np.mean(np.square(mono)))) < QUIET_RMS

    async def _drain(self, track: MediaStreamTrack) -> None:
        with contextlib.suppress(MediaStreamError):
            while True:
                await track.recv()
                self._last_seen = time.monotonic()

    def _on_audio(self, chunk: AudioChunk, arrival: float) -> None:
        self.ring.write(chunk.start * 3, chunk.pcm48)
        gated, speech = self.vad.process(chunk.pcm) if chunk.real else (chunk.pcm, False)
        if chunk.real:
            self._arrivals.append((chunk.end, arrival))
            self.stats.arrival_lag.append(arrival - self.clock.t0 - chunk.end / RATE)
            if speech:
                self.stats.speech_frames += 1
                self._last_speech = arrival
        else:
            self.stats.silence_filled_s += len(chunk.pcm) / RATE
        try:
            self._audio_q.put_nowait(AudioChunk(chunk.start, gated, chunk.pcm48, chunk.real))
        except asyncio.QueueFull:
            # the model is hopelessly behind: dropping keeps memory bounded; video repeats frames
            self.stats.audio_dropped_chunks += 1
            if self.stats.audio_dropped_chunks % 50 == 1:
                self.log.warning(
                    "inference backlog full; dropping audio (%d chunks)", self.stats.audio_dropped_chunks
                )

    async def _pump(self) -> None:
        """Keep the timeline on the wall clock: fill input stalls with silence (idle motion).

        It wakes just after the wall clock passes a point of the timeline's 20 ms grid plus
        FILL_KEEP. The audio a frame needs ends on whole 10 ms mel hops: at 25 fps always on that
        grid, at 30 fps for two frames in three (the third waits 10 ms). A filled frame is then made
        as soon as FILL_KEEP allows. Waking every 20 ms at any phase, as before, made filled frames
        (a peer in DTX: its every pause) wait 10 ms on average and up to 20 ms more than that.
        """
        woke = time.monotonic()
        while True:
            phase = (woke - self.clock.t0 - FILL_KEEP) % PUMP_EVERY
            await asyncio.sleep(PUMP_EVERY - phase + PUMP_PAST)
            now, slept = time.monotonic(), time.monotonic() - woke
            woke = now
            if slept > 0.06:
                # the event loop itself stalled: audio may be queued behind us; let it land first,
                # or the fill would push the timeline ahead and add the stall to the latency
                continue
            stall = STALL if self._talking() else QUIET_STALL
            if now - self._last_real_audio < stall:
                continue
            target = int((now - self.clock.t0 - FILL_KEEP) * RATE)
            missing = target - self.ingest.clock
            if missing > 0:
                for chunk in self.ingest.push_silence(missing):
                    self._on_audio(chunk, now)

    # -- model + render -------------------------------------------------------
    async def _infer(self) -> None:
        loop = asyncio.get_running_loop()
        parts: list[np.ndarray] = []
        while True:
            parts.append((await self._audio_q.get()).pcm)
            while not self._audio_q.empty():
                parts.append(self._audio_q.get_nowait().pcm)
            if sum(len(p) for p in parts) < self.stream.samples_until_frame():
                # no frame would come of it (a 20 ms packet, half a frame): it goes with the audio that
                # completes one, which saves an executor hand-off without delaying any frame
                continue
            pcm = np.concatenate(parts) if len(parts) > 1 else parts[0]
            parts = []
            self._adapt_steps(len(pcm) / RATE)
            last, skipped = await loop.run_in_executor(self.engine.executor, self._compute, pcm, loop)
            if skipped is not None:  # frames too late to render: the delay must rise for them too
                self._adapt_delay(skipped, time.monotonic())
            if last is not None:
                self._deliver(last)

    def _deliver(self, item: ReadyFrame) -> None:
        """A rendered frame goes to the video track (event loop side)."""
        now = time.monotonic()
        slack = self.clock.wall(item.index / self.fps) - now
        self.stats.slack.append(slack)
        if slack < 0:
            self._late_at = now
        self.frames.put(item)
        self._adapt_delay(slack, now)

    def _adapt_delay(self, slack: float, now: float) -> None:
        """Let the playout delay follow the host: later frames instead of repeated ones (AdaptiveDelay)."""
        if self.video.first_sent_at is None:
            return  # the first frame leaves at once, whatever the clock says
        before = self.clock.delay
        change = self.playout.observe(slack, now, quiet=now - self._last_speech > QUIET_FOR)
        if change:
            self.metrics.playout_delay_changes.labels(direction="raised" if change > 0 else "lowered").inc()
            self.log.info(
                "playout delay %.0f -> %.0f ms (frame ready %.0f ms before its send time)",
                before * 1000,
                self.clock.delay * 1000,
                slack * 1000,
            )

    def _adapt_steps(self, backlog: float) -> None:
        """Under overload, sample with fewer steps until the backlog clears (late frames are worse).

        ``backlog`` is the audio (seconds) waiting for the model. Above DEGRADE_BACKLOG the
        sampler drops to half its steps, above twice that to one step. While frames have come
        late in the last LATE_HOLD seconds it keeps one step fewer than requested. Otherwise it
        returns to the requested steps once the backlog is back under one 20 ms chunk.
        """
        full = self._full_steps
        if full is None:
            return
        late = time.monotonic() - self._late_at < LATE_HOLD
        if backlog > 2 * DEGRADE_BACKLOG:
            steps = 1
        elif backlog > DEGRADE_BACKLOG:
            steps = max(1, full // 2)
        elif late:
            steps = min(self.stream.steps, max(1, full - 1))
        elif backlog <= 0.021:
            steps = full
        else:
            return
        if steps != self.stream.steps:
            self.log.info(
                "sampler steps %d -> %d (model backlog %.0f ms%s)",
                self.stream.steps,
                steps,
                backlog * 1000,
                ", frames late" if late else "",
            )
            self.stream.steps = steps
            self.stats.steps_changes += 1

    def _compute(
        self, pcm: np.ndarray, loop: asyncio.AbstractEventLoop
    ) -> tuple[ReadyFrame | None, float | None]:
        """Executor side: motion for the new audio, then render the frames that can still be on time.

        Audio that comes in a burst (after a network or host stall) makes several frames. Each but
        the last goes to the event loop as soon as it is drawn, not after the frames behind it: the
        first is the one nearest its send time. Returns the last frame (the executor's own hand-off
        carries it) and the slack (negative) of the latest of the frames skipped as too late.
        """
        t = time.perf_counter()
        motions: list[MotionFrame] = self.stream.push(pcm, RATE)
        if motions:
            self.metrics.model_seconds.observe(time.perf_counter() - t)
        pending: ReadyFrame | None = None
        skipped: float | None = None
        now = time.monotonic()
        started = self.video.first_sent_at is not None
        for i, m in enumerate(motions):
            due = self.clock.wall(m.index / self.fps)
            late = due < now - self.video.grace  # it would repeat even if drawn at once
            # before the peer is watching only the newest frame matters (it becomes the first one)
            if late or (not started and i < len(motions) - 1):
                self.stats.frames_skipped_late += 1
                if late:
                    self._late_at = now
                    skipped = due - now if skipped is None else min(skipped, due - now)
                continue
            if pending is not None:
                loop.call_soon_threadsafe(self._deliver, pending)
            t = time.perf_counter()
            frame = self._render_frame(m.values)
            self.metrics.render_seconds.observe(time.perf_counter() - t)
            self.stats.frames_rendered += 1
            payload = {
                "frame": m.index,
                "t": round(m.index / self.fps, 4),
                "speech": bool(m.speech),
                "channels": m.to_dict(),
            }
            pending = ReadyFrame(m.index, frame, payload)
        return pending, skipped

    def _render_frame(self, values: np.ndarray) -> VideoFrame:
        """The video frame of one motion vector, straight to I420 where the renderer allows."""
        if self._to_i420.box is None:
            return self._to_video_frame(self.renderer.render(values))
        # only the animated region is drawn and converted; the rest are the photo's planes
        return i420_frame(self._to_i420.region(self.renderer.render_region(values)))

    def _to_video_frame(self, rgb: np.ndarray) -> VideoFrame:
        # Convert to the encoder's format here, on the executor, not in aiortc's encode thread;
        # the first frame checks the renderer's roi contract that region-only conversion relies on.
        check, self._checked_i420 = not self._checked_i420, True
        yuv = self._to_i420(np.ascontiguousarray(rgb), check=check)
        return VideoFrame.from_ndarray(yuv, format="yuv420p")

    # -- video out ------------------------------------------------------------
    def _on_frame_sent(self, n: int, ready: ReadyFrame | None, dropped: bool) -> None:
        if n >= 0:  # n < 0: a frame skipped to catch up, never sent
            self.metrics.frames_sent.inc()
        if dropped:
            self.metrics.frames_dropped.inc()
            self.stats.repeats[self._repeat_cause(n)] += 1
        if ready is None or n < 0:
            return
        latency = self._latency_of(n)
        if latency is not None:
            self.stats.latencies.append(latency)
            self.metrics.audio_to_mouth_seconds.observe(latency)
        targets = [ch for ch in self.channels if getattr(ch, "label", "") != CONTROL_LABEL]
        if targets and ready.payload is not None:
            msg = {**ready.payload, "latency": None if latency is None else round(latency, 4)}
            for ch in targets:
                self._send(ch, msg)

    def _repeat_cause(self, n: int) -> str:
        """Why frame ``n`` repeated: which side of the pipeline to look at first."""
        if n < 0:
            return "send"
        needed = (n / self.fps + self.model_delay) * RATE
        return "input" if self.ingest.clock < needed else "compute"

    def _latency_of(self, n: int) -> float | None:
        """Wall time from the arrival of frame n's audio sample to now (only for real audio)."""
        pos = int(n * RATE / self.fps)
        # the chunk that carried sample ``pos``: the oldest one ending after it. Search from the
        # newest end, since the sample arrived a playout delay (a few chunks) ago, not 10 s ago.
        found: tuple[int, float] | None = None
        for item in reversed(self._arrivals):
            if item[0] <= pos:
                break
            found = item
        if found is None:
            return None
        end, arrival = found
        if end - pos > 0.1 * RATE:
            return None  # the sample was silence the session filled in, not peer audio
        return time.monotonic() - arrival

    def latency_p50(self) -> float | None:
        if not self.stats.latencies:
            return None
        return round(float(np.median(self.stats.latencies)), 4)

    def _send(self, channel: Any, msg: dict) -> None:
        if getattr(channel, "readyState", "") != "open":
            return
        # a slow consumer must not grow SCTP buffers without bound: skip when backed up
        if getattr(channel, "bufferedAmount", 0) > 256 * 1024:
            return
        with contextlib.suppress(Exception):
            channel.send(json.dumps(msg, separators=(",", ":")))

    # -- lifecycle ------------------------------------------------------------
    async def _watchdog(self) -> None:
        idle = self.server.session_idle_timeout
        fps_mark: tuple[float, int] | None = None
        rtcp_checked = 0.0
        woke = time.monotonic()
        while True:
            await asyncio.sleep(0.25)
            now = time.monotonic()
            if now - woke > 1.0:
                # this process was not running for a while: the peer's silence is not evidence
                self._last_seen = max(self._last_seen, now)
            woke = now
            if self.video.first_sent_at is not None:
                if fps_mark is None:
                    fps_mark = (now, self.video.sent - self.video.dropped)
                elif now - fps_mark[0] >= 1.0:
                    fresh = self.video.sent - self.video.dropped  # repeats are not delivered frames
                    self.metrics.session_fps.observe((fresh - fps_mark[1]) / (now - fps_mark[0]))
                    fps_mark = (now, fresh)
            if self._connected_at is None:
                if now - (self._answered_at or now) > self.server.connect_timeout:
                    self.close_soon("ICE did not connect in time", "connect_timeout")
                    return
                continue
            if now - rtcp_checked >= 1.0:  # getStats builds whole reports: once a second is enough
                rtcp_checked = now
                await self._refresh_rtcp_seen()
            if now - self._last_seen > self.vanish_timeout:
                self.close_soon(f"peer vanished (nothing received for {self.vanish_timeout:g} s)", "vanished")
                return
            if idle > 0 and now - self._last_media > idle:
                self.close_soon(f"no media for {idle:g} s", "idle")
                return

    async def _refresh_rtcp_seen(self) -> None:
        """Receiver reports for our tracks prove the peer is alive even when it sends no audio."""
        for sender in self.pc.getSenders():
            with contextlib.suppress(Exception):
                report = await sender.getStats()
                for stat in report.values():
                    if getattr(stat, "type", "") == "remote-inbound-rtp":
                        seen = stat.timestamp.timestamp()
                        age = time.time() - seen
                        self._last_seen = max(self._last_seen, time.monotonic() - age)

    def close_soon(self, reason: str, outcome: str | None = None) -> None:
        """Start closing (idempotent, safe from callbacks)."""
        if self._closing is None and self.state not in ("closing", "closed"):
            self.close_reason = reason
            if outcome is not None:
                self.outcome = outcome
            self._closing = asyncio.ensure_future(self.aclose(reason))

    async def aclose(self, reason: str = "closed") -> None:
        """Cancel and await every task, stop the tracks and close the peer connection."""
        if self.state == "closed":
            await self._closed.wait()
            return
        if self.state == "closing":
            await self._closed.wait()
            return
        self.state = "closing"
        self.close_reason = self.close_reason or reason
        self.log.info("closing: %s", self.close_reason)
        current = asyncio.current_task()
        tasks = [t for t in self._tasks if t is not current]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self.video.stop()
        self.audio.stop()
        with contextlib.suppress(Exception):
            await self.pc.close()
        self.state = "closed"
        self._closed.set()
        if self._on_closed is not None:
            result = self._on_closed(self)
            if asyncio.iscoroutine(result):
                await result

    # -- reporting ------------------------------------------------------------
    def info(self) -> dict[str, Any]:
        """A JSON-able summary for the session endpoints."""
        now = time.monotonic()
        first = (
            None
            if self.video.first_sent_at is None or self._answered_at is None
            else round(self.video.first_sent_at - self._answered_at, 4)
        )
        return {
            "session_id": self.id,
            "state": self.state,
            "connection": self.pc.connectionState,
            "close_reason": self.close_reason,
            "params": asdict(self.params),
            "size": list(self.renderer.size),
            "created": self.stats.created,
            "age_s": round(now - (self._answered_at or now), 3),
            "pipeline_delay_ms": round(self.clock.delay * 1000, 1),
            # the playout delay moves between these with the host's speed (live.latency_margin_max_ms)
            "pipeline_delay_range_ms": [
                round(self.playout.floor * 1000, 1),
                round(self.playout.ceiling * 1000, 1),
            ],
            "pipeline_delay_max_ms": round(self.playout.highest * 1000, 1),
            "pipeline_delay_changes": {"raised": self.playout.raised, "lowered": self.playout.lowered},
            # (timeline s, delay ms) of the latest changes: which delay held when
            "pipeline_delay_history": [[t, round(d * 1000, 1)] for t, d in self.playout.changes],
            "model_latency_ms": float(self.stream.latency_ms),
            "first_frame_s": first,
            "frames_sent": self.video.sent,
            "frames_dropped": self.video.dropped,
            # frames that came after their send time but within the track's grace: sent late, not repeated
            "frames_sent_late": self.video.sent_late,
            "frames_dropped_by_cause": dict(self.stats.repeats),
            "frames_rendered": self.stats.frames_rendered,
            "frames_skipped_late": self.stats.frames_skipped_late,
            "frames_idle": getattr(self.stream, "idle_frames", None),
            "sampler_steps": getattr(self.stream, "steps", None),
            "sampler_step_changes": self.stats.steps_changes,
            "audio_frames_in": self.stats.audio_frames_in,
            "audio_frames_out": self.audio.sent,
            "speech_frames": self.stats.speech_frames,
            "silence_filled_s": round(self.stats.silence_filled_s, 3),
            "audio_dropped_chunks": self.stats.audio_dropped_chunks,
            "rtp_gaps_filled_s": round(self.ingest.gaps_filled / RATE, 3),
            "audio_frames_skipped": self.ingest.skipped,
            "audio_packets_late": self._audio_packets_late(),
            **self._audio_decoder(),
            "latency_ms": _percentiles_ms(self.stats.latencies, (50, 95)),
            # how much earlier than needed frames are ready: the headroom left in the latency margin
            "frame_slack_ms": _percentiles_ms(self.stats.slack, (1, 5, 50)),
            # how long after its timeline time real audio reached the pipeline (packetisation,
            # network, jitter buffer, decoding): the rest of the playout delay is left for compute
            "audio_arrival_lag_ms": _percentiles_ms(self.stats.arrival_lag, (50, 95, 99)),
            "data_channels": [getattr(c, "label", "") for c in self.channels],
            "channels": list(CHANNELS),
            "video_encoder": self._video_encoder(),
            # where the peer's bandwidth estimate (capped by live.max_video_kbps) has set the encoder
            "video_target_kbps": self._video_target_kbps(),
            "audio_encoder": self.audio.encoder,
        }

    def _audio_receiving(self, part: str) -> Any:
        """A part of the peer audio's receiver (``jitter_buffer``, ``decoder_queue``), or None."""
        for t in self.pc.getTransceivers():
            if t.kind == "audio" and t.receiver is not None:
                return getattr(t.receiver, f"_RTCRtpReceiver__{part}", None)
        return None

    def _audio_packets_late(self) -> int | None:
        """Peer audio packets dropped for arriving after a newer one (live_api.AudioPacketBuffer)."""
        return getattr(self._audio_receiving("jitter_buffer"), "late", None)

    def _audio_decoder(self) -> dict[str, Any]:
        """Where the peer's audio is decoded (live_api.InlineAudioDecoder) and the packets it rejected."""
        errors = getattr(self._audio_receiving("decoder_queue"), "errors", None)
        return {"audio_decoder": "aiortc" if errors is None else "inline", "audio_decode_errors": errors}

    def _video_sender_encoder(self) -> Any:
        """The video sender's encoder (None before the first frame or without video)."""
        for t in self.pc.getTransceivers():
            if t.kind == "video" and t.sender is not None:
                return getattr(t.sender, "_RTCRtpSender__encoder", None)
        return None

    def _video_encoder(self) -> str | None:
        encoder = self._video_sender_encoder()
        return None if encoder is None else type(encoder).__name__

    def _video_target_kbps(self) -> int | None:
        bitrate = getattr(self._video_sender_encoder(), "target_bitrate", None)
        return None if bitrate is None else round(bitrate / 1000)


def _percentiles_ms(seconds: deque, qs: tuple[int, ...]) -> dict[str, float] | None:
    """``{"p50": ms, ...}`` of a window of durations in seconds; None while it is empty."""
    if not seconds:
        return None
    values = np.percentile(np.asarray(seconds), qs) * 1000
    return {f"p{q}": round(float(v), 1) for q, v in zip(qs, values, strict=True)}
