"""The aiohttp application: one factory, typed app keys, lifecycle in ``cleanup_ctx``.

Routes live beside the work they serve: ``live_api`` (WebRTC sessions),
``offline_api`` (Sonic-compatible generation), ``ops`` (health, metrics,
OpenAPI, access control). This module only assembles them.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import gc
import logging
import os
from collections.abc import AsyncIterator
from pathlib import Path

from aiohttp import web

from realtime.config import ROOT, Config, load_config
from realtime.engine import Engine
from realtime.logs import configure_logging
from realtime.metrics import Metrics

log = logging.getLogger(__name__)

CONFIG_KEY = web.AppKey("config", Config)
ENGINE_KEY = web.AppKey("engine", Engine)
METRICS_KEY = web.AppKey("metrics", Metrics)
FRONT_KEY = web.AppKey("front", bool)  # live sessions run in worker processes, not here

STATIC_DIR = ROOT / "static"


async def _engine_ctx(app: web.Application) -> AsyncIterator[None]:
    """Load and warm the models once per process; free them on cleanup.

    A front whose live sessions run in worker processes leaves the motion model for its first
    offline job (see :meth:`Engine.warmup`).
    """
    import cv2

    # One OpenCV thread, as onnxruntime and libvpx get one: sessions run side by side on the
    # executor. OpenCV's own pool did almost none of the render work here (0.1 % of a core per
    # session) but its idle thread spun in sched_yield after each call (1 %).
    cv2.setNumThreads(1)
    engine = app[ENGINE_KEY]
    front = app.get(FRONT_KEY, False)
    loop = asyncio.get_running_loop()
    await loop.run_in_executor(engine.executor, functools.partial(engine.warmup, motion=not front))
    # Everything loaded so far (modules, models, avatars) lives as long as the process. Frozen out
    # of the collector, it no longer makes each full collection a 100+ ms pause mid-session.
    gc.freeze()
    yield
    engine.close()


def create_app(config: Config | None = None, *, engine: Engine | None = None) -> web.Application:
    """Build the application. Pass ``engine`` to share loaded models (tests do).

    With ``server.workers`` > 0 live sessions run in that many worker processes
    (:mod:`realtime.workers`); otherwise in this process.
    """
    from realtime import live_api, offline_api, ops, workers

    config = config or load_config()
    app = web.Application(
        client_max_size=config.server.max_body_bytes,
        middlewares=ops.middlewares(config),
    )
    app[CONFIG_KEY] = config
    app[ENGINE_KEY] = engine or Engine(config)
    app[METRICS_KEY] = Metrics()
    app[FRONT_KEY] = config.server.workers > 0
    if engine is None:
        app.cleanup_ctx.append(_engine_ctx)
    ops.setup_ops(app)
    if config.server.workers > 0:
        workers.setup_front(app, config)
    else:
        live_api.setup_live(app)
    offline_api.setup_offline(app)

    async def index(_: web.Request) -> web.FileResponse:
        return web.FileResponse(STATIC_DIR / "index.html")

    app.router.add_get("/", index)
    if STATIC_DIR.is_dir():
        app.router.add_static("/static/", STATIC_DIR, follow_symlinks=False)
    return app


def create_worker_app(config: Config, *, index: int, parent: int) -> web.Application:
    """The app of one live worker process: the live endpoints, health and metrics, on a Unix socket.

    Access control, CORS and rate limits stay with the front, the only way in.
    """
    from realtime import live_api, ops, workers

    app = web.Application(
        client_max_size=config.server.max_body_bytes,
        middlewares=[ops.observe_middleware, ops.error_middleware],
    )
    app[CONFIG_KEY] = config
    app[ENGINE_KEY] = Engine(config)
    app[METRICS_KEY] = Metrics()
    app.cleanup_ctx.append(_engine_ctx)
    app.cleanup_ctx.append(lambda a: workers.watch_parent(a, parent))
    ops.setup_ops(app)
    live_api.setup_live(app)
    log.info("live worker %d starting (pid %d)", index, os.getpid())
    return app


def cli_main(argv: list[str]) -> int:
    """``avatar serve``: run the server."""
    parser = argparse.ArgumentParser(prog="avatar serve", description="Run the real-time avatar server.")
    parser.add_argument("--config", type=Path, default=None, help="TOML config file (default: config.toml)")
    parser.add_argument("--host", default=None)
    parser.add_argument("--port", type=int, default=None)
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE")
    parser.add_argument("--log-level", default="INFO")
    args = parser.parse_args(argv)
    overrides = list(args.overrides)
    if args.host is not None:
        overrides.append(f"server.host={args.host}")
    if args.port is not None:
        overrides.append(f"server.port={args.port}")
    config = load_config(args.config, overrides)
    configure_logging(args.log_level, config.server.log_format)
    app = create_app(config)
    log.info("serving on http://%s:%d", config.server.host, config.server.port)
    web.run_app(app, host=config.server.host, port=config.server.port, print=None, shutdown_timeout=10.0)
    return 0
