"""Session parameters and the tracks' pacing, pts and repeat-on-late logic."""

from __future__ import annotations

import asyncio
import gc
import time

import numpy as np
import pytest
from av import VideoFrame

from realtime.config import LiveConfig
from realtime.session import ParamError, SessionParams
from realtime.tracks import (
    AUDIO_SAMPLES,
    AdaptiveDelay,
    AvatarAudioTrack,
    AvatarVideoTrack,
    FrameBuffer,
    PlayoutClock,
    ReadyFrame,
    SampleRing,
    video_pts,
)


def test_params_defaults_and_overrides() -> None:
    p = SessionParams.from_request(None, LiveConfig())
    assert p.fps == 25 and p.resolution == 512 and p.avatar == "default"
    p = SessionParams.from_request(
        {"fps": 30, "dynamic_scale": 1.5, "align_mouth": -120}, LiveConfig(), avatar="k"
    )
    assert (p.fps, p.dynamic_scale, p.align_mouth, p.avatar) == (30, 1.5, -120.0, "k")


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ([], "must be a JSON object"),
        ({"fps": 24}, "'fps' must be 25 or 30"),
        ({"fps": "25"}, "'fps' must be a number"),
        ({"resolution": 100}, "'resolution' must be in 256..1024"),
        ({"resolution": 512.5}, "'resolution' must be an integer"),
        ({"inference_steps": 9}, "'inference_steps' must be in 1..8"),
        ({"dynamic_scale": -0.1}, "'dynamic_scale' must be in 0..2"),
        ({"motion_scale": float("nan")}, "'motion_scale' must be a number"),
        ({"smooth_motion": 2}, "'smooth_motion' must be in 0..1"),
        ({"align_mouth": 250}, "'align_mouth' must be in -200..200 ms"),
        ({"dynamic_scale": True}, "'dynamic_scale' must be a number"),
        ({"volume": 3}, "unknown parameter"),
        ({"avatar": 5}, "'avatar' must be"),
    ],
)
def test_params_rejected_with_clear_messages(raw: object, message: str) -> None:
    with pytest.raises(ParamError, match=message.replace("(", r"\(").replace(".", r"\.")):
        SessionParams.from_request(raw, LiveConfig())


def test_video_pts_is_exact_90khz() -> None:
    assert [video_pts(n, 25) for n in range(3)] == [0, 3600, 7200]
    assert video_pts(30 * 3600, 30) == 3600 * 90000  # an hour in, no rounding drift


def test_sample_ring_positions_wrap_and_gaps() -> None:
    ring = SampleRing(seconds=0.1)  # 4800 samples
    x = np.arange(3000, dtype=np.float32)
    ring.write(0, x)
    got, n = ring.read(1000, 500)
    assert n == 500 and np.array_equal(got, x[1000:1500])
    ring.write(3000, x)  # wraps; positions 0..1199 are overwritten
    got, n = ring.read(5000, 1000)
    assert n == 1000 and np.array_equal(got, x[2000:3000])
    got, n = ring.read(0, 100)
    assert n == 0 and not got.any()  # too old: zeros, not stale samples
    ring.write(8000, np.ones(10, np.float32))  # a skipped span reads as silence
    got, n = ring.read(6000, 2000)
    assert not got.any()
    got, n = ring.read(7990, 20)
    assert n == 20 and got[:10].sum() == 0 and got[10:].sum() == 10


def _frame(value: int) -> VideoFrame:
    return VideoFrame.from_ndarray(np.full((16, 16, 3), value, np.uint8), format="rgb24")


def test_frame_buffer_order_bounds_and_late_frames() -> None:
    buf = FrameBuffer(capacity=3)
    for i in range(5):
        buf.put(ReadyFrame(i, _frame(i)))
    assert buf.overflow == 2 and buf.newest_index() == 4
    assert buf.take(1) is None  # evicted
    assert buf.take(3).index == 3
    buf.put(ReadyFrame(2, _frame(2)))  # arrives after the track moved on: ignored
    assert buf.take(2) is None
    assert buf.take(4).index == 4


async def test_video_track_paces_repeats_late_frames_and_counts_drops() -> None:
    fps = 25
    clock = PlayoutClock(t0=time.monotonic(), delay=0.05)
    buf = FrameBuffer()
    sent: list[tuple[int, bool]] = []
    track = AvatarVideoTrack(
        clock, fps, buf, _frame(7), grace=0.0, on_sent=lambda n, r, d: sent.append((n, d))
    )
    # nothing rendered yet: the placeholder goes out, no drop counted (start-up)
    f0 = await track.recv()
    assert f0.pts == 0 and track.dropped == 0 and track.repeats_before_first == 1
    for i in range(1, 4):
        buf.put(ReadyFrame(i, _frame(10 * i)))
    t_start = time.monotonic()
    frames = [await track.recv() for _ in range(3)]
    assert [f.pts for f in frames] == [3600, 7200, 10800]
    assert [int(f.to_ndarray(format="rgb24")[0, 0, 0]) for f in frames] == [10, 20, 30]
    # frames leave on the clock, one period apart (allow generous scheduling slack)
    assert time.monotonic() - t_start >= 2.5 / fps
    late = await track.recv()  # frame 4 never rendered: repeat frame 3, count a drop
    assert late.pts == 4 * 3600 and int(late.to_ndarray(format="rgb24")[0, 0, 0]) == 30
    assert track.dropped == 1 and sent[-1] == (4, True)
    track.stop()


async def test_video_track_sends_a_frame_that_comes_within_its_grace() -> None:
    fps = 10  # 100 ms periods: every step below has 20 ms or more to spare on a busy test host
    clock = PlayoutClock(t0=time.monotonic(), delay=0.0)
    buf = FrameBuffer()
    sent: list[tuple[int, bool]] = []
    track = AvatarVideoTrack(
        clock, fps, buf, _frame(7), grace=0.03, on_sent=lambda n, r, d: sent.append((n, d))
    )
    buf.put(ReadyFrame(0, _frame(0)))
    await track.recv()
    loop = asyncio.get_running_loop()

    def put_at(index: int, after_send_time: float) -> None:
        at = loop.time() + clock.wall(index / fps) - time.monotonic() + after_send_time
        loop.call_at(at, buf.put, ReadyFrame(index, _frame(index)))

    put_at(1, 0.01)  # ready 10 ms after its send time: within the grace, it goes out late
    f1 = await track.recv()
    assert int(f1.to_ndarray(format="rgb24")[0, 0, 0]) == 1 and track.dropped == 0 and track.sent_late == 1
    assert time.monotonic() >= clock.wall(1 / fps) + 0.01
    put_at(2, 0.06)  # ready only after the grace: frame 1 repeats ...
    f2 = await track.recv()
    assert int(f2.to_ndarray(format="rgb24")[0, 0, 0]) == 1 and track.dropped == 1
    await asyncio.sleep(clock.wall(2 / fps) + 0.07 - time.monotonic())
    buf.put(ReadyFrame(3, _frame(3)))
    f3 = await track.recv()  # ... and frame 2, come after that, is discarded, not sent in frame 3's place
    assert int(f3.to_ndarray(format="rgb24")[0, 0, 0]) == 3 and f3.pts == video_pts(3, fps)
    assert sent == [(0, False), (1, False), (2, True), (3, False)] and track.sent_late == 1
    track.stop()


def test_adaptive_delay_rises_with_late_frames_and_falls_only_in_quiet_input() -> None:
    clock = PlayoutClock(t0=0.0, delay=0.10)
    fixed = AdaptiveDelay(PlayoutClock(t0=0.0, delay=0.10), 0.10, 0.10)
    assert fixed.observe(-0.05, 1.0, quiet=True) + fixed.observe(-0.05, 1.1, quiet=True) == 0.0  # fixed
    playout = AdaptiveDelay(clock, 0.10, 0.15, window=2.0, settle=5.0)
    assert playout.observe(0.02, 1.0, quiet=False) == 0.0
    assert playout.observe(-0.005, 1.1, quiet=False) == 0.0  # late within half the track's grace: sent
    assert playout.observe(-0.03, 1.2, quiet=False) == 0.0  # one late frame is not worth more latency
    assert playout.observe(-0.03, 3.5, quiet=False) == 0.0  # ... nor one 2.3 s later
    # late again within 2 s: raised by its lateness, 12 ms rounded up to two 10 ms steps
    assert playout.observe(-0.012, 4.0, quiet=False) == pytest.approx(0.02)
    assert clock.delay == pytest.approx(0.12) and playout.changes[-1] == (pytest.approx(4.0 - 0.12), 0.12)
    assert playout.observe(-0.2, 4.4, quiet=False) == pytest.approx(0.03)  # never past the ceiling
    assert clock.delay == pytest.approx(0.15) and playout.observe(-0.2, 4.6, quiet=False) == 0.0
    # early frames again: the delay comes down a step per settle time, and only in quiet input
    assert playout.observe(0.03, 9.5, quiet=True) == 0.0  # the late frame at 4.6 s was too recent
    assert playout.observe(0.03, 9.7, quiet=False) == 0.0
    assert playout.observe(0.03, 9.7, quiet=True) == pytest.approx(-0.01)
    assert playout.observe(0.03, 10.0, quiet=True) == 0.0  # settle time starts again
    assert playout.observe(0.005, 14.0, quiet=True) == 0.0  # one frame with less than a step to spare
    assert playout.observe(0.03, 18.9, quiet=True) == 0.0  # ... holds it for the settle time
    assert playout.observe(0.03, 19.1, quiet=True) == pytest.approx(-0.01)
    for k in range(10):
        playout.observe(0.05, 25.0 + 6 * k, quiet=True)
    assert clock.delay == pytest.approx(0.10)  # never below the floor
    assert (playout.raised, playout.lowered, playout.highest) == (2, 5, pytest.approx(0.15))
    # one stall makes a few frames in a row late: not worth more latency ...
    stalls = AdaptiveDelay(PlayoutClock(t0=0.0, delay=0.10), 0.10, 0.20)
    assert sum(stalls.observe(-0.03, 1.0 + 0.04 * k, quiet=False) for k in range(3)) == 0.0
    # ... but a host too slow for a fourth frame in a row is
    assert stalls.observe(-0.025, 1.12, quiet=False) == pytest.approx(0.03)


async def test_video_track_follows_a_raised_delay_without_repeats() -> None:
    fps = 25
    clock = PlayoutClock(t0=time.monotonic(), delay=0.02)
    buf = FrameBuffer()
    for i in range(6):
        buf.put(ReadyFrame(i, _frame(i)))
    track = AvatarVideoTrack(clock, fps, buf, _frame(0), grace=0.0)
    await track.recv()
    await track.recv()
    t = time.monotonic()
    clock.delay += 0.08  # two frame periods later from now on
    frames = [await track.recv() for _ in range(2)]
    assert time.monotonic() - t >= 0.08 + 1.5 / fps
    assert [int(f.to_ndarray(format="rgb24")[0, 0, 0]) for f in frames] == [2, 3]
    assert [f.pts for f in frames] == [2 * 3600, 3 * 3600] and track.dropped == 0
    track.stop()


async def test_video_track_never_raises_on_errors() -> None:
    clock = PlayoutClock(t0=time.monotonic(), delay=0.0)

    class Broken(FrameBuffer):
        def take(self, n: int) -> ReadyFrame | None:
            raise RuntimeError("boom")

    track = AvatarVideoTrack(clock, 25, Broken(), _frame(3))
    frame = await track.recv()
    assert int(frame.to_ndarray(format="rgb24")[0, 0, 0]) == 3 and track.dropped == 1
    track.stop()


async def test_audio_track_replays_ring_on_the_same_clock() -> None:
    clock = PlayoutClock(t0=time.monotonic(), delay=0.03)
    ring = SampleRing()
    x = (np.sin(np.arange(48000) / 10.0) * 0.5).astype(np.float32)
    ring.write(0, x)
    track = AvatarAudioTrack(clock, ring)
    t = time.monotonic()
    frames = [await track.recv() for _ in range(5)]
    assert time.monotonic() - t >= 0.03 + 0.06  # the delay, then 20 ms per frame
    assert [f.pts for f in frames] == [k * AUDIO_SAMPLES for k in range(5)]
    got = np.concatenate([f.to_ndarray().reshape(-1) for f in frames]).astype(np.float32) / 32767.0
    assert np.allclose(got, x[: 5 * AUDIO_SAMPLES], atol=1e-3)
    assert frames[0].sample_rate == 48000 and len(frames[0].layout.channels) == 1
    track.stop()
    with pytest.raises(Exception):  # noqa: B017 - aiortc's MediaStreamError once stopped
        await asyncio.wait_for(track.recv(), 1)


async def test_audio_track_sends_mono_opus_packets_on_the_timeline() -> None:
    import av

    clock = PlayoutClock(t0=time.monotonic(), delay=0.0)
    ring = SampleRing()
    x = (np.sin(2 * np.pi * 440 * np.arange(48000) / 48000) * 0.5).astype(np.float32)
    ring.write(0, x)
    track = AvatarAudioTrack(clock, ring)
    track.encode_opus()
    assert track.encoder == "opus-mono"
    packets = [await track.recv() for _ in range(25)]
    track.stop()
    assert all(isinstance(p, av.Packet) for p in packets)
    assert [p.pts for p in packets] == [k * AUDIO_SAMPLES for k in range(25)]  # RTP time = timeline
    decoder = av.CodecContext.create("libopus", "r")
    decoder.sample_rate, decoder.layout = 48000, "mono"
    got = np.concatenate([f.to_ndarray().reshape(-1) for p in packets for f in decoder.decode(p)])
    got = got.astype(np.float32) / (32768.0 if got.dtype == np.int16 else 1.0)
    assert len(got) == 25 * AUDIO_SAMPLES
    # the 440 Hz tone comes back (after the codec's look-ahead) at about its level
    spectrum = np.abs(np.fft.rfft(got[4800:]))
    assert abs(np.argmax(spectrum) * 48000 / len(got[4800:]) - 440) < 5
    assert 0.25 < float(np.sqrt(np.mean(got[4800:] ** 2))) < 0.45


def _bare_session(engine, config):
    """A LiveSession on the real engine whose peer connection never connects (pipeline parts only)."""
    from aiortc import RTCPeerConnection

    from realtime.metrics import Metrics
    from realtime.motion import neutral
    from realtime.session import LiveSession

    params = SessionParams.defaults(config.live)
    renderer = engine.renderer(engine.avatar("default"), params.resolution)
    return LiveSession(
        RTCPeerConnection(), engine, Metrics(), params, renderer, config.server, renderer.render(neutral())
    )


async def test_sampler_steps_drop_one_while_frames_come_late_and_come_back(engine, test_config) -> None:
    from realtime.session import DEGRADE_BACKLOG, LATE_HOLD

    session = _bare_session(engine, test_config)
    full = session.stream.steps
    assert full == test_config.live.inference_steps >= 2
    session._adapt_steps(0.0)
    assert session.stream.steps == full  # nothing late: the requested steps
    session._late_at = time.monotonic()  # a frame was ready after its send time
    session._adapt_steps(0.0)
    assert session.stream.steps == full - 1
    session._adapt_steps(3 * DEGRADE_BACKLOG)
    assert session.stream.steps == 1  # a real backlog still wins
    session._adapt_steps(0.0)
    assert session.stream.steps == 1  # while late, never back up past one step fewer
    session._late_at = time.monotonic() - LATE_HOLD - 0.1
    session._adapt_steps(0.0)
    assert session.stream.steps == full and session.info()["sampler_step_changes"] == 3
    await session.aclose()


async def test_frames_of_a_burst_reach_the_track_as_each_is_drawn(engine, test_config) -> None:
    """Audio that arrives in a burst makes several frames in one executor call. The first of them is
    the nearest its send time: it must reach the frame buffer when it is drawn, not after the rest."""
    session = _bare_session(engine, test_config)
    session.video.first_sent_at = time.monotonic()  # the peer is watching: every frame is drawn
    loop = asyncio.get_running_loop()
    drawn: list[float] = []  # when each frame's render ended (executor thread)
    delivered: dict[int, float] = {}  # frame index -> when it reached the buffer (event loop)
    render, deliver = session._render_frame, session._deliver

    def slow_render(values: np.ndarray) -> VideoFrame:
        time.sleep(0.04)  # a busy host: 40 ms a frame
        frame = render(values)
        drawn.append(time.monotonic())
        return frame

    def record(item: ReadyFrame) -> None:
        delivered[item.index] = time.monotonic()
        deliver(item)

    session._render_frame, session._deliver = slow_render, record  # type: ignore[method-assign]
    gc_was_on = gc.isenabled()
    gc.disable()  # a collection in this process would hold the event loop as long as the renders take
    try:
        last, skipped = await loop.run_in_executor(None, session._compute, np.zeros(8000, np.float32), loop)
        await asyncio.sleep(0)  # callbacks scheduled by the last render run before this returns
    finally:
        if gc_was_on:
            gc.enable()
    assert last is not None and skipped is None
    assert len(drawn) >= 4, drawn
    assert sorted(delivered) == list(range(last.index - len(drawn) + 1, last.index)), (delivered, last.index)
    for k, index in enumerate(sorted(delivered)):
        # frame k was in the buffer before frame k + 1 had been drawn (40 ms later)
        assert delivered[index] < drawn[k + 1], (k, delivered, drawn)
        assert session.frames.take(index) is not None
    await session.aclose()


def test_audio_packet_buffer_releases_each_packet_at_once() -> None:
    """Every Opus packet is a whole frame: it leaves the buffer as it arrives (aiortc's own buffer
    waits for the next one); a lost one holds nothing back; late and duplicate ones are dropped."""
    from aiortc.rtp import RtpPacket

    from realtime.live_api import AudioPacketBuffer

    def packet(seq: int) -> RtpPacket:
        p = RtpPacket(payload_type=111, sequence_number=seq & 0xFFFF, timestamp=(seq * 960) & 0xFFFFFFFF)
        p._data = bytes([seq & 0xFF])  # what aiortc's depayloader leaves for the decoder
        return p

    drops: list[int] = []
    buf = AudioPacketBuffer(on_drop=lambda: drops.append(1))
    out = []
    for seq in [65533, 65534, 65535, 0, 2, 1, 2, 3, 3, 10, 65000, 200]:
        pli, frame = buf.add(packet(seq))
        assert pli is False
        out.append(None if frame is None else (frame.timestamp // 960, frame.data[0]))
    assert out == [
        (65533, 65533 & 0xFF),
        (65534, 65534 & 0xFF),
        (65535, 0xFF),
        (0, 0),  # across the wrap
        (2, 2),  # 1 is missing: 2 does not wait for it
        None,  # 1 came after 2: too late (the ingest has filled its 20 ms with silence)
        None,  # a duplicate
        (3, 3),
        None,
        (10, 10),  # a burst of loss
        (65000, 65000 & 0xFF),  # far behind: the sender restarted
        (200, 200),
    ]
    assert buf.late == len(drops) == 3  # each also counted in avatar_audio_packets_dropped_total


async def test_inline_audio_decoder_decodes_skips_and_survives_bad_packets() -> None:
    import fractions

    import av
    from aiortc.codecs import get_encoder
    from aiortc.jitterbuffer import JitterFrame
    from aiortc.rtcrtpparameters import RTCRtpCodecParameters

    from realtime.live_api import InlineAudioDecoder

    opus = RTCRtpCodecParameters(mimeType="audio/opus", clockRate=48000, channels=2, payloadType=111)
    tone = 0.3 * np.sin(2 * np.pi * 440 * np.arange(960) / 48000)
    frame = av.AudioFrame.from_ndarray(
        (np.repeat(tone, 2) * 32767).astype(np.int16).reshape(1, -1), format="s16", layout="stereo"
    )
    frame.sample_rate, frame.pts, frame.time_base = 48000, 0, fractions.Fraction(1, 48000)
    good = get_encoder(opus).encode(frame)[0][0]
    out: asyncio.Queue = asyncio.Queue()
    drops: list[int] = []
    dec = InlineAudioDecoder(out, on_drop=lambda: drops.append(1))
    packets = [good, b"", good, b"\xff\xff\xff", good]  # an empty payload, then one that is not Opus
    for i, data in enumerate(packets):
        dec.put((opus, JitterFrame(data=data, timestamp=960 * i)))
    # every Opus packet became a frame at once, at its RTP time; the empty one was nothing to FFmpeg
    # (not the "flush" that would have stopped the decoder) and the bad one was counted, not raised
    got = [out.get_nowait() for _ in range(out.qsize())]
    assert [f.pts for f in got] == [0, 1920, 3840] and all(f.samples == 960 for f in got)
    assert dec.errors == len(drops) == 1
    dec.put(None)  # aiortc stopping: its decoder thread gets the end marker, once
    dec.put(None)
    assert dec.get() is None


async def test_pump_fills_pauses_on_the_timeline_grid(engine, test_config) -> None:
    """In a pause the fill reaches each 20 ms point of the timeline (where a frame's audio ends) as
    soon as FILL_KEEP allows, whatever the phase of the wall clock the session was answered at."""
    from realtime.session import FILL_KEEP, PUMP_EVERY, RATE

    session = _bare_session(engine, test_config)
    fills: list[tuple[float, int]] = []  # (wall time, timeline sample the fill reached)
    on_audio = session._on_audio

    def record(chunk, arrival: float) -> None:
        fills.append((time.monotonic(), chunk.end))
        on_audio(chunk, arrival)

    session._on_audio = record  # type: ignore[method-assign]
    session.clock.t0 = time.monotonic() - 0.0107  # answered 10.7 ms off the pump's old 20 ms beat
    pump = asyncio.create_task(session._pump())
    await asyncio.sleep(0.6)
    pump.cancel()
    await session.aclose()
    ends = {}
    for t, end in fills:  # one fill may push several chunks: the last one is where it reached
        ends[t] = end
    assert len(ends) >= 20, ends
    grid = PUMP_EVERY * RATE
    late = []
    for t, end in ends.items():
        point = (t - session.clock.t0 - FILL_KEEP) // PUMP_EVERY  # the grid point just passed
        assert end >= point * grid  # ... which the fill reached
        late.append(t - session.clock.t0 - FILL_KEEP - point * PUMP_EVERY)
    # waking on its own 20 ms beat, the old pump filled ~11 ms after each point here
    assert float(np.median(late)) < 0.004, late
