"""Fuzzing every HTTP endpoint of the real app: hypothesis-generated requests plus a hostile corpus.

Invariant: no 5xx (503 with Retry-After, a capacity answer, is counted apart), every error is
JSON without a traceback, and ``/healthz`` still answers afterwards.

Budget: ``AVATAR_FUZZ_EXAMPLES`` (default 300, CI); ``avatar bench load --fuzz 10000`` runs this
file with a large budget and ``AVATAR_FUZZ_REPORT=path.json`` to record what was tried.
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import json
import os
import string
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestClient, TestServer
from corpus_bad import (
    VALID_OFFER,
    corrupt_media,
    decompression_bomb_png,
    good_media,
    hostile_names,
    malformed_sdps,
)
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from yarl import URL

from realtime.app import create_app
from realtime.config import Config
from realtime.engine import Engine

EXAMPLES = int(os.environ.get("AVATAR_FUZZ_EXAMPLES", "300"))
REPORT = os.environ.get("AVATAR_FUZZ_REPORT")

ROUTE_TEMPLATES = [
    "/",
    "/healthz",
    "/readyz",
    "/metrics",
    "/openapi.json",
    "/offer",
    "/sessions",
    "/sessions/{x}",
    "/sessions/{x}/params",
    "/sessions/{x}/clear",
    "/api/avatars",
    "/api/avatars/{x}",
    "/api/sonic/generate",
    "/api/jobs",
    "/api/jobs/{x}",
    "/output/{x}",
    "/static/{x}",
    "/{x}",
]
REAL_ROUTES = [
    ("POST", "/offer"),
    ("POST", "/offer"),
    ("POST", "/offer"),
    ("GET", "/sessions"),
    ("GET", "/sessions/{x}"),
    ("DELETE", "/sessions/{x}"),
    ("POST", "/api/avatars"),
    ("POST", "/api/avatars"),
    ("POST", "/api/sonic/generate"),
    ("POST", "/api/sonic/generate"),
    ("POST", "/api/sonic/generate?async=1"),
    ("GET", "/api/jobs/{x}"),
    ("DELETE", "/api/jobs/{x}"),
    ("GET", "/api/jobs/{x}/events"),
    ("GET", "/output/{x}"),
    ("GET", "/static/{x}"),
    ("GET", "/healthz"),
    ("GET", "/metrics"),
    ("GET", "/openapi.json"),
    ("OPTIONS", "/offer"),
]
METHODS = ["GET", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "HEAD"]
CONTENT_TYPES = [
    None,
    "application/json",
    "application/json; charset=utf-8",
    "application/json; charset=bogus-charset",
    "text/plain",
    "application/x-www-form-urlencoded",
    "multipart/form-data",
    "multipart/form-data; boundary=",
    "multipart/form-data; boundary=zzz",
    "application/octet-stream",
    "image/png",
    "*/*",
    ";;;",
]
SAFE_TEXT = st.text(alphabet=string.ascii_letters + string.digits + "-_.~!*'()%:@&=+$,;", max_size=40)
PART_TYPES = ["image/png", "audio/wav", "application/json", "text/plain", "x/y", "text/plain; charset=bogus"]
BOUNDARY = "corpusboundary"
HEADER_TEXT = st.text(alphabet=string.printable.strip("\r\n\x0b\x0c"), max_size=60)


@dataclass
class Req:
    method: str
    path: str
    headers: dict[str, str] = field(default_factory=dict)
    params: dict[str, str] = field(default_factory=dict)
    body: bytes | None = None

    def describe(self) -> str:
        return f"{self.method} {self.path} headers={self.headers} body={(self.body or b'')[:120]!r}"


def _json_values() -> st.SearchStrategy[Any]:
    scalars = st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats() | st.text(max_size=30)
    return st.recursive(
        scalars,
        lambda kids: st.lists(kids, max_size=4) | st.dictionaries(st.text(max_size=10), kids, max_size=4),
        max_leaves=12,
    )


def _controls() -> st.SearchStrategy[dict[str, Any]]:
    number = (
        st.floats(allow_nan=True, allow_infinity=True)
        | st.integers(-1000, 1000)
        | st.sampled_from([0, 1, 2, 8, 9, -1, 1e308, "2", "abc", None, True, [], {}])
    )
    keys = st.sampled_from(
        [
            "inference_steps",
            "dynamic_scale",
            "motion_scale",
            "smooth_motion",
            "align_mouth",
            "seed",
            "fps",
            "resolution",
            "duration",
            "min_resolution",
            "expand_ratio",
            "unknown_key",
        ]
    )
    return st.dictionaries(keys, number, max_size=6)


def _sdp() -> st.SearchStrategy[str]:
    broken = list(malformed_sdps().values())
    lines = VALID_OFFER.split("\r\n")

    @st.composite
    def mutated(draw: st.DrawFn) -> str:
        out = list(lines)
        for _ in range(draw(st.integers(1, 4))):
            i = draw(st.integers(0, len(out) - 1))
            op = draw(st.sampled_from(["drop", "dup", "garble", "insert"]))
            if op == "drop" and len(out) > 2:
                del out[i]
            elif op == "dup":
                out.insert(i, out[i])
            elif op == "garble":
                out[i] = out[i][:2] + draw(st.text(max_size=30))
            else:
                out.insert(
                    i, draw(st.sampled_from(["a=", "m=audio", "m=audio 1 x", "c=", "b=AS:-1", "a=mid:"]))
                )
        return "\r\n".join(out)

    return st.sampled_from(broken) | mutated() | st.text(max_size=200) | st.just(VALID_OFFER)


def _offer_body() -> st.SearchStrategy[bytes]:
    obj = st.fixed_dictionaries(
        {"sdp": _sdp(), "type": st.sampled_from(["offer", "answer", "", "pranswer", 5])},
        optional={
            "avatar": st.sampled_from(hostile_names()) | st.text(max_size=20) | st.integers(),
            "params": _controls() | _json_values(),
        },
    )
    raw = st.sampled_from([b"", b"null", b"[]", b"{", b'{"sdp": NaN}', b"\xff\xfe", b'{"sdp":"v=0\\u0000"}'])
    return (
        obj.map(lambda o: json.dumps(o).encode()) | _json_values().map(lambda o: json.dumps(o).encode()) | raw
    )


def _multipart(fields: list[tuple[str, bytes, str | None, str | None]], boundary: str) -> bytes:
    """A multipart body written by hand, so hostile file names reach the server unescaped."""
    parts = []
    for name, data, filename, ctype in fields:
        disp = f'form-data; name="{name}"'
        if filename is not None:
            disp += f'; filename="{filename}"'
        head = f"--{boundary}\r\nContent-Disposition: {disp}\r\n"
        if ctype:
            head += f"Content-Type: {ctype}\r\n"
        parts.append(head.encode("utf-8", "surrogatepass") + b"\r\n" + data + b"\r\n")
    return b"".join(parts) + f"--{boundary}--\r\n".encode()


def _files() -> st.SearchStrategy[bytes]:
    media = {**good_media(), **corrupt_media()}
    return st.sampled_from(sorted(media.values(), key=len)) | st.binary(max_size=300)


@st.composite
def _multipart_body(draw: st.DrawFn) -> tuple[bytes, str]:
    boundary = "fuzz" + uuid.UUID(int=draw(st.integers(0, 2**32))).hex[:12]
    names = st.sampled_from(["audio", "image", "config", "expand_ratio", "file", "avatar", "params", ""])
    config = _controls().map(lambda c: json.dumps(c).encode()) | st.binary(max_size=40)
    fields = draw(
        st.lists(
            st.tuples(
                names,
                _files() | config,
                st.none() | st.sampled_from(hostile_names()) | st.sampled_from(["a.wav", "a.png", "a.mp3"]),
                st.none() | st.sampled_from(PART_TYPES),
            ),
            max_size=4,
        )
    )
    body = _multipart(fields, boundary)
    if draw(st.booleans()) and body:
        body = body[: draw(st.integers(0, len(body)))]  # truncated multipart
    return body, f"multipart/form-data; boundary={boundary}"


@st.composite
def requests(draw: st.DrawFn) -> Req:
    if draw(st.integers(0, 9)) < 7:  # mostly real routes with their real methods: reach the handlers
        method, template = draw(st.sampled_from(REAL_ROUTES))
    else:
        method, template = draw(st.sampled_from(METHODS)), draw(st.sampled_from(ROUTE_TEMPLATES))
    segment = draw(SAFE_TEXT | st.sampled_from(hostile_names()) | st.just(uuid.uuid4().hex))
    path = template.replace("{x}", segment.replace("/", "%2F") if draw(st.booleans()) else segment)
    if not path.startswith("/"):
        path = "/" + path
    headers: dict[str, str] = {}
    if draw(st.booleans()):
        headers["Origin"] = draw(
            st.sampled_from(["https://evil.example", "null", "http://localhost"]) | HEADER_TEXT
        )
    if draw(st.integers(0, 4)) == 0:
        headers["Authorization"] = draw(HEADER_TEXT)
    if draw(st.integers(0, 4)) == 0:
        headers["Range"] = draw(st.sampled_from(["bytes=0-1", "bytes=-5", "bytes=999999-", "bytes=a-b", "x"]))
    if draw(st.integers(0, 6)) == 0:
        headers["Content-Encoding"] = draw(st.sampled_from(["gzip", "deflate", "br", "bogus"]))
    if method == "OPTIONS" and draw(st.booleans()):
        headers["Access-Control-Request-Method"] = draw(st.sampled_from(METHODS) | HEADER_TEXT)
    params = draw(st.dictionaries(SAFE_TEXT, SAFE_TEXT, max_size=3))
    body: bytes | None = None
    if template == "/offer" and method == "POST" and draw(st.integers(0, 3)) > 0:
        kind = "offer"
    elif template.startswith(("/api/avatars", "/api/sonic")) and draw(st.integers(0, 3)) > 0:
        kind = "multipart"
    else:
        kind = draw(st.sampled_from(["none", "offer", "multipart", "json", "raw"]))
    if kind == "offer":
        body = draw(_offer_body())
        headers["Content-Type"] = "application/json"
    elif kind == "multipart":
        body, headers["Content-Type"] = draw(_multipart_body())
    elif kind == "json":
        body = json.dumps(draw(_json_values())).encode()
    elif kind == "raw":
        body = draw(st.binary(max_size=500))
    if kind != "none" and draw(st.integers(0, 3)) == 0:
        ctype = draw(st.sampled_from(CONTENT_TYPES))
        if ctype is None:
            headers.pop("Content-Type", None)
        else:
            headers["Content-Type"] = ctype
    return Req(method, path, headers, params, body)


PIPELINE_ROUTES = ("/offer", "/api/avatars", "/api/sonic/generate")


@dataclass
class Tally:
    tried: int = 0
    statuses: collections.Counter = field(default_factory=collections.Counter)
    server_errors: list[str] = field(default_factory=list)
    capacity: int = 0
    not_json: list[str] = field(default_factory=list)
    client_side_errors: int = 0
    protocol_level: int = 0
    pipeline: bool = False
    pipeline_missing: int = 0


def fuzz_config(config: Config, workers: int = 0) -> Config:
    """Rate limit off (it would answer 429 before the handlers see the input), short connect timeout."""
    server = dataclasses.replace(config.server, rate_limit_per_minute=0, connect_timeout=3.0, workers=workers)
    return dataclasses.replace(config, server=server)


async def _send(client: TestClient, req: Req, tally: Tally) -> None:
    # Built by hand rather than with client.request(), which refuses paths such as "//etc/passwd".
    url = URL(str(client.make_url("/")).rstrip("/") + req.path)
    try:
        resp = await client.session.request(
            req.method, url, headers=req.headers, params=req.params, data=req.body, allow_redirects=False
        )
    except (ValueError, UnicodeError):  # the *client* refused to build it (e.g. a bad header value)
        tally.client_side_errors += 1
        return
    except aiohttp.ClientResponseError as exc:
        # aiohttp's HTTP parser refused the request before the app saw it (e.g. an unsupported
        # Content-Encoding) and its 400 could not be read back (a body on a HEAD answer).
        tally.tried += 1
        tally.statuses[exc.status] += 1
        if exc.status >= 500:
            tally.server_errors.append(f"{exc.status} (unreadable) {req.describe()}")
        else:
            tally.protocol_level += 1
        return
    except aiohttp.ClientError as exc:  # the server hung up without an answer: as bad as a 5xx
        tally.tried += 1
        tally.server_errors.append(f"no response ({exc!r}) {req.describe()}")
        return
    async with resp:
        body = await resp.read()
    tally.tried += 1
    tally.statuses[resp.status] += 1
    if resp.status == 503 and "Retry-After" in resp.headers:
        tally.capacity += 1
    elif resp.status == 503 and req.path == "/readyz" and not tally.pipeline:
        pass  # cold engine: readiness is right to say no
    elif resp.status == 500 and not tally.pipeline and req.path in PIPELINE_ROUTES:
        tally.pipeline_missing += 1
    elif resp.status >= 500:
        tally.server_errors.append(f"{resp.status} {req.describe()} -> {body[:300]!r}")
    assert b"Traceback" not in body, req.describe()
    if resp.status >= 400 and req.method != "HEAD":
        try:
            ok = "error" in json.loads(body)
        except ValueError:
            ok = False
        if ok:
            pass
        elif "X-Request-ID" not in resp.headers and resp.status == 400:
            # Every answer from the app carries X-Request-ID; this one came from aiohttp's HTTP
            # parser (malformed framing/encoding), which runs before any middleware.
            tally.protocol_level += 1
        else:
            tally.not_json.append(f"{resp.status} {req.describe()} -> {body[:200]!r}")


def _write_report(tally: Tally, name: str) -> None:
    if not REPORT:
        return
    path = Path(REPORT)
    data = json.loads(path.read_text()) if path.exists() else {}
    data[name] = {
        "requests_sent": tally.tried,
        "client_side_refusals": tally.client_side_errors,
        "status_counts": {str(k): v for k, v in sorted(tally.statuses.items())},
        "server_errors_5xx": len(tally.server_errors),
        "capacity_503": tally.capacity,
        "non_json_errors": len(tally.not_json),
        "protocol_level_400": tally.protocol_level,
        "pipeline_present": tally.pipeline,
        "pipeline_missing_500": tally.pipeline_missing,
        "examples_5xx": tally.server_errors[:20],
        "examples_non_json": tally.not_json[:20],
    }
    path.write_text(json.dumps(data, indent=2))


async def _start(config: Config, engine: Engine) -> TestClient:
    # One connection per request: after a body it cannot decode (bad gzip) aiohttp answers, then
    # closes the connection, and a pooled client would blame the *next* request for it.
    connector = aiohttp.TCPConnector(force_close=True)
    client = TestClient(TestServer(create_app(config, engine=engine)), connector=connector)
    await client.start_server()
    return client


@pytest.mark.parametrize("workers", [0, 2], ids=["in-process", "front+2-workers"])
async def test_fuzz_http_requests(engine: Engine, test_config: Config, workers: int):
    """Hypothesis-generated requests over every route: no 5xx, JSON errors, still healthy.

    Run against both deployments: sessions in the server process, and a front that forwards the
    live endpoints to worker processes.
    """
    client = await _start(fuzz_config(test_config, workers), engine)
    loop = asyncio.get_running_loop()
    tally = Tally(pipeline=engine.ready)

    @settings(
        max_examples=EXAMPLES,
        deadline=None,
        database=None,
        suppress_health_check=list(HealthCheck),
        derandomize=os.environ.get("AVATAR_FUZZ_RANDOM") is None,
    )
    @given(req=requests())
    def check(req: Req) -> None:
        asyncio.run_coroutine_threadsafe(_send(client, req, tally), loop).result(timeout=120)

    try:
        # Hypothesis drives from a worker thread; requests run on this test's event loop.
        await loop.run_in_executor(None, _collecting(check))
        health = await client.get("/healthz")
        assert health.status == 200
    finally:
        _write_report(tally, "hypothesis")
        await client.close()
    assert tally.tried >= EXAMPLES // 2
    assert not tally.server_errors, "\n".join(tally.server_errors[:10])
    assert not tally.not_json, "\n".join(tally.not_json[:10])


def _collecting(check: Any) -> Any:
    """Run every example even after a 5xx (hypothesis would stop and shrink): failures are asserted after."""

    def run() -> None:
        check()

    return run


async def test_hostile_corpus(engine: Engine, test_config: Config):
    """Every malformed SDP, corrupt file and hostile name against the endpoints that take them."""
    client = await _start(fuzz_config(test_config), engine)
    tally = Tally(pipeline=engine.ready)
    reqs: list[Req] = []
    for sdp in malformed_sdps().values():
        body = json.dumps({"sdp": sdp, "type": "offer"}).encode()
        reqs.append(Req("POST", "/offer", {"Content-Type": "application/json"}, body=body))
    media = {**good_media(), **corrupt_media()}
    wav, png = good_media()["wav"], good_media()["png"]
    mp = {"Content-Type": f"multipart/form-data; boundary={BOUNDARY}"}

    def form(*fields: tuple[str, bytes, str | None]) -> bytes:
        return _multipart([(n, d, f, None) for n, d, f in fields], BOUNDARY)

    for name, data in media.items():
        reqs.append(Req("POST", "/api/avatars", mp, body=form(("image", data, f"{name}.png"))))
        reqs.append(
            Req(
                "POST",
                "/api/sonic/generate",
                mp,
                body=form(("audio", data, f"{name}.wav"), ("image", png, "a.png")),
            )
        )
        reqs.append(
            Req(
                "POST",
                "/api/sonic/generate",
                mp,
                body=form(("audio", wav, "a.wav"), ("image", data, f"{name}.png")),
            )
        )
    charset_part = _multipart([("expand_ratio", b"0.2", None, "text/plain; charset=bogus")], BOUNDARY)
    reqs.append(Req("POST", "/api/avatars", mp, body=charset_part))
    config_part = _multipart([("config", b"{}", None, "application/json; charset=bogus")], BOUNDARY)
    reqs.append(Req("POST", "/api/sonic/generate", mp, body=config_part))
    bomb = decompression_bomb_png()  # ~140 KB on the wire, 144 Mpixel decoded
    reqs.append(Req("POST", "/api/avatars", mp, body=form(("image", bomb, "bomb.png"))))
    reqs.append(
        Req("POST", "/api/sonic/generate", mp, body=form(("audio", wav, "a.wav"), ("image", bomb, "b.png")))
    )
    for hostile in hostile_names():
        for template in (
            "/output/{x}",
            "/api/jobs/{x}",
            "/api/jobs/{x}/events",
            "/sessions/{x}",
            "/static/{x}",
        ):
            reqs.append(Req("GET", template.replace("{x}", hostile)))
        reqs.append(
            Req(
                "POST", "/api/sonic/generate", mp, body=form(("audio", wav, hostile), ("image", png, hostile))
            )
        )
        reqs.append(Req("POST", "/api/avatars", mp, body=form(("image", png, hostile))))
        offer = {"sdp": VALID_OFFER, "type": "offer", "avatar": hostile}
        reqs.append(
            Req("POST", "/offer", {"Content-Type": "application/json"}, body=json.dumps(offer).encode())
        )
    try:
        for req in reqs:
            await _send(client, req, tally)
        assert (await client.get("/healthz")).status == 200
    finally:
        _write_report(tally, "corpus")
        await client.close()
    assert tally.tried == len(reqs) - tally.client_side_errors
    assert tally.statuses[413] >= 2 + 2  # the two bombs refused as too large, plus the big SDPs
    assert not tally.server_errors, "\n".join(tally.server_errors[:10])
    assert not tally.not_json, "\n".join(tally.not_json[:10])
