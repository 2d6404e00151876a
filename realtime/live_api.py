"""WebRTC signaling and the live-session endpoints.

``POST /offer`` answers a peer's SDP offer and starts a :class:`~realtime.session.LiveSession`;
``GET/DELETE /sessions[/{id}]`` inspect and end sessions; ``POST /api/avatars`` registers a
portrait. Sessions live in the app (``SESSIONS_KEY``) and are closed on shutdown.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import queue
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web
from aiortc import RTCConfiguration, RTCIceServer, RTCPeerConnection, RTCSessionDescription
from aiortc.codecs import get_decoder
from aiortc.jitterbuffer import JitterBuffer, JitterFrame
from aiortc.rtp import RtpPacket

from realtime.logs import session_logger
from realtime.metrics import Metrics
from realtime.motion import neutral
from realtime.session import LiveSession, ParamError, SessionParams
from realtime.tracks import use_avatar_encoder, use_opus_packets

log = logging.getLogger(__name__)


class SessionRegistry:
    """Open sessions plus the slots reserved by offers still being answered."""

    def __init__(self) -> None:
        self.sessions: dict[str, LiveSession] = {}
        self.pending = 0

    def __len__(self) -> int:
        return len(self.sessions) + self.pending


SESSIONS_KEY = web.AppKey("live_sessions", SessionRegistry)
RETRY_AFTER_S = 5
# A packet this many sequence numbers behind the newest one is a sender that restarted, not a late one.
MAX_MISORDER = 100


def json_reply(data: Any, status: int = 200) -> web.Response:
    """A JSON answer; a 503 (full or unavailable) says when to retry."""
    headers = {"Retry-After": str(RETRY_AFTER_S)} if status == 503 else None
    return web.json_response(data, status=status, headers=headers)


def _error(status: int, message: str, **extra: Any) -> web.Response:
    return json_reply({"success": False, "error": message, **extra}, status)


def server_full(request: web.Request, max_sessions: int) -> web.Response:
    """503 for an offer while every live-session slot is taken (counted in the rejection metric)."""
    from realtime.app import METRICS_KEY

    request.app[METRICS_KEY].http_rejected.labels(reason="sessions_full").inc()
    return _error(503, f"server full: {max_sessions} live sessions are open; retry later")


def ice_configuration(servers: tuple[dict[str, Any], ...]) -> RTCConfiguration:
    """The configured ICE servers; an empty list (never None: aiortc would add Google STUN)."""
    ice = []
    for s in servers:
        urls = s.get("urls") or s.get("url")
        ice.append(RTCIceServer(urls=urls, username=s.get("username"), credential=s.get("credential")))
    return RTCConfiguration(iceServers=ice)


class AudioPacketBuffer(JitterBuffer):
    """aiortc's receive jitter buffer for audio, without the wait: an Opus packet is a whole frame.

    aiortc's buffer releases a packet only once the next one has arrived (it cannot tell a video
    frame is complete before), which costs every audio packet 20 ms of latency; a lost packet
    holds the audio back until 16 more have come (320 ms); and a peer's DTX packet waits for the
    next one, 400 ms later. The ingest places audio by RTP timestamp, so a missing packet becomes
    silence of its length and order is all that matters: every packet newer than the last one
    released goes out at once; late and duplicate ones are dropped.
    """

    def __init__(self, on_drop: Callable[[], None] | None = None) -> None:
        super().__init__(capacity=16)
        self._newest: int | None = None
        self.late = 0  # packets dropped for arriving after a newer one
        self._on_drop = on_drop

    def add(self, packet: RtpPacket) -> tuple[bool, JitterFrame | None]:
        seq = packet.sequence_number
        if self._newest is not None:
            behind = (self._newest - seq) & 0xFFFF
            if behind < MAX_MISORDER:  # a duplicate (0) or overtaken by a newer packet
                self.late += 1
                if self._on_drop is not None:
                    self._on_drop()
                return False, None
        self._newest = seq
        return False, JitterFrame(data=packet._data, timestamp=packet.timestamp)


class InlineAudioDecoder:
    """Stands in for an aiortc audio receiver's decoder queue: decodes each packet on the event loop.

    aiortc hands every packet to a decoder thread through a ``queue.Queue`` and the thread hands the
    frame back with ``run_coroutine_threadsafe`` (a Task per packet). The two thread switches cost
    more than decoding 20 ms of Opus, and under load each waits for a core (``avatar bench
    receive``: 0.27-0.34 against 0.13-0.19 ms of CPU a packet, the loop's own work included; p99
    hand-off 3.8 against 0.14 ms with both cores busy). Here ``put`` decodes at once, with aiortc's
    own decoder, straight into the track's queue. A packet it cannot decode is counted and dropped:
    nothing a peer sends may raise into aiortc's receive path. aiortc's thread still starts and
    waits in ``get`` for the end marker, which it passes on to end the track, as before.
    """

    def __init__(self, track_queue: asyncio.Queue[Any], on_drop: Callable[[], None] | None = None) -> None:
        self._out = track_queue
        self._on_drop = on_drop
        self._end: queue.Queue[None] = queue.Queue(maxsize=1)
        self._decoder: Any = None
        self._codec_name: str | None = None
        self.errors = 0  # packets the decoder rejected (dropped: the ingest hears silence there)

    def put(self, task: tuple[Any, JitterFrame] | None) -> None:
        if task is None:  # aiortc stopping its decoder thread
            with contextlib.suppress(queue.Full):
                self._end.put_nowait(None)
            return
        codec, encoded = task
        if not encoded.data:
            # no audio in it (e.g. padding only); to FFmpeg an empty packet means "flush": the
            # decoder would then refuse every later packet, as aiortc's own thread does
            return
        if codec.name != self._codec_name:
            self._decoder, self._codec_name = get_decoder(codec), codec.name
        try:
            frames = self._decoder.decode(encoded)
        except Exception as exc:  # av.FFmpegError for bad Opus; whatever a codec raises, not ours to pass on
            self.errors += 1
            if self._on_drop is not None:
                self._on_drop()
            if self.errors % 50 == 1:
                log.warning(
                    "cannot decode the peer's %s audio (%d packets): %s", codec.name, self.errors, exc
                )
            return
        for frame in frames:
            self._out.put_nowait(frame)

    def get(self) -> None:
        """aiortc's decoder thread: it only ever gets the end marker."""
        return self._end.get()


def _receive_audio_inline(pc: RTCPeerConnection, metrics: Metrics) -> None:
    """Give the audio receivers an :class:`AudioPacketBuffer` and an :class:`InlineAudioDecoder`.

    Call after ``setRemoteDescription`` (the receivers' tracks exist) and before the answer (aiortc
    starts its decoder thread with the queue it then has). Harmless if aiortc changes: a receiver
    without these private attributes keeps aiortc's own. Dropped packets count in ``metrics``.
    """
    dropped = metrics.audio_packets_dropped
    for t in pc.getTransceivers():
        receiver = t.receiver
        if t.kind != "audio" or receiver is None:
            continue
        if hasattr(receiver, "_RTCRtpReceiver__jitter_buffer"):
            receiver._RTCRtpReceiver__jitter_buffer = AudioPacketBuffer(dropped.labels(reason="late").inc)
        track_queue = getattr(receiver.track, "_queue", None)
        if isinstance(track_queue, asyncio.Queue) and hasattr(receiver, "_RTCRtpReceiver__decoder_queue"):
            undecodable = dropped.labels(reason="undecodable").inc
            receiver._RTCRtpReceiver__decoder_queue = InlineAudioDecoder(track_queue, undecodable)


def _ask_for_dtx(pc: RTCPeerConnection) -> None:
    """Put ``usedtx=1`` on the answer's Opus (``live.uplink_dtx``): the peer may then stop sending in silence.

    The session fills gaps in the peer's audio with silence on its own clock, soon enough that
    frames do not wait for packets a peer in DTX will not send (``LiveSession._talking``); the
    server is spared receiving, decrypting and decoding 50 packets a second of silence. Without
    Opus, or without aiortc's private codec list, nothing changes.
    """
    for t in pc.getTransceivers():
        if t.kind != "audio":
            continue
        for codec in getattr(t, "_codecs", None) or []:
            if codec.mimeType.lower() == "audio/opus":
                codec.parameters["usedtx"] = 1


async def offer(request: web.Request) -> web.Response:
    """Answer a WebRTC offer: ``{sdp, type, avatar?, params?}`` -> ``{sdp, type, session_id}``."""
    from realtime import ops
    from realtime.app import CONFIG_KEY, ENGINE_KEY, METRICS_KEY

    config, engine, metrics = request.app[CONFIG_KEY], request.app[ENGINE_KEY], request.app[METRICS_KEY]
    registry = request.app[SESSIONS_KEY]
    try:
        payload = await request.json()
    except (json.JSONDecodeError, UnicodeDecodeError):
        return _error(400, 'body must be JSON: {"sdp": ..., "type": "offer"}')
    try:
        sdp = ops.check_offer(payload)
    except ops.OfferError as exc:
        return _error(exc.status, str(exc))
    try:
        params = SessionParams.from_request(payload.get("params"), config.live, avatar=payload.get("avatar"))
    except ParamError as exc:
        return _error(400, str(exc))
    if len(registry) >= config.server.max_sessions:
        return server_full(request, config.server.max_sessions)

    registry.pending += 1
    pc: RTCPeerConnection | None = None
    try:
        loop = asyncio.get_running_loop()
        try:
            bundle = await loop.run_in_executor(engine.executor, engine.avatar, params.avatar)
        except KeyError:
            return _error(
                400, f"unknown avatar {params.avatar!r}: use 'default' or a key from POST /api/avatars"
            )
        renderer = await loop.run_in_executor(engine.executor, engine.renderer, bundle, params.resolution)
        placeholder = await loop.run_in_executor(engine.executor, renderer.render, neutral())

        pc = RTCPeerConnection(ice_configuration(config.server.ice_servers))
        session_id = uuid.uuid4().hex[:12]
        slog = session_logger(log, session_id)

        async def forget(s: LiveSession) -> None:
            if registry.sessions.pop(s.id, None) is not None:
                metrics.sessions_active.dec()
                metrics.sessions_total.labels(outcome=s.outcome).inc()
                slog.info("session closed (%s): %s", s.outcome, s.close_reason)

        session = LiveSession(
            pc,
            engine,
            metrics,
            params,
            renderer,
            config.server,
            placeholder,
            session_id=session_id,
            on_closed=forget,
            margin_ms=config.live.latency_margin_ms,
            margin_max_ms=config.live.latency_margin_max_ms,
        )
        pc.on("track", session.add_input)
        pc.on("datachannel", session.add_channel)
        try:
            await pc.setRemoteDescription(RTCSessionDescription(sdp=sdp, type="offer"))
        except Exception as exc:  # aiortc raises ValueError/KeyError/... on SDP it cannot use
            return _error(400, f"cannot use this SDP offer: {exc or type(exc).__name__}")
        kinds = {t.kind for t in pc.getTransceivers()}
        if "audio" not in kinds:
            return _error(400, "the offer has no audio m-line: the avatar is driven by your audio track")
        _receive_audio_inline(pc, metrics)
        if config.live.uplink_dtx:
            _ask_for_dtx(pc)
        pc.addTrack(session.audio)
        if "video" in kinds:
            pc.addTrack(session.video)
        else:
            slog.info("offer has no video m-line: motion goes out on the data channel only")
        try:
            answer = await pc.createAnswer()
            await pc.setLocalDescription(answer)
        except Exception as exc:
            return _error(400, f"cannot answer this SDP offer: {exc or type(exc).__name__}")
        if "video" in kinds and not use_avatar_encoder(pc, config.live.max_video_kbps):
            slog.info("video codec is not VP8: aiortc's own encoder settings apply")
        if not use_opus_packets(pc, session.audio):
            slog.info("audio codec is not Opus: aiortc encodes the returned voice")
        registry.sessions[session.id] = session
        metrics.sessions_active.inc()
        session.start()
        pc = None  # owned by the session now
        slog.info(
            "session started: avatar=%s %dx%d@%dfps delay=%.0f ms (up to %.0f)",
            params.avatar,
            *renderer.size,
            params.fps,
            session.clock.delay * 1000,
            session.playout.ceiling * 1000,
        )
        local = session.pc.localDescription
        return web.json_response({"sdp": local.sdp, "type": local.type, "session_id": session.id})
    finally:
        registry.pending -= 1
        if pc is not None:
            await pc.close()


def _session(request: web.Request) -> LiveSession:
    sid = request.match_info["session_id"]
    session = request.app[SESSIONS_KEY].sessions.get(sid)
    if session is None:
        raise web.HTTPNotFound(text=f"no live session {sid!r}")
    return session


async def list_sessions(request: web.Request) -> web.Response:
    """All open sessions."""
    from realtime.app import CONFIG_KEY

    registry = request.app[SESSIONS_KEY]
    return web.json_response(
        {
            "sessions": [s.info() for s in registry.sessions.values()],
            "max_sessions": request.app[CONFIG_KEY].server.max_sessions,
        }
    )


async def get_session(request: web.Request) -> web.Response:
    """One session's state and counters."""
    return web.json_response(_session(request).info())


async def delete_session(request: web.Request) -> web.Response:
    """Close a session and free everything it holds."""
    session = _session(request)
    session.outcome = "deleted"
    await session.aclose("deleted by the client")
    return web.json_response({"session_id": session.id, "closed": True})


async def upload_avatar(request: web.Request) -> web.Response:
    """Register a portrait: multipart ``image`` [+ ``expand_ratio``] -> ``{avatar: key, ...}``."""
    from realtime.app import CONFIG_KEY, ENGINE_KEY

    config, engine = request.app[CONFIG_KEY], request.app[ENGINE_KEY]
    if not request.content_type.startswith("multipart/"):
        return _error(
            400, "send multipart/form-data with an 'image' file field (and optionally 'expand_ratio')"
        )
    limit = config.avatars.max_image_bytes
    image: bytes | None = None
    expand_ratio = 0.15
    try:
        reader = await request.multipart()
        async for part in reader:
            if part.name == "image":
                data = bytearray()
                while chunk := await part.read_chunk(65536):
                    data += chunk
                    if len(data) > limit:
                        return _error(413, f"image larger than {limit} bytes")
                image = bytes(data)
            elif part.name == "expand_ratio":
                text = (await part.text()).strip()
                try:
                    expand_ratio = float(text)
                except ValueError:
                    return _error(400, f"'expand_ratio' must be a number, got {text[:32]!r}")
                if not 0.0 <= expand_ratio <= 1.0:
                    return _error(400, "'expand_ratio' must be in 0..1")
            else:
                await part.release()
    except (ValueError, AssertionError) as exc:
        return _error(400, f"malformed multipart body: {exc}")
    if not image:
        return _error(400, "missing 'image' file field")
    from realtime.avatar import AvatarError

    loop = asyncio.get_running_loop()
    try:
        bundle = await loop.run_in_executor(
            engine.executor, lambda: engine.register(image, expand_ratio=expand_ratio)
        )
    except AvatarError as exc:
        status = 413 if exc.code == "image_too_large" else 400
        return _error(status, str(exc), code=exc.code)
    h, w = bundle.image.shape[:2]
    return web.json_response(
        {
            "success": True,
            "avatar": bundle.key,
            "width": int(w),
            "height": int(h),
            "expand_ratio": expand_ratio,
        }
    )


async def close_all(app: web.Application) -> None:
    """``on_shutdown``: close every peer connection."""
    registry = app[SESSIONS_KEY]
    sessions = list(registry.sessions.values())
    for s in sessions:
        s.outcome = "shutdown"
    await asyncio.gather(*(s.aclose("server shutting down") for s in sessions), return_exceptions=True)


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def add_live_routes(
    app: web.Application, offer: Handler, sessions: Handler, get: Handler, delete: Handler
) -> None:
    """The live API's routes, the same in every deployment; avatar uploads are always handled here."""
    app.router.add_post("/offer", offer)
    app.router.add_get("/sessions", sessions)
    app.router.add_get("/sessions/{session_id}", get)
    app.router.add_delete("/sessions/{session_id}", delete)
    # with worker processes the front registers uploads; workers load them from the on-disk cache
    app.router.add_post("/api/avatars", upload_avatar)


def setup_live(app: web.Application) -> None:
    """Register ``POST /offer``, the session endpoints and avatar upload; close sessions on shutdown."""
    app[SESSIONS_KEY] = SessionRegistry()
    add_live_routes(app, offer, list_sessions, get_session, delete_session)
    app.on_shutdown.append(close_all)
