"""Health, readiness, metrics, OpenAPI and access control (owned by the hardening work)."""

from __future__ import annotations

import logging

from aiohttp import web

from realtime.config import Config

log = logging.getLogger(__name__)


def middlewares(config: Config) -> list:
    """Middlewares applied to every request, outermost first."""
    return [error_middleware]


@web.middleware
async def error_middleware(request: web.Request, handler):  # type: ignore[no-untyped-def]
    """Turn every error into JSON: HTTP errors keep their status, anything else is a logged 500."""
    try:
        return await handler(request)
    except web.HTTPException as exc:
        if exc.content_type == "application/json" or exc.status < 400:
            raise
        detail = exc.text if exc.text and not exc.text.startswith(f"{exc.status}:") else exc.reason
        return web.json_response(
            {"success": False, "error": detail}, status=exc.status, headers=_keep_headers(exc)
        )
    except Exception:
        log.exception("unhandled error on %s %s", request.method, request.path)
        return web.json_response({"success": False, "error": "internal server error"}, status=500)


def _keep_headers(exc: web.HTTPException) -> dict[str, str]:
    return {k: v for k, v in exc.headers.items() if k.lower() in ("retry-after", "allow", "www-authenticate")}


def setup_ops(app: web.Application) -> None:
    """Register ``/healthz`` and ``/readyz``."""
    from realtime.app import ENGINE_KEY

    async def healthz(_: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    async def readyz(request: web.Request) -> web.Response:
        ready = request.app[ENGINE_KEY].ready
        return web.json_response({"ready": ready}, status=200 if ready else 503)

    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
