"""Limits: rate limiter, SDP pre-check, body sizes, and the capacity / parameter checks of the handlers."""

from __future__ import annotations

import dataclasses
import json

import pytest
from aiohttp.test_utils import TestClient, TestServer

from realtime.app import create_app
from realtime.config import Config
from realtime.engine import Engine
from realtime.ops import MAX_SDP_BYTES, OfferError, check_offer
from realtime.ratelimit import RateLimiter

AUDIO_OFFER = (
    "v=0\r\no=- 1 1 IN IP4 0.0.0.0\r\ns=-\r\nt=0 0\r\n"
    "m=audio 9 UDP/TLS/RTP/SAVPF 111\r\nc=IN IP4 0.0.0.0\r\na=rtpmap:111 opus/48000/2\r\n"
)
VIDEO_ONLY_OFFER = AUDIO_OFFER.replace("m=audio 9 UDP/TLS/RTP/SAVPF 111", "m=video 9 UDP/TLS/RTP/SAVPF 96")


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _with(config: Config, **server: object) -> Config:
    return dataclasses.replace(config, server=dataclasses.replace(config.server, **server))


@pytest.fixture
async def make_client(test_config):
    engines: list[Engine] = []
    clients: list[TestClient] = []

    async def make(config: Config | None = None) -> TestClient:
        config = config or test_config
        engine = Engine(config, inference_workers=1)
        engines.append(engine)
        client = TestClient(TestServer(create_app(config, engine=engine)))
        await client.start_server()
        clients.append(client)
        return client

    yield make
    for client in clients:
        await client.close()
    for engine in engines:
        engine.close()


def test_token_bucket_burst_refill_and_retry_after():
    clock = FakeClock()
    limiter = RateLimiter(6, clock=clock)  # 6 per minute: one token every 10 s, burst of 6
    assert all(limiter.acquire("a") == 0.0 for _ in range(6))
    wait = limiter.acquire("a")
    assert wait == pytest.approx(10.0) and limiter.retry_after(wait) == 10
    assert limiter.acquire("b") == 0.0  # other clients are not affected
    clock.now += 10.0
    assert limiter.acquire("a") == 0.0
    assert limiter.acquire("a") > 0
    clock.now += 0.2
    assert limiter.retry_after(limiter.acquire("a")) == 10  # refused attempts cost nothing
    assert RateLimiter(0).acquire("x") == 0.0 and not RateLimiter(0).enabled


def test_rate_limiter_memory_is_bounded():
    clock = FakeClock()
    limiter = RateLimiter(60, max_keys=100, clock=clock)
    for i in range(10_000):
        limiter.acquire(f"10.0.{i // 256}.{i % 256}")
    assert len(limiter) <= 100
    clock.now += 61.0  # every bucket refilled: nothing worth remembering
    kept = len(limiter)
    assert kept > 0 and limiter.prune() == kept and len(limiter) == 0


def test_check_offer():
    assert check_offer({"sdp": AUDIO_OFFER, "type": "offer"}) == AUDIO_OFFER
    assert check_offer({"sdp": AUDIO_OFFER}) == AUDIO_OFFER
    bad = [
        None,
        [],
        "v=0",
        {},
        {"sdp": 5, "type": "offer"},
        {"sdp": "", "type": "offer"},
        {"sdp": AUDIO_OFFER, "type": "answer"},
        {"sdp": "hello world", "type": "offer"},
        {"sdp": VIDEO_ONLY_OFFER, "type": "offer"},
        {"sdp": AUDIO_OFFER + "a=x\x00y\r\n", "type": "offer"},
    ]
    for payload in bad:
        with pytest.raises(OfferError) as err:
            check_offer(payload)
        assert err.value.status == 400, payload
    with pytest.raises(OfferError) as err:
        check_offer({"sdp": AUDIO_OFFER + "a=x-pad:" + "p" * MAX_SDP_BYTES + "\r\n", "type": "offer"})
    assert err.value.status == 413


async def test_offer_precheck_over_http(make_client):
    client = await make_client()
    resp = await client.post("/offer", json={"sdp": VIDEO_ONLY_OFFER, "type": "offer"})
    assert resp.status == 400 and "audio m-line" in (await resp.json())["error"]
    resp = await client.post("/offer", data=b"{not json", headers={"Content-Type": "application/json"})
    assert resp.status == 400
    resp = await client.post("/offer", data=b"\xff\xfe\x00garbage")
    assert resp.status == 400
    big = {"sdp": AUDIO_OFFER + "a=x-pad:" + "p" * (MAX_SDP_BYTES + 10) + "\r\n", "type": "offer"}
    resp = await client.post("/offer", json=big)
    assert resp.status == 413 and resp.content_type == "application/json"
    resp = await client.post("/offer", data=b"x" * (5 * MAX_SDP_BYTES))
    assert resp.status == 413
    text = await (await client.get("/metrics")).text()
    assert 'avatar_http_rejected_total{reason="sdp"} 5.0' in text


async def test_session_creation_rate_limit(make_client, test_config):
    client = await make_client(_with(test_config, rate_limit_per_minute=3))
    statuses = []
    for _ in range(5):
        resp = await client.post("/offer", json={"sdp": VIDEO_ONLY_OFFER, "type": "offer"})
        statuses.append(resp.status)
    assert statuses == [400, 400, 400, 429, 429]
    assert int(resp.headers["Retry-After"]) >= 1
    assert "too many" in (await resp.json())["error"]
    # Other endpoints are not limited by it.
    assert (await client.get("/healthz")).status == 200
    text = await (await client.get("/metrics")).text()
    assert 'avatar_http_rejected_total{reason="rate_limit"} 2.0' in text


async def _offer_statuses(client: TestClient, forwarded: str | None, n: int) -> list[int]:
    headers = {} if forwarded is None else {"X-Forwarded-For": forwarded}
    out = []
    for _ in range(n):
        resp = await client.post("/offer", json={"sdp": VIDEO_ONLY_OFFER, "type": "offer"}, headers=headers)
        out.append(resp.status)
    return out


async def test_rate_limit_behind_a_trusted_proxy(make_client, test_config):
    """Through a trusted proxy (the test client's 127.0.0.1) each forwarded client has its own bucket;
    the hops a client wrote itself (left of what the proxy appended) change nothing."""
    client = await make_client(_with(test_config, rate_limit_per_minute=2, trusted_proxies=("127.0.0.0/8",)))
    assert await _offer_statuses(client, "203.0.113.7", 3) == [400, 400, 429]
    assert await _offer_statuses(client, "198.51.100.1", 2) == [400, 400]  # another client
    # a spoofed hop in front of the real one: still 203.0.113.7's bucket
    assert await _offer_statuses(client, "198.51.100.99, 203.0.113.7", 1) == [429]
    # a chain of trusted proxies is skipped
    assert await _offer_statuses(client, "192.0.2.5, 127.0.0.2", 2) == [400, 400]
    assert await _offer_statuses(client, "192.0.2.5", 1) == [429]
    # no header, or garbage in it: the proxy's own address is the key
    assert await _offer_statuses(client, None, 3) == [400, 400, 429]
    assert await _offer_statuses(client, "not-an-ip", 1) == [429]


async def test_forwarded_for_is_ignored_without_trusted_proxies(make_client, test_config):
    client = await make_client(_with(test_config, rate_limit_per_minute=2))
    assert await _offer_statuses(client, "203.0.113.7", 2) == [400, 400]
    assert await _offer_statuses(client, "198.51.100.1", 1) == [429]  # the header does not help


def test_trusted_proxies_are_checked_at_load():
    from realtime.config import ConfigError, load_config

    cfg = load_config(overrides=['server.trusted_proxies=["10.0.0.0/8", "::1"]'], env={})
    assert cfg.server.trusted_proxies == ("10.0.0.0/8", "::1")
    with pytest.raises(ConfigError, match="trusted_proxies: '10.0.0.300'"):
        load_config(overrides=["server.trusted_proxies=10.0.0.300"], env={})


async def test_overlong_path_segment_is_414(make_client):
    client = await make_client()
    for path in ("/static/" + "x" * 5000 + ".png", "/output/" + "y" * 300, "/api/jobs/" + "z" * 256):
        resp = await client.get(path)
        assert resp.status == 414 and resp.content_type == "application/json", path
    assert (await client.get("/static/" + "x" * 200)).status == 404


def _form(*fields: tuple[str, bytes, str | None]) -> tuple[bytes, str]:
    boundary = "limitsboundary"
    out = b""
    for name, data, filename in fields:
        disp = f'form-data; name="{name}"' + (f'; filename="{filename}"' if filename else "")
        out += f"--{boundary}\r\nContent-Disposition: {disp}\r\n\r\n".encode() + data + b"\r\n"
    return out + f"--{boundary}--\r\n".encode(), f"multipart/form-data; boundary={boundary}"


async def test_live_capacity_and_parameter_ranges(make_client, test_config):
    """Checked by the /offer handler before any model work, so a cold engine is enough."""
    client = await make_client(_with(test_config, max_sessions=0))
    resp = await client.post("/offer", json={"sdp": AUDIO_OFFER, "type": "offer"})
    assert resp.status == 503 and int(resp.headers["Retry-After"]) >= 1
    assert resp.content_type == "application/json"
    client = await make_client()
    bad_params = [
        {"inference_steps": 0},
        {"inference_steps": 9},
        {"dynamic_scale": 2.5},
        {"motion_scale": -0.1},
        {"smooth_motion": 1.5},
        {"align_mouth": 201},
        {"fps": 24},
        {"resolution": 10_000},
        {"seed": -1},
        {"dynamic_scale": "1"},
        {"dynamic_scale": None},
        {"dynamic_scale": True},
        {"nope": 1},
        "not an object",
    ]
    for params in bad_params:
        resp = await client.post("/offer", json={"sdp": AUDIO_OFFER, "type": "offer", "params": params})
        assert resp.status == 400, params
        assert (await resp.json())["error"], params
    for avatar in ("", "x" * 500, 5):
        resp = await client.post("/offer", json={"sdp": AUDIO_OFFER, "type": "offer", "avatar": avatar})
        assert resp.status == 400, avatar


async def test_offline_config_ranges(make_client):
    """Out-of-range generation settings are 400 before anything is decoded or queued.

    (The full-queue 503 + Retry-After is covered by tests/test_offline_api.py::test_full_queue_answers_503.)
    """
    client = await make_client()
    for config in (
        {"inference_steps": 0},
        {"dynamic_scale": 3},
        {"min_resolution": 64},
        {"expand_ratio": 0.9},
        {"align_mouth": -500},
        {"duration": 0},
        {"fps": 60},
        {"unknown": 1},
        [],
    ):
        body, ctype = _form(("config", json.dumps(config).encode(), None), ("audio", b"RIFF", "a.wav"))
        resp = await client.post("/api/sonic/generate", data=body, headers={"Content-Type": ctype})
        assert resp.status == 400, config
        assert (await resp.json())["success"] is False


async def test_chunked_uploads_need_a_length(make_client):
    """Multipart handlers stream parts (client_max_size does not apply), so uploads must declare a size."""
    client = await make_client()

    async def body():
        yield b'--b\r\nContent-Disposition: form-data; name="expand_ratio"\r\n\r\n'
        for _ in range(4):
            yield b"0" * 1000

    for path in ("/api/avatars", "/api/sonic/generate"):
        resp = await client.post(
            path, data=body(), headers={"Content-Type": "multipart/form-data; boundary=b"}
        )
        assert resp.status == 411 and resp.content_type == "application/json", path
    # Non-upload routes still accept chunked bodies (and answer on their merits).
    resp = await client.post("/offer", data=body(), headers={"Content-Type": "application/json"})
    assert resp.status == 400


async def test_unknown_charset_is_415(make_client):
    """request.json() would raise LookupError inside a handler; found by the 10k fuzz run on /offer."""
    client = await make_client()
    body = json.dumps({"sdp": AUDIO_OFFER, "type": "offer"}).encode()
    for ctype in ("application/json; charset=bogus-charset", "text/plain; charset=x-nope"):
        resp = await client.post("/offer", data=body, headers={"Content-Type": ctype})
        assert resp.status == 415 and resp.content_type == "application/json", ctype
    video_only = json.dumps({"sdp": VIDEO_ONLY_OFFER, "type": "offer"}).encode()
    headers = {"Content-Type": "application/json; charset=latin-1"}
    resp = await client.post("/offer", data=video_only, headers=headers)
    assert resp.status == 400  # a known charset passes on to the SDP check


async def test_unknown_charset_inside_a_multipart_part(make_client):
    """``part.text()`` in live_api.upload_avatar raised LookupError (a 500); ops answers 415."""
    client = await make_client()
    body = (
        b'--b\r\nContent-Disposition: form-data; name="expand_ratio"\r\n'
        b"Content-Type: text/plain; charset=bogus\r\n\r\n0.2\r\n--b--\r\n"
    )
    resp = await client.post(
        "/api/avatars", data=body, headers={"Content-Type": "multipart/form-data; boundary=b"}
    )
    assert resp.status == 415 and "charset" in (await resp.json())["error"]
