"""Sonic-compatible offline generation endpoints (owned by the offline work)."""

from __future__ import annotations

from aiohttp import web


def setup_offline(app: web.Application) -> None:
    """Register ``POST /api/sonic/generate``, jobs and ``GET /output/{name}``."""
