"""WebRTC signaling and session endpoints (owned by the live-session work)."""

from __future__ import annotations

from aiohttp import web


def setup_live(app: web.Application) -> None:
    """Register ``POST /offer`` and the session endpoints."""
