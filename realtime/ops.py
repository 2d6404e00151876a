"""Health, readiness, metrics, OpenAPI and access control (owned by the hardening work).

Middlewares, outermost first:

1. ``observe``: request id, log context, request metrics (route template, status, time).
2. ``cors``: answers preflights, adds CORS headers to every response (errors included),
   refuses state-changing requests from origins that are neither allowed nor our own.
3. ``errors``: every error becomes JSON; tracebacks are logged, never sent.
4. ``auth``: optional bearer token on everything but the open routes.
5. ``limits``: 414 on overlong path segments, 415 on an unknown charset, 411 on chunked
   uploads, early 413 on ``Content-Length``, the per-client rate limit on session creation
   (429), and the ``/offer`` SDP pre-check.
"""

from __future__ import annotations

import codecs
import hmac
import ipaddress
import json
import logging
import re
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError
from aiohttp.web_protocol import RequestPayloadError

from realtime.config import Config, proxy_networks
from realtime.logs import REQUEST_ID
from realtime.ratelimit import RateLimiter

log = logging.getLogger(__name__)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

RATE_LIMITER_KEY = web.AppKey("rate_limiter", RateLimiter)
TRUSTED_PROXIES_KEY = web.AppKey("trusted_proxies", tuple)

# Routes that never need the token: probes, docs, the browser client, and results
# (their names are unguessable). Everything else is protected, so a new route is safe by default.
OPEN_PATHS = frozenset({"/", "/healthz", "/readyz", "/metrics", "/openapi.json", "/favicon.ico"})
OPEN_PREFIXES = ("/static/", "/output/")

# Session creation is what the per-client rate limit guards (each one costs a model stream + encoder).
RATE_LIMITED = frozenset({("POST", "/offer"), ("POST", "/sessions")})

# Multipart uploads, streamed part by part by their handlers.
UPLOADS = frozenset({("POST", "/api/avatars"), ("POST", "/api/sonic/generate")})

MAX_SDP_BYTES = 64 * 1024
MAX_PATH_SEGMENT = 255  # NAME_MAX on Linux
# The JSON around the SDP (avatar, params, escaping) gets generous room, but stays small.
MAX_OFFER_BODY = 4 * MAX_SDP_BYTES

_KNOWN_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
_REQUEST_ID_RE = re.compile(r"^[A-Za-z0-9._-]{1,64}$")
_SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
_CORS_ALLOW_HEADERS = "Authorization, Content-Type, X-Request-ID"
_CORS_EXPOSE_HEADERS = "Retry-After, X-Request-ID, WWW-Authenticate"
_CORS_METHODS = "GET, HEAD, POST, PUT, PATCH, DELETE, OPTIONS"


# -- helpers ---------------------------------------------------------------------


def json_error(status: int, message: str, headers: dict[str, str] | None = None) -> web.Response:
    """The one error body shape: ``{"success": false, "error": message}``."""
    return web.json_response({"success": False, "error": message}, status=status, headers=headers)


def _reject(
    metrics_reason: str, request: web.Request, status: int, message: str, **headers: str
) -> web.Response:
    from realtime.app import METRICS_KEY

    request.app[METRICS_KEY].http_rejected.labels(reason=metrics_reason).inc()
    return json_error(status, message, {k.replace("_", "-"): v for k, v in headers.items()} or None)


def requires_auth(path: str) -> bool:
    """Whether ``path`` needs the bearer token when one is configured."""
    return path not in OPEN_PATHS and not path.startswith(OPEN_PREFIXES)


def route_label(request: web.Request) -> str:
    """The matched route template (bounded cardinality), or ``"unmatched"``."""
    info = request.match_info
    resource = info.route.resource if info is not None and info.route is not None else None
    if resource is None:
        return "unmatched"
    return resource.canonical


def client_key(request: web.Request) -> str:
    """The rate-limit key: the peer address, or behind a trusted reverse proxy the client it names.

    ``X-Forwarded-For`` is spoofable, so it counts only when the peer is one of
    ``server.trusted_proxies``; then the rightmost hop that is not itself a trusted proxy is the
    client (each proxy appends the address it saw, so hops left of that are the client's claims).
    A hop that is not an address keeps the proxy's own key.
    """
    remote = request.remote or "unknown"
    proxies = request.app[TRUSTED_PROXIES_KEY]
    if not _trusted(_address(remote), proxies):
        return remote
    hops = [h.strip() for value in request.headers.getall("X-Forwarded-For", ()) for h in value.split(",")]
    for hop in reversed(hops):
        address = _address(hop)
        if address is None:
            return remote
        if not _trusted(address, proxies):
            return str(address)
    return remote


def _address(host: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        return ipaddress.ip_address(host)
    except ValueError:  # a Unix socket, an unknown peer, a malformed hop
        return None


def _trusted(address: Any, networks: tuple[Any, ...]) -> bool:
    return address is not None and any(address in net for net in networks)


class OfferError(ValueError):
    """A ``/offer`` body that can never be answered; ``status`` is 400 or 413."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


def check_offer(payload: Any) -> str:
    """Validate a ``POST /offer`` body before it reaches aiortc; returns the SDP.

    Raises :class:`OfferError`: not a JSON object, ``sdp`` missing or not text,
    ``type`` not ``"offer"``, SDP over 64 KB (413), not SDP at all, or no audio m-line.
    """
    if not isinstance(payload, dict):
        raise OfferError("body must be a JSON object with 'sdp' and 'type'")
    sdp = payload.get("sdp")
    if not isinstance(sdp, str) or not sdp.strip():
        raise OfferError("'sdp' must be a non-empty string")
    kind = payload.get("type", "offer")
    if kind != "offer":
        raise OfferError("'type' must be 'offer'")
    if len(sdp.encode("utf-8", "surrogatepass")) > MAX_SDP_BYTES:
        raise OfferError(f"SDP larger than {MAX_SDP_BYTES} bytes", status=413)
    if "\x00" in sdp:
        raise OfferError("SDP contains a NUL character")
    lines = [ln.strip() for ln in sdp.splitlines() if ln.strip()]
    if not lines or not lines[0].startswith("v="):
        raise OfferError("'sdp' is not an SDP session description (must start with 'v=')")
    if not any(ln.startswith("m=audio ") for ln in lines):
        raise OfferError("the offer has no audio m-line: the avatar is driven by your audio track")
    return sdp


# -- middlewares -----------------------------------------------------------------


def middlewares(config: Config) -> list:
    """Middlewares applied to every request, outermost first."""
    return [
        observe_middleware,
        make_cors_middleware(config.server.cors_origins),
        error_middleware,
        make_auth_middleware(config.server.auth_token),
        make_limits_middleware(config),
    ]


@web.middleware
async def observe_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Request id (echoed in ``X-Request-ID``), log context, and per-route request metrics."""
    from realtime.app import METRICS_KEY

    metrics = request.app[METRICS_KEY]
    given = request.headers.get("X-Request-ID", "")
    request_id = given if _REQUEST_ID_RE.match(given) else uuid.uuid4().hex[:16]
    token = REQUEST_ID.set(request_id)
    method = request.method if request.method in _KNOWN_METHODS else "OTHER"
    start = time.perf_counter()
    status = 500
    metrics.http_in_flight.inc()
    try:
        try:
            response = await handler(request)
        except web.HTTPException as exc:  # redirects and anything the error middleware let through
            status = exc.status
            if not exc.prepared:
                exc.headers["X-Request-ID"] = request_id
            raise
        status = response.status
        if not response.prepared:
            response.headers["X-Request-ID"] = request_id
        return response
    except BaseException as exc:
        if not isinstance(exc, web.HTTPException):
            status = 499 if isinstance(exc, ConnectionResetError | OSError) else 500
        raise
    finally:
        route = route_label(request)
        metrics.http_in_flight.dec()
        metrics.http_requests.labels(method=method, route=route, status=str(status)).inc()
        metrics.http_request_seconds.labels(route=route).observe(time.perf_counter() - start)
        REQUEST_ID.reset(token)


def _same_origin(origin: str, request: web.Request) -> bool:
    try:
        parts = urlsplit(origin)
    except ValueError:
        return False
    return bool(parts.netloc) and parts.netloc.lower() == (request.host or "").lower()


def make_cors_middleware(allowed: tuple[str, ...]) -> Any:
    """CORS with an allow-list (``"*"`` allows any origin) and preflight handling."""
    allow_any = "*" in allowed
    allow_set = frozenset(o.rstrip("/").lower() for o in allowed if o != "*")

    def is_allowed(origin: str) -> bool:
        return allow_any or origin.rstrip("/").lower() in allow_set

    def add_headers(response: web.StreamResponse, origin: str) -> None:
        if response.prepared:
            return
        response.headers["Access-Control-Allow-Origin"] = "*" if allow_any else origin
        response.headers["Access-Control-Expose-Headers"] = _CORS_EXPOSE_HEADERS
        if not allow_any:
            response.headers.add("Vary", "Origin")

    @web.middleware
    async def cors_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        origin = request.headers.get("Origin")
        if origin is None:
            return await handler(request)
        ok = is_allowed(origin)
        preflight = request.method == "OPTIONS" and "Access-Control-Request-Method" in request.headers
        if preflight:
            if not ok:
                return _reject("cors", request, 403, f"origin {origin!r} is not allowed")
            response = web.Response(status=204)
            add_headers(response, origin)
            response.headers["Access-Control-Allow-Methods"] = _CORS_METHODS
            response.headers["Access-Control-Allow-Headers"] = _CORS_ALLOW_HEADERS
            response.headers["Access-Control-Max-Age"] = "600"
            return response
        if not ok and request.method not in _SAFE_METHODS and not _same_origin(origin, request):
            # A browser on a foreign page could still *send* a simple POST (form/CSRF); refuse it.
            return _reject("cors", request, 403, f"origin {origin!r} is not allowed")
        try:
            response = await handler(request)
        except web.HTTPException as exc:
            if ok:
                add_headers(exc, origin)
            raise
        if ok:
            add_headers(response, origin)
        return response

    return cors_middleware


@web.middleware
async def error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Turn every error into JSON: HTTP errors keep their status, anything else is a logged 500."""
    try:
        response = await handler(request)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        if exc.content_type == "application/json" and exc.text:
            # Already JSON (a handler's own error body): keep it, but return rather than raise
            # so the outer middlewares see an ordinary response.
            return web.Response(
                status=exc.status, text=exc.text, content_type="application/json", headers=_keep_headers(exc)
            )
        detail = exc.text if exc.text and not exc.text.startswith(f"{exc.status}:") else exc.reason
        return json_error(exc.status, detail, _keep_headers(exc))
    except ConnectionResetError:  # the client went away: nobody to answer
        raise
    except (RequestPayloadError, HttpProcessingError) as exc:
        # The body could not be read as sent (bad gzip/deflate, broken chunking): the client's fault.
        return json_error(400, f"malformed request body: {_first_line(exc)}")
    except LookupError as exc:
        # Exactly LookupError (not KeyError/IndexError) is what codecs raise for an unknown
        # charset, e.g. a multipart part's ``Content-Type: text/plain; charset=bogus``.
        if type(exc) is LookupError and "encoding" in str(exc):
            return json_error(415, f"unsupported charset: {_first_line(exc)}")
        log.exception("unhandled error on %s %s", request.method, request.path)
        return json_error(500, "internal server error")
    except Exception:
        log.exception("unhandled error on %s %s", request.method, request.path)
        return json_error(500, "internal server error")
    if isinstance(response, web.FileResponse) and not response.prepared:
        return _check_file_response(request, response)
    return response


def _check_file_response(request: web.Request, response: web.FileResponse) -> web.StreamResponse:
    """A FileResponse finds out only at send time that its file is missing or the Range is
    unsatisfiable, and then answers an empty 404/416; look now so the client gets JSON."""
    path = getattr(response, "_path", None)
    if path is None:
        return response
    try:
        size = Path(path).stat().st_size  # noqa: ASYNC240 - one stat of a local file
    except OSError:
        return json_error(404, "Not Found")
    if not Path(path).is_file():  # noqa: ASYNC240
        return json_error(404, "Not Found")
    try:
        start = request.http_range.start
    except ValueError:  # malformed Range header: aiohttp answers 416 too
        bad = True
    else:
        bad = start is not None and start >= size  # a negative start is a suffix range: fine
    if bad:
        resp = json_error(416, "requested range not satisfiable")
        resp.headers["Content-Range"] = f"bytes */{size}"
        return resp
    return response


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[-1].strip()[:200] if text else type(exc).__name__


def _keep_headers(exc: web.HTTPException) -> dict[str, str]:
    return {k: v for k, v in exc.headers.items() if k.lower() in ("retry-after", "allow", "www-authenticate")}


def make_auth_middleware(token: str) -> Any:
    """Bearer-token check (constant time) on every route but the open ones; off when ``token`` is empty."""
    expected = token.encode("utf-8")

    @web.middleware
    async def auth_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        if not expected or not requires_auth(request.path):
            return await handler(request)
        header = request.headers.get("Authorization", "")
        scheme, _, given = header.partition(" ")
        # compare_digest on equal-length inputs too: always run it so timing does not reveal the scheme.
        good = hmac.compare_digest(given.strip().encode("utf-8", "surrogateescape"), expected)
        if not (good and scheme.lower() == "bearer"):
            error = "invalid_token" if header else "invalid_request"
            return _reject(
                "auth",
                request,
                401,
                "a valid 'Authorization: Bearer <token>' header is required",
                WWW_Authenticate=f'Bearer realm="avatar", error="{error}"',
            )
        return await handler(request)

    return auth_middleware


def make_limits_middleware(config: Config) -> Any:
    """Early body-size refusal, the session-creation rate limit and the ``/offer`` SDP pre-check."""
    max_body = config.server.max_body_bytes

    @web.middleware
    async def limits_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        if any(len(part) > MAX_PATH_SEGMENT for part in request.path.split("/")):
            # Longer than any file name or id we issue; the OS would refuse it (ENAMETOOLONG) anyway.
            return _reject("path", request, 414, f"path segment longer than {MAX_PATH_SEGMENT} characters")
        charset = request.charset
        if charset is not None and not _known_charset(charset):
            # request.text()/json() would raise LookupError deep inside a handler (a 500).
            return _reject("charset", request, 415, f"unsupported charset {charset[:40]!r} in Content-Type")
        length = request.content_length
        if (
            length is None
            and (request.method, request.path) in UPLOADS
            and "chunked" in request.headers.get("Transfer-Encoding", "").lower()
        ):
            # Handlers stream multipart parts, which client_max_size does not bound; a declared length
            # lets the check below bound the whole upload. Browsers, curl and aiohttp all send one.
            return _reject(
                "body_size", request, 411, "uploads need a Content-Length header (no chunked bodies)"
            )
        if length is not None and length > max_body:
            # Refuse before reading: handlers that stream multipart would not see client_max_size.
            return _reject("body_size", request, 413, f"request body larger than {max_body} bytes")
        if (request.method, request.path) in RATE_LIMITED:
            limiter = request.app[RATE_LIMITER_KEY]
            wait = limiter.acquire(client_key(request))
            if wait > 0:
                retry = limiter.retry_after(wait)
                return _reject(
                    "rate_limit",
                    request,
                    429,
                    f"too many sessions started from this address; retry in {retry} s",
                    Retry_After=str(retry),
                )
        if request.method == "POST" and request.path == "/offer":
            refused = await _precheck_offer(request)
            if refused is not None:
                return refused
        return await handler(request)

    return limits_middleware


def _known_charset(name: str) -> bool:
    try:
        codecs.lookup(name)
    except (LookupError, ValueError):
        return False
    return True


async def _precheck_offer(request: web.Request) -> web.Response | None:
    length = request.content_length
    if length is not None and length > MAX_OFFER_BODY:
        return _reject("sdp", request, 413, f"offer body larger than {MAX_OFFER_BODY} bytes")
    body = await request.read()  # cached by aiohttp: the handler's request.json() reads it again
    if len(body) > MAX_OFFER_BODY:
        return _reject("sdp", request, 413, f"offer body larger than {MAX_OFFER_BODY} bytes")
    try:
        payload = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        return _reject("sdp", request, 400, 'body must be JSON: {"sdp": ..., "type": "offer"}')
    try:
        check_offer(payload)
    except OfferError as exc:
        return _reject("sdp", request, exc.status, str(exc))
    return None


# -- routes ----------------------------------------------------------------------


def setup_ops(app: web.Application) -> None:
    """Register ``/healthz``, ``/readyz``, ``/metrics`` and ``/openapi.json``; create the rate limiter."""
    from realtime.app import CONFIG_KEY, ENGINE_KEY, METRICS_KEY
    from realtime.metrics import CONTENT_TYPE

    config = app[CONFIG_KEY]
    app[RATE_LIMITER_KEY] = RateLimiter(config.server.rate_limit_per_minute)
    app[TRUSTED_PROXIES_KEY] = proxy_networks(config.server.trusted_proxies)

    async def healthz(_: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    async def readyz(request: web.Request) -> web.Response:
        from realtime.workers import POOL_KEY

        if not request.app[ENGINE_KEY].ready:
            return web.json_response({"ready": False, "error": "models are still loading"}, status=503)
        pool = request.app.get(POOL_KEY)
        if pool is not None and not pool.ready():
            return web.json_response({"ready": False, "error": "a live worker is (re)starting"}, status=503)
        return web.json_response({"ready": True})

    async def metrics(request: web.Request) -> web.Response:
        from realtime.workers import POOL_KEY

        pool = request.app.get(POOL_KEY)
        extra = await pool.metric_families() if pool is not None else []
        body = request.app[METRICS_KEY].exposition(extra)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE})

    async def openapi(request: web.Request) -> web.Response:
        from realtime.openapi import build_spec

        return web.json_response(build_spec(request.app[CONFIG_KEY]))

    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/openapi.json", openapi)
