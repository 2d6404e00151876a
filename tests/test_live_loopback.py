"""Live sessions end to end over real WebRTC on loopback: the real server, model and renderer.

A Python aiortc peer sends speech and records what comes back; the checks are on what
it received: frames at about the frame rate, a mouth that moves in speech and rests in
silence (pixels of the mouth region), the voice returned intact with the pipeline delay,
and the motion data channel. Bad requests get clear 4xx/503 JSON errors.
"""

from __future__ import annotations

import asyncio
import dataclasses
import io
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import numpy as np
import pytest
from aiohttp.test_utils import TestServer
from aiortc import RTCConfiguration, RTCPeerConnection
from conftest import read_wav
from webrtc_client import AvatarClient

from realtime.app import create_app
from realtime.benchmarks.live import match_motion
from realtime.config import Config, load_config
from realtime.live_api import SESSIONS_KEY
from realtime.motion import CHANNELS, MOUTH_CHANNELS, idx, neutral

LEAD_S, TAIL_S = 1.2, 2.0  # silence before and after the speech


@dataclasses.dataclass
class Recording:
    """What one loopback session sent, received and reported."""

    client: AvatarClient
    info: dict
    closed_status: int  # GET /sessions/{id} after the peer left
    decoder_thread_ended: bool  # aiortc's audio decoder thread of the session, once it closed
    speech: np.ndarray
    rate: int


async def _record(engine, config: Config, speech: np.ndarray, rate: int) -> Recording:
    app = create_app(config, engine=engine)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    url = str(server.make_url("")).rstrip("/")
    try:
        pcm = np.concatenate(
            [np.zeros(int(LEAD_S * rate), np.float32), speech, np.zeros(int(TAIL_S * rate), np.float32)]
        )
        client = AvatarClient(url, pcm, rate, heartbeat=1.0)
        answer = await client.connect()
        assert answer["type"] == "answer" and answer["session_id"]
        await client.wait_frames(1)
        await asyncio.sleep(len(pcm) / rate + 0.5)
        status, info = await session_info(url, client.session_id)
        assert status == 200, info
        receiver = next(
            t.receiver
            for t in app[SESSIONS_KEY].sessions[client.session_id].pc.getTransceivers()
            if t.kind == "audio"
        )
        decoder_thread = receiver._RTCRtpReceiver__decoder_thread
        await client.close()
        # the peer left: the session closes itself and frees its slot
        for _ in range(50):
            status, _ = await session_info(url, client.session_id)
            if status == 404:
                break
            await asyncio.sleep(0.1)
        return Recording(client, info, status, not decoder_thread.is_alive(), speech, rate)
    finally:
        await server.close()


@pytest.fixture(scope="module")
def rec(engine, speech_wav: Path, tmp_path_factory: pytest.TempPathFactory) -> Recording:
    """One real loopback session with speech between silences, shared by the checks below."""
    tmp = tmp_path_factory.mktemp("loopback")
    config = load_config(
        overrides=[f"avatars.cache_dir={tmp / 'avatars'}", "server.port=0", "server.workers=0"], env={}
    )
    speech, rate = read_wav(speech_wav)
    return asyncio.run(_record(engine, config, speech, rate))


@pytest.fixture
async def live(engine, test_config: Config) -> AsyncIterator[tuple[str, object]]:
    """The real app (shared warm engine) on a loopback port."""
    app = create_app(test_config, engine=engine)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    yield str(server.make_url("")).rstrip("/"), app
    await server.close()


def motion_by_frame(rec: Recording) -> dict[int, np.ndarray]:
    """Received video frame (by position) -> the motion vector the server sent for it."""
    motion = match_motion(rec.client.video, rec.client.motion, 25)
    assert len(motion) > 0.5 * len(rec.client.video), "motion messages do not line up with video frames"
    return motion


def mouth_scores(rec: Recording, engine) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per received frame: how far its lower face is from the same pose with the mouth at rest,
    and from the exact motion the server sent (codec noise only), plus which frames were scored."""
    renderer = engine.renderer(engine.avatar("default"), 512)
    rest = renderer.render(neutral()).astype(np.float32)
    wide = neutral()
    wide[idx("jawOpen")] = 1.0
    ys, xs = np.nonzero(np.abs(renderer.render(wide).astype(np.float32) - rest).mean(axis=2) > 12.0)
    box = (slice(ys.min(), ys.max() + 1), slice(xs.min(), xs.max() + 1))
    mouth = [idx(c) for c in MOUTH_CHANNELS]
    motion = motion_by_frame(rec)
    keys = sorted(motion)
    to_rest, to_exact = [], []
    for i in keys:
        got = rec.client.video[i].image[box].astype(np.float32)
        closed = motion[i].copy()
        closed[mouth] = 0.0
        to_rest.append(np.abs(got - renderer.render(closed)[box]).mean())
        to_exact.append(np.abs(got - renderer.render(motion[i])[box]).mean())
    return np.array(to_rest), np.array(to_exact), np.array(keys)


def best_lag(sent: np.ndarray, got: np.ndarray) -> tuple[int, float]:
    """Lag (samples, got relative to sent) and normalised correlation at that lag."""
    n = 1 << int(np.ceil(np.log2(len(sent) + len(got))))
    xc = np.fft.irfft(np.fft.rfft(got, n) * np.conj(np.fft.rfft(sent, n)), n)
    lag = int(np.argmax(xc))
    if lag > n // 2:
        lag -= n
    a = got[max(lag, 0) :]
    b = sent[max(-lag, 0) :]
    m = min(len(a), len(b))
    a, b = a[:m], b[:m]
    return lag, float(np.dot(a, b) / (np.linalg.norm(a) * np.linalg.norm(b) + 1e-9))


async def session_info(url: str, sid: str) -> tuple[int, dict]:
    async with aiohttp.ClientSession() as http, http.get(f"{url}/sessions/{sid}") as r:
        return r.status, await r.json()


def returned_delay(rec: Recording) -> tuple[int, float, float]:
    """Lag of the returned voice in 48 kHz samples, its send -> arrival delay in seconds, and the
    session's playout delay (seconds) when that voice left."""
    client = rec.client
    got, _ = client.audio_pcm()
    lag, _ = best_lag(client.track.pcm48, got)
    first = next(i for i, a in enumerate(client.audio) if a.pcm.std() > 0.01)
    j = client.audio[first].pts - client.audio[0].pts
    at = client.audio[first].pts / 48000  # its place on the session's timeline
    playout = rec.info["pipeline_delay_range_ms"][0]
    for t, d in rec.info["pipeline_delay_history"]:  # the adaptive delay in force then
        if t <= at:
            playout = d
    return lag, client.audio[first].arrival - client.track.sent_at(max(j - lag, 0)), playout / 1000


def test_session_reports_and_closes_when_the_peer_leaves(rec: Recording) -> None:
    assert rec.info["connection"] == "connected" and rec.info["state"] == "connected"
    assert rec.info["video_encoder"] == "AvatarVp8Encoder"  # our libvpx settings, not aiortc's
    assert 250 <= rec.info["video_target_kbps"] <= 1500  # from the peer's REMB
    assert rec.info["audio_encoder"] == "opus-mono"  # the voice is encoded by our track, mono
    # the peer's voice is decoded on the event loop as it arrives, every packet of it
    assert rec.info["audio_decoder"] == "inline" and rec.info["audio_decode_errors"] == 0
    # every repeat has a cause; frames are ready before their send time, not after it
    assert sum(rec.info["frames_dropped_by_cause"].values()) == rec.info["frames_dropped"]
    assert rec.info["frame_slack_ms"]["p50"] > 0
    # arrival of a frame's audio -> its send: the playout delay less packetisation, never more
    low, high = rec.info["pipeline_delay_range_ms"]
    assert low <= rec.info["pipeline_delay_ms"] <= rec.info["pipeline_delay_max_ms"] <= high
    delay = rec.info["pipeline_delay_max_ms"]
    assert 0.3 * low < rec.info["latency_ms"]["p50"] < delay + 50, (rec.info["latency_ms"], delay)
    assert (
        rec.info["speech_frames"] > 20 and rec.info["frames_sent"] > 0 and rec.info["audio_frames_in"] > 100
    )
    assert rec.closed_status == 404
    assert rec.decoder_thread_ended  # InlineAudioDecoder passed aiortc's end marker on


def test_frames_arrive_at_about_fps_with_90khz_pts(rec: Recording) -> None:
    fps = 25
    frames = rec.client.video
    span = frames[-1].arrival - frames[0].arrival
    assert span > 5.0
    assert len(frames) >= 0.6 * fps * span, f"{len(frames)} frames in {span:.1f} s"
    steps = np.diff([f.pts for f in frames])
    assert np.mean(steps == 90000 // fps) > 0.8  # consecutive frames, 90 kHz pts
    assert all(f.image.shape == (512, 512, 3) for f in frames[:5])


def test_returned_voice_is_the_input_with_one_constant_delay(rec: Recording) -> None:
    # Opus twice, so compare in 1 s windows: a glitch or drift would show as a window with
    # another lag or no match
    got, _ = rec.client.audio_pcm()
    sent48 = rec.client.track.pcm48
    lag, delay, pipeline = returned_delay(rec)
    windows = []
    for w0 in range(0, len(got) - 48000, 24000):
        part = got[w0 : w0 + 48000]
        if part.std() > 0.02:
            wlag, wncc = best_lag(sent48, part)
            windows.append((wlag + w0 - lag, wncc))
    assert len(windows) >= 3
    shifts, nccs = np.array(windows).T
    assert np.median(nccs) > 0.6, f"returned audio does not match the input: {windows}"
    assert np.mean(np.abs(shifts) <= 48) > 0.8, f"returned audio is not one constant delay: {windows}"
    assert pipeline - 0.05 < delay < pipeline + 0.4, (delay, pipeline)


def test_motion_data_channel_one_message_per_frame(rec: Recording) -> None:
    client, fps = rec.client, 25
    motion = [m for _, m in client.motion if "channels" in m]
    assert len(motion) > 0.5 * len(client.video)
    msg = motion[-1]
    assert set(msg["channels"]) == set(CHANNELS) and msg["frame"] >= 0
    assert msg["t"] == pytest.approx(msg["frame"] / fps)
    frames = [m["frame"] for m in motion]
    assert frames == sorted(frames) and len(set(frames)) == len(frames)
    # the heartbeat pings were answered
    assert any(m.get("type") == "pong" for _, m in client.motion)


def test_mouth_moves_in_speech_and_rests_in_silence(rec: Recording, engine) -> None:
    """Judged on received pixels: against the same head pose with the mouth at rest (rendered from
    the motion message of that frame), the lower face differs in speech and not in silence."""
    client, rate = rec.client, rec.rate
    to_rest, to_exact, keys = mouth_scores(rec, engine)
    _, delay, _ = returned_delay(rec)
    t_in = np.array([client.video[i].arrival - delay - client.track.started_at for i in keys])
    env = np.convolve(np.abs(rec.speech), np.ones(800) / 800, mode="same")
    voiced = np.flatnonzero(env > 0.02)
    s0, s1 = LEAD_S + voiced[0] / rate, LEAD_S + voiced[-1] / rate
    speech = (t_in > s0 + 0.2) & (t_in < s1 - 0.2)
    silence = ((t_in > 0.2) & (t_in < s0 - 0.3)) | (t_in > s1 + 0.6)
    assert speech.sum() > 30 and silence.sum() > 10
    # What the mouth adds over codec noise: the distance to the mouth-at-rest image minus the
    # distance to the exact image. Codec noise itself varies with the bitrate the client grants.
    mouth = to_rest - to_exact
    report = {
        name: (
            np.percentile(to_rest[sel], [25, 50, 75]).round(2),
            np.percentile(to_exact[sel], [25, 50, 75]).round(2),
        )
        for name, sel in (("speech", speech), ("silence", silence))
    }
    assert np.percentile(mouth[speech], 75) > 2.0, report
    assert np.median(mouth[silence]) < 0.5 and np.percentile(mouth[silence], 90) < 1.5, report
    # the received frames show the motion that was sent for them (only codec noise remains)
    assert np.median(to_exact[speech]) < 0.6 * np.percentile(to_rest[speech], 75), report


async def post_offer(url: str, payload: object, raw: bytes | None = None) -> tuple[int, dict, dict]:
    async with aiohttp.ClientSession() as http:
        kw = (
            {"data": raw, "headers": {"Content-Type": "application/json"}}
            if raw is not None
            else {"json": payload}
        )
        async with http.post(f"{url}/offer", **kw) as r:
            return r.status, await r.json(), dict(r.headers)


async def client_offer(audio: bool = True, video: bool = True) -> str:
    pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    if audio:
        pc.addTransceiver("audio", direction="sendrecv")
    if video:
        pc.addTransceiver("video", direction="recvonly")
    await pc.setLocalDescription(await pc.createOffer())
    sdp = pc.localDescription.sdp
    await pc.close()
    return sdp


async def test_bad_offers_get_clear_errors(live) -> None:
    url, _ = live
    status, body, _ = await post_offer(url, None, raw=b"{not json")
    assert status == 400 and "JSON" in body["error"]
    status, body, _ = await post_offer(url, {"type": "offer"})
    assert status == 400 and "sdp" in body["error"]
    bad_sdp = "v=0\r\no=- 0 0 IN IP4 0.0.0.0\r\nm=audio 9 UDP/TLS/RTP/SAVPF 111\r\nthis is not sdp\r\n"
    status, body, _ = await post_offer(url, {"sdp": bad_sdp, "type": "offer"})
    assert status == 400 and body["error"]
    status, body, _ = await post_offer(url, {"sdp": await client_offer(audio=False), "type": "offer"})
    assert status == 400 and "audio" in body["error"]
    good = await client_offer()
    status, body, _ = await post_offer(url, {"sdp": good, "type": "offer", "avatar": "no-such-avatar"})
    assert status == 400 and "unknown avatar" in body["error"]
    for params, word in [
        ({"fps": 24}, "fps"),
        ({"resolution": 4096}, "resolution"),
        ({"inference_steps": 0}, "inference_steps"),
        ({"dynamic_scale": 3}, "dynamic_scale"),
        ({"motion_scale": -1}, "motion_scale"),
        ({"smooth_motion": 1.5}, "smooth_motion"),
        ({"align_mouth": 500}, "align_mouth"),
        ("fast", "params"),
    ]:
        status, body, _ = await post_offer(url, {"sdp": good, "type": "offer", "params": params})
        assert status == 400 and word in body["error"], (params, body)
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{url}/sessions") as r:
            assert r.status == 200 and (await r.json())["sessions"] == []  # nothing leaked
        async with http.get(f"{url}/sessions/nope") as r:
            assert r.status == 404
        async with http.delete(f"{url}/sessions/nope") as r:
            assert r.status == 404


async def test_full_server_answers_503_and_delete_frees_the_slot(
    engine, test_config: Config, speech_16k
) -> None:
    config = dataclasses.replace(test_config, server=dataclasses.replace(test_config.server, max_sessions=1))
    server = TestServer(create_app(config, engine=engine), host="127.0.0.1")
    await server.start_server()
    url = str(server.make_url("")).rstrip("/")
    client = AvatarClient(url, speech_16k, 16000, params={"fps": 30, "resolution": 256})
    try:
        await client.connect()
        await client.wait_frames(3)
        status, body, headers = await post_offer(url, {"sdp": await client_offer(), "type": "offer"})
        assert status == 503 and "full" in body["error"] and int(headers["Retry-After"]) > 0
        status, info = await session_info(url, client.session_id)
        assert info["params"]["fps"] == 30 and info["size"][1] == 256 or info["size"][0] == 256
        async with aiohttp.ClientSession() as http, http.delete(f"{url}/sessions/{client.session_id}") as r:
            assert r.status == 200 and (await r.json())["closed"]
        status, _ = await session_info(url, client.session_id)
        assert status == 404
        status, body, _ = await post_offer(url, {"sdp": await client_offer(), "type": "offer"})
        assert status == 200  # the slot is free again
        async with aiohttp.ClientSession() as http, http.delete(f"{url}/sessions/{body['session_id']}") as r:
            assert r.status == 200
    finally:
        await client.close()
        await server.close()


async def upload(url: str, data: bytes, **fields: str) -> tuple[int, dict]:
    form = aiohttp.FormData()
    form.add_field("image", data, filename="photo.png", content_type="image/png")
    for k, v in fields.items():
        form.add_field(k, v)
    async with aiohttp.ClientSession() as http, http.post(f"{url}/api/avatars", data=form) as r:
        return r.status, await r.json()


async def test_avatar_upload(live, engine) -> None:
    url, _ = live
    from PIL import Image  # noqa: PLC0415 - only this test needs it

    buf = io.BytesIO()
    Image.fromarray(np.full((400, 400, 3), 128, np.uint8)).save(buf, format="PNG")
    status, body = await upload(url, buf.getvalue())
    assert status == 400 and body["code"] == "no_face" and body["error"]
    status, body = await upload(url, b"definitely not an image")
    assert status == 400 and body["code"] in ("not_an_image", "corrupt_image")
    status, body = await upload(url, b"x", expand_ratio="lots")
    assert status == 400 and "expand_ratio" in body["error"]
    image = engine.config.resolve(engine.config.avatars.default_image).read_bytes()
    status, body = await upload(url, image, expand_ratio="0.2")
    assert status == 200 and body["avatar"]
    good = await client_offer()
    # the new key is accepted by /offer (answered; no peer ever connects, so close it)
    status, answer, _ = await post_offer(url, {"sdp": good, "type": "offer", "avatar": body["avatar"]})
    assert status == 200, answer
    async with aiohttp.ClientSession() as http, http.delete(f"{url}/sessions/{answer['session_id']}") as r:
        assert r.status == 200


def _server_config(test_config: Config, **server: float) -> Config:
    return dataclasses.replace(test_config, server=dataclasses.replace(test_config.server, **server))


async def _wait_gone(url: str, sid: str, within: float) -> float:
    t0 = asyncio.get_running_loop().time()
    while asyncio.get_running_loop().time() - t0 < within:
        status, _ = await session_info(url, sid)
        if status == 404:
            return asyncio.get_running_loop().time() - t0
        await asyncio.sleep(0.1)
    raise AssertionError(f"session {sid} still open after {within} s")


def _outcomes(app) -> dict[str, float]:
    from realtime.app import METRICS_KEY

    out = {}
    for metric in app[METRICS_KEY].sessions_total.collect():
        for sample in metric.samples:
            if sample.name.endswith("_total"):
                out[sample.labels["outcome"]] = sample.value
    return out


async def test_unconnected_offer_times_out(engine, test_config: Config) -> None:
    app = create_app(_server_config(test_config, connect_timeout=0.5), engine=engine)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    url = str(server.make_url("")).rstrip("/")
    try:
        status, body, _ = await post_offer(url, {"sdp": await client_offer(), "type": "offer"})
        assert status == 200
        await _wait_gone(url, body["session_id"], within=5.0)
        assert _outcomes(app).get("connect_timeout") == 1
    finally:
        await server.close()


async def test_vanished_peer_is_dropped_within_seconds(engine, test_config: Config, speech_16k) -> None:
    app = create_app(test_config, engine=engine)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    url = str(server.make_url("")).rstrip("/")
    client = AvatarClient(url, speech_16k, 16000)
    try:
        await client.connect()
        await client.wait_frames(5)

        async def blackhole(*args: object, **kwargs: object) -> None:
            return None

        # the peer's machine disappears: nothing more leaves it (no RTP, RTCP, SCTP, DTLS close)
        for t in client.pc.getTransceivers():
            t.sender.transport._send_rtp = blackhole
        client.pc.sctp.transport._send_data = blackhole
        took = await _wait_gone(url, client.session_id, within=10.0)
        assert took < 8.0
        assert _outcomes(app).get("vanished") == 1
    finally:
        await client.close()
        await server.close()


async def test_control_channel_gets_pongs_but_no_motion(engine, test_config: Config, speech_16k) -> None:
    """A channel labelled "control" (the browser page in OBS mode) is a heartbeat only; a "motion"
    channel opened beside it on another peer still gets every frame."""
    app = create_app(test_config, engine=engine)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    url = str(server.make_url("")).rstrip("/")
    control = AvatarClient(url, speech_16k, 16000, data_channel="control", heartbeat=0.3, keep_video=False)
    motion = AvatarClient(url, speech_16k, 16000, data_channel="motion", heartbeat=0.3, keep_video=False)
    try:
        await control.connect()
        await motion.connect()
        await control.wait_frames(40)
        await motion.wait_frames(40)
        kinds = {msg.get("type", "frame") for _, msg in control.motion}
        assert kinds == {"pong"}, kinds
        assert sum(1 for _, msg in motion.motion if "channels" in msg) > 20
        async with aiohttp.ClientSession() as http, http.get(f"{url}/sessions/{control.session_id}") as r:
            assert (await r.json())["data_channels"] == ["control"]
    finally:
        await control.close()
        await motion.close()
        await server.close()


async def test_video_bitrate_cap(engine, test_config: Config, speech_16k) -> None:
    """live.max_video_kbps bounds what the peer's REMB may raise the encoder to (a loopback peer's
    estimate passes 500 kb/s within seconds), and the stream stays decodable."""
    live = dataclasses.replace(test_config.live, max_video_kbps=260)
    app = create_app(dataclasses.replace(test_config, live=live), engine=engine)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    url = str(server.make_url("")).rstrip("/")
    client = AvatarClient(url, speech_16k, 16000, data_channel=None, keep_video=False)
    try:
        await client.connect()
        await client.wait_frames(100)  # 4 s: REMB packets have come in by now
        status, info = await session_info(url, client.session_id)
        assert status == 200 and 250 <= info["video_target_kbps"] <= 260, info["video_target_kbps"]
    finally:
        await client.close()
        await server.close()


async def test_input_ends_avatar_stays_alive_then_idle_timeout(
    engine, test_config: Config, speech_16k
) -> None:
    app = create_app(_server_config(test_config, session_idle_timeout=2.5), engine=engine)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    url = str(server.make_url("")).rstrip("/")
    client = AvatarClient(url, speech_16k[:16000], 16000, tail="end")  # one second, then the track ends
    try:
        await client.connect()
        await client.wait_frames(5)
        await asyncio.sleep(1.0)  # the input has ended by now
        n, m = client.video_count, len(client.motion)
        await asyncio.sleep(1.5)
        assert client.video_count - n > 15  # video keeps flowing without input
        # and it is alive, not a frozen frame: the idle motion (blinks, head) keeps changing
        idle = np.array(
            [[msg["channels"][c] for c in CHANNELS] for _, msg in client.motion[m:] if "channels" in msg]
        )
        assert len(idle) > 15 and float(np.ptp(idle, axis=0).max()) > 0.05
        frames = [f.image.astype(np.float32) for f in client.video[n:]]
        assert max(float(np.abs(f - frames[0]).mean()) for f in frames) > 0.2
        await _wait_gone(url, client.session_id, within=6.0)
        assert _outcomes(app).get("idle") == 1
    finally:
        await client.close()
        await server.close()


async def test_peer_in_dtx_gets_smooth_video_and_its_voice_back(
    engine, test_config: Config, speech_16k
) -> None:
    """A peer that stops sending in silence (Opus DTX, which the answer asks for: two packets per
    400 ms, as Chromium) gets frames at the full rate through its pauses, a mouth at rest there, and speech
    after a pause that moves the mouth and comes back in the returned voice like the first."""
    # a fixed playout delay, so the returned voice's delay can only move with the pauses
    live = dataclasses.replace(test_config.live, latency_margin_max_ms=test_config.live.latency_margin_ms)
    app = create_app(dataclasses.replace(test_config, live=live), engine=engine)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    url = str(server.make_url("")).rstrip("/")
    one, two = speech_16k[: 2 * 16000], speech_16k[2 * 16000 : 4 * 16000]
    assert len(two) == 2 * 16000
    gap = np.zeros(3 * 16000, np.float32)
    pcm = np.concatenate([gap[:8000], one, gap, two, gap[:16000]])
    client = AvatarClient(url, pcm, 16000, dtx=True)
    try:
        answer = await client.connect()
        opus = next(
            line.split()[0].split(":")[1] for line in answer["sdp"].splitlines() if "opus/48000" in line
        )
        assert f"a=fmtp:{opus} usedtx=1" in answer["sdp"]
        await client.wait_frames(1)
        t0 = client.video[0].arrival
        await asyncio.sleep(len(pcm) / 16000 + 0.5)
        status, info = await session_info(url, client.session_id)
        assert status == 200, info
        sent_frames = client.track.frames_sent
        span = client.video[-1].arrival - t0
    finally:
        await client.close()
        await server.close()
    # the peer really went quiet on the wire, and the session filled the pauses on its own clock
    assert sent_frames < 0.75 * len(pcm) / 320, sent_frames
    assert info["audio_frames_in"] >= sent_frames - 5 and info["silence_filled_s"] > 2.0, info
    assert info["audio_packets_late"] == 0  # loopback never reorders; every packet was taken as it came
    # frames kept coming at the frame rate through the pauses, none of them waiting for audio
    assert len(client.video) > 0.9 * 25 * span, (len(client.video), span)
    # (waiting 150 ms for the next packet would starve 2-4 frames at each of the ~15 DTX packets; a
    # full garbage collection of this test process, 150-200 ms, may starve a few once)
    assert info["frames_dropped_by_cause"].get("input", 0) <= 6, info["frames_dropped_by_cause"]
    # the mouth moved for both utterances and rested in the pause between them
    jaw = np.array([(t, msg["channels"]["jawOpen"]) for t, msg in client.motion if "channels" in msg])
    started = client.track.started_at
    at = jaw[:, 0] - started - info["pipeline_delay_ms"] / 1000
    first = (at > 0.6) & (at < 2.4)
    pause = (at > 3.2) & (at < 5.2)
    second = (at > 5.6) & (at < 7.4)
    assert jaw[first, 1].max() > 0.2 and jaw[second, 1].max() > 0.2, (
        jaw[first, 1].max(),
        jaw[second, 1].max(),
    )
    assert jaw[pause, 1].max() < 0.05, jaw[pause, 1].max()
    # the voice after the pause comes back with the delay of the voice before it (within a fill step)
    got, _ = client.audio_pcm()
    sent = client.track.pcm48
    lags = []
    for s0, s1 in ((24000, 120000), (264000, 360000)):  # each utterance at 48 kHz
        lag, _ = best_lag(
            np.where((np.arange(len(sent)) >= s0) & (np.arange(len(sent)) < s1), sent, 0.0), got
        )
        a, b = got[s0 + lag : s1 + lag], sent[s0:s1]
        assert len(a) == len(b) and np.dot(a, b) / (np.linalg.norm(a) * np.linalg.norm(b)) > 0.6, lag
        lags.append(lag)
    assert abs(lags[1] - lags[0]) <= 0.06 * 48000, lags


async def test_answer_asks_for_dtx_only_when_configured(engine, test_config: Config) -> None:
    live = dataclasses.replace(test_config.live, uplink_dtx=False)
    app = create_app(dataclasses.replace(test_config, live=live), engine=engine)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    url = str(server.make_url("")).rstrip("/")
    try:
        status, body, _ = await post_offer(url, {"sdp": await client_offer(), "type": "offer"})
        assert status == 200, body
        assert "usedtx" not in body["sdp"] and "opus/48000" in body["sdp"]
        async with aiohttp.ClientSession() as http:
            await http.delete(f"{url}/sessions/{body['session_id']}")
    finally:
        await server.close()
