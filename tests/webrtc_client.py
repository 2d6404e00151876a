"""A reusable Python WebRTC client for the avatar server (tests, fuzzing, leak checks, benchmarks).

It sends a PCM signal (e.g. a WAV) as its microphone track, paced in real time, and records
what comes back: video frames and audio frames with their arrival times (``time.monotonic``)
and the per-frame motion messages of the data channel::

    client = AvatarClient(base_url, pcm, 16000)
    answer = await client.connect()            # POST /offer, ICE, DTLS
    await client.wait_frames(50)               # or: await asyncio.sleep(seconds)
    await client.close()
    client.video  # list[ReceivedVideo]; client.audio_pcm() -> 48 kHz mono float32

Arrival times are taken when a packet of the frame first reaches the client, not when
aiortc's jitter buffer releases it (it holds video one frame and audio ``prefetch`` packets).
"""

from __future__ import annotations

import asyncio
import contextlib
import fractions
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import av
import numpy as np
from aiortc import RTCConfiguration, RTCPeerConnection, RTCSessionDescription
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack
from av import AudioFrame, VideoFrame
from scipy.signal import resample_poly

RATE = 48000
FRAME = 960  # 20 ms


class PcmTrack(MediaStreamTrack):
    """An audio track that plays ``pcm`` in real time as 20 ms frames at 48 kHz.

    ``tail``: what to do after the end, ``"silence"`` (keep sending zeros, like an open mic)
    or ``"end"`` (end the track, like a finished file). ``started_at`` is the wall time
    (``time.monotonic``) of the first frame; input sample ``i`` (48 kHz) left at about
    ``started_at + (i // 960) * 0.02``.

    ``dtx``: send Opus as Chromium does when the answer asks for DTX (``usedtx=1``): after
    ``DTX_AFTER`` silent frames, only ``DTX_BURST`` frames in every ``DTX_EVERY`` are sent, the RTP
    timestamps jumping over the rest. ``frames_sent`` counts the packets that left.
    """

    kind = "audio"
    DTX_AFTER = 10  # libopus enters DTX after 200 ms without voice
    DTX_EVERY = 20  # ... and then Chromium sends two packets every 400 ms
    DTX_BURST = 2

    def __init__(self, pcm: np.ndarray, rate: int, tail: str = "silence", dtx: bool = False) -> None:
        super().__init__()
        x = np.asarray(pcm, dtype=np.float32)
        if rate != RATE:
            g = np.gcd(rate, RATE)
            x = resample_poly(x, RATE // g, rate // g).astype(np.float32)
        self.pcm48 = x
        self.tail = tail
        self.started_at: float | None = None
        self._k = 0
        self._silent_run = 0
        self.frames_sent = 0
        self._opus: Any = None
        if dtx:
            from realtime.tracks import open_opus_encoder  # the server's own voice encoder settings

            self._opus = open_opus_encoder()

    def _chunk(self, k: int) -> np.ndarray:
        chunk = np.zeros(FRAME, np.float32)
        part = self.pcm48[k * FRAME : (k + 1) * FRAME]
        chunk[: len(part)] = part
        return chunk

    async def recv(self) -> AudioFrame | av.Packet:
        if self.readyState != "live":
            raise MediaStreamError
        if self.started_at is None:
            self.started_at = time.monotonic()
        while True:
            lo = self._k * FRAME
            if lo >= len(self.pcm48) and self.tail == "end":
                self.stop()
                raise MediaStreamError
            chunk = self._chunk(self._k)
            self._silent_run = 0 if np.any(chunk) else self._silent_run + 1
            dtx = self._opus is not None and self._silent_run > self.DTX_AFTER
            if not dtx or (self._silent_run - self.DTX_AFTER - 1) % self.DTX_EVERY < self.DTX_BURST:
                break
            self._k += 1  # a frame DTX does not send: its time passes without a packet
        wait = self.started_at + self._k * FRAME / RATE - time.monotonic()
        if wait > 0:
            await asyncio.sleep(wait)
        frame = AudioFrame.from_ndarray(
            (np.clip(chunk, -1, 1) * 32767).astype(np.int16).reshape(1, -1), format="s16", layout="mono"
        )
        frame.sample_rate = RATE
        frame.pts = lo
        frame.time_base = fractions.Fraction(1, RATE)
        self._k += 1
        self.frames_sent += 1
        if self._opus is None:
            return frame
        packets = self._opus.encode(frame)
        if not packets:
            return frame  # not expected for 20 ms frames; aiortc's encoder then takes it
        packet = packets[0]
        packet.pts, packet.time_base = lo, fractions.Fraction(1, RATE)  # RTP time jumps over DTX
        return packet

    def sent_at(self, sample48: int) -> float:
        """Wall time at which input sample ``sample48`` (48 kHz index) was handed to the encoder."""
        assert self.started_at is not None
        return self.started_at + (sample48 // FRAME) * FRAME / RATE


@dataclass
class ReceivedVideo:
    arrival: float  # first packet of the frame reached the client
    delivered: float  # aiortc handed the decoded frame over
    pts: int
    image: np.ndarray | None  # RGB, or whatever ``video_transform`` returned


@dataclass
class ReceivedAudio:
    arrival: float
    delivered: float
    pts: int
    pcm: np.ndarray  # 48 kHz mono float32


@dataclass
class AvatarClient:
    """One peer: sends ``pcm`` (at ``rate``) and records the avatar's video, audio and motion."""

    base_url: str
    pcm: np.ndarray
    rate: int = 16000
    avatar: str | None = None
    params: dict[str, Any] | None = None
    data_channel: str | None = "motion"
    tail: str = "silence"
    receive_video: bool = True
    # Called with each decoded video frame; its result is stored (default: the RGB array).
    video_transform: Callable[[VideoFrame], Any] | None = None
    keep_video: bool = True
    audio_prefetch: int | None = 1  # shorten aiortc's receive jitter buffer like the server does
    heartbeat: float = 0.0  # seconds between data-channel pings (0 = none)
    dtx: bool = False  # send Opus with DTX in silence, as a browser does when the answer asks for it
    headers: dict[str, str] = field(default_factory=dict)

    video: list[ReceivedVideo] = field(default_factory=list)
    audio: list[ReceivedAudio] = field(default_factory=list)
    motion: list[tuple[float, dict]] = field(default_factory=list)
    answer: dict[str, Any] | None = None
    answered_at: float | None = None
    offer_sent_at: float | None = None
    video_count: int = 0
    video_ended: bool = False

    def __post_init__(self) -> None:
        self.pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
        self.track = PcmTrack(self.pcm, self.rate, tail=self.tail, dtx=self.dtx)
        self._tasks: list[asyncio.Task[Any]] = []
        self._first_packet: dict[tuple[str, int], float] = {}
        self._origin: dict[str, int] = {}
        self._new_video = asyncio.Event()
        self.channel = None

    @property
    def session_id(self) -> str | None:
        return None if self.answer is None else self.answer.get("session_id")

    async def offer_payload(self) -> dict[str, Any]:
        """Create the local offer (audio sendrecv, video recvonly, data channel) as /offer JSON."""
        self.pc.addTrack(self.track)
        if self.receive_video:
            self.pc.addTransceiver("video", direction="recvonly")
        if self.data_channel:
            # as the browser page opens it (docs/live.md): a lost message never stalls the later ones
            self.channel = self.pc.createDataChannel(self.data_channel, ordered=False, maxRetransmits=0)

            @self.channel.on("message")
            def _on_message(message: Any) -> None:
                if isinstance(message, str):
                    with contextlib.suppress(ValueError):
                        self.motion.append((time.monotonic(), json.loads(message)))

        @self.pc.on("track")
        def _on_track(track: MediaStreamTrack) -> None:
            self._tasks.append(asyncio.ensure_future(self._read(track)))

        await self.pc.setLocalDescription(await self.pc.createOffer())
        payload: dict[str, Any] = {"sdp": self.pc.localDescription.sdp, "type": "offer"}
        if self.avatar is not None:
            payload["avatar"] = self.avatar
        if self.params is not None:
            payload["params"] = self.params
        return payload

    async def connect(self, http: aiohttp.ClientSession | None = None) -> dict[str, Any]:
        """POST the offer and apply the answer. Raises ``RuntimeError`` with the server's error."""
        payload = await self.offer_payload()
        own = http is None
        http = http or aiohttp.ClientSession()
        try:
            self.offer_sent_at = time.monotonic()
            async with http.post(f"{self.base_url}/offer", json=payload, headers=self.headers) as resp:
                body = await resp.json()
                if resp.status != 200:
                    raise RuntimeError(f"/offer -> {resp.status}: {body}")
        finally:
            if own:
                await http.close()
        self.answered_at = time.monotonic()
        self.answer = body
        self._hook_arrivals()
        await self.pc.setRemoteDescription(RTCSessionDescription(sdp=body["sdp"], type=body["type"]))
        if self.heartbeat > 0:
            self._tasks.append(asyncio.ensure_future(self._ping()))
        return body

    def _hook_arrivals(self) -> None:
        """Record when each RTP timestamp's first packet arrives, before any jitter buffer."""
        from aiortc.jitterbuffer import JitterBuffer

        for t in self.pc.getTransceivers():
            receiver = t.receiver
            kind = t.kind
            if kind == "audio" and self.audio_prefetch is not None:
                receiver._RTCRtpReceiver__jitter_buffer = JitterBuffer(
                    capacity=16, prefetch=self.audio_prefetch
                )
            original = receiver._handle_rtp_packet

            async def hooked(
                packet: Any, arrival_time_ms: int, _orig: Any = original, _kind: str = kind
            ) -> None:
                key = (_kind, packet.timestamp)
                if key not in self._first_packet:
                    self._first_packet[key] = time.monotonic()
                    self._origin.setdefault(_kind, packet.timestamp)
                    if len(self._first_packet) > 20000:  # bounded: forget the oldest half
                        for old in list(self._first_packet)[:10000]:
                            del self._first_packet[old]
                await _orig(packet, arrival_time_ms)

            receiver._handle_rtp_packet = hooked

    def _arrival(self, kind: str, pts: int, delivered: float) -> float:
        origin = self._origin.get(kind)
        if origin is None:
            return delivered
        return self._first_packet.get((kind, (origin + pts) % (1 << 32)), delivered)

    async def _read(self, track: MediaStreamTrack) -> None:
        with contextlib.suppress(MediaStreamError):
            while True:
                frame = await track.recv()
                now = time.monotonic()
                arrival = self._arrival(track.kind, int(frame.pts or 0), now)
                if track.kind == "video":
                    self.video_count += 1
                    if self.keep_video:
                        image = (
                            self.video_transform(frame)
                            if self.video_transform is not None
                            else frame.to_ndarray(format="rgb24")
                        )
                        self.video.append(ReceivedVideo(arrival, now, int(frame.pts or 0), image))
                    self._new_video.set()
                else:
                    data = frame.to_ndarray().astype(np.float32) / 32768.0
                    channels = len(frame.layout.channels)
                    mono = data.reshape(-1, channels).mean(axis=1)
                    self.audio.append(ReceivedAudio(arrival, now, int(frame.pts or 0), mono))
        if track.kind == "video":
            self.video_ended = True
            self._new_video.set()

    async def _ping(self) -> None:
        while True:
            await asyncio.sleep(self.heartbeat)
            if self.channel is not None and self.channel.readyState == "open":
                self.channel.send(json.dumps({"type": "ping", "t": time.monotonic()}))

    async def wait_frames(self, n: int, within: float = 20.0) -> None:
        """Wait until ``n`` video frames have arrived (raises ``TimeoutError``)."""
        async with asyncio.timeout(within):
            while self.video_count < n:
                if self.video_ended:
                    raise RuntimeError("the video track ended")
                self._new_video.clear()
                await self._new_video.wait()

    def audio_pcm(self) -> tuple[np.ndarray, np.ndarray]:
        """Received audio as one 48 kHz signal placed by pts, and the arrival time of each 20 ms frame."""
        if not self.audio:
            return np.zeros(0, np.float32), np.zeros(0)
        base = self.audio[0].pts
        end = max(a.pts - base + len(a.pcm) for a in self.audio)
        out = np.zeros(end, np.float32)
        for a in self.audio:
            out[a.pts - base : a.pts - base + len(a.pcm)] = a.pcm
        return out, np.array([a.arrival for a in self.audio])

    async def close(self) -> None:
        """Stop sending, close the peer connection and end the reader tasks."""
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self.pc.close()
