"""Live sessions sharded over worker processes (``server.workers`` > 0).

One Python process serves live sessions with about one core at most: aiortc's RTP, DTLS and
SCTP run in Python under one GIL, so a second core goes unused however many sessions there are.
With ``server.workers = N`` the server process (the *front*) keeps HTTP, signaling, avatar
uploads, offline jobs and every limit, and starts N worker processes. Each worker loads its own
:class:`~realtime.engine.Engine` and runs the ordinary live endpoints (:mod:`realtime.live_api`)
on a private Unix socket. The front forwards ``POST /offer`` to the least-loaded worker and
session requests to the worker that owns the session; media then flows between the peer and
that worker directly, never through the front.

The :class:`WorkerPool` owns the processes: it starts them, restarts one that dies (its sessions
are lost; their peers see the connection fail and reconnect), and stops them on shutdown. A
worker whose front has gone away stops itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import multiprocessing
import os
import shutil
import signal
import tempfile
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from multiprocessing.process import BaseProcess
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web
from prometheus_client.metrics_core import Metric
from prometheus_client.parser import text_string_to_metric_families

from realtime.config import Config
from realtime.live_api import add_live_routes, json_reply, server_full

log = logging.getLogger(__name__)

# A worker loads torch, onnxruntime and the default avatar before it answers /readyz.
START_TIMEOUT = 180.0
STOP_TIMEOUT = 15.0
SUPERVISE_EVERY = 1.0
# A worker that misses this many health checks in a row (one every HEALTH_EVERY s, each allowed
# HEALTH_TIMEOUT s) is wedged, not busy: it is killed and restarted like one that died.
HEALTH_EVERY = 5.0
HEALTH_TIMEOUT = 5.0
HEALTH_FAILURES = 3
# Restarts back off 1, 2, 4 ... s up to this, so a worker that cannot start does not spin.
MAX_BACKOFF = 60.0
# Signaling through a worker: ICE gathering on loopback takes well under a second.
OFFER_TIMEOUT = 30.0
QUERY_TIMEOUT = 5.0


class WorkerUnavailable(RuntimeError):
    """A worker did not answer (it died, is restarting or is overloaded)."""


@dataclass
class Worker:
    """One worker process and what the front knows of it."""

    index: int
    socket: Path
    process: BaseProcess | None = None
    http: aiohttp.ClientSession | None = None
    ready: bool = False
    restarts: int = 0
    pending: int = 0  # offers being answered by this worker right now
    next_start: float = 0.0
    health_failures: int = 0
    checked_at: float = 0.0

    @property
    def alive(self) -> bool:
        return self.process is not None and self.process.is_alive()

    def describe(self, sessions: int | None) -> dict[str, Any]:
        return {
            "index": self.index,
            "pid": None if self.process is None else self.process.pid,
            "ready": self.ready,
            "sessions": sessions,
            "restarts": self.restarts,
        }


class WorkerPool:
    """The worker processes of one front, and the requests the front sends them."""

    def __init__(self, config: Config, *, log_level: int | None = None) -> None:
        self.config = config
        self.size = config.server.workers
        self.log_level = log_level if log_level is not None else logging.getLogger().getEffectiveLevel()
        self._dir = Path(tempfile.mkdtemp(prefix="avatar-workers-"))
        os.chmod(self._dir, 0o700)  # only this user may talk to the workers' sockets
        self.workers = [Worker(i, self._dir / f"w{i}.sock") for i in range(self.size)]
        self.lock = asyncio.Lock()  # one offer chooses its worker at a time
        self.owner: dict[str, int] = {}  # session id -> worker index, rebuilt from every snapshot
        self._closing = False
        self._supervisor: asyncio.Task[None] | None = None
        self._restarts: dict[int, asyncio.Task[None]] = {}  # worker index -> its restart; owned
        self.health_every, self.health_timeout, self.health_failures = (
            HEALTH_EVERY,
            HEALTH_TIMEOUT,
            HEALTH_FAILURES,
        )

    # -- lifecycle --------------------------------------------------------------------------------
    async def start(self) -> None:
        """Start every worker and wait until all are ready (models loaded), or raise."""
        for w in self.workers:
            self._spawn(w)
        results = await asyncio.gather(*(self._wait_ready(w) for w in self.workers), return_exceptions=True)
        failed = [r for r in results if isinstance(r, BaseException)]
        if failed:
            await self.close()
            raise RuntimeError(f"live workers failed to start: {failed[0]}")
        self._supervisor = asyncio.create_task(self._supervise(), name="worker-supervisor")
        log.info(
            "%d live workers ready: pids %s", self.size, [w.process.pid for w in self.workers if w.process]
        )

    def _spawn(self, w: Worker) -> None:
        with contextlib.suppress(FileNotFoundError):
            w.socket.unlink()
        # spawn, not fork: the front has threads (executors) and an event loop that must not be copied
        ctx = multiprocessing.get_context("spawn")
        server = dataclasses.replace(self.config.server, workers=0)
        config = dataclasses.replace(self.config, server=server)
        w.process = ctx.Process(
            target=worker_main,
            args=(config, w.index, str(w.socket), os.getpid(), self.log_level),
            name=f"avatar-live-{w.index}",
            daemon=False,  # the pool stops its workers itself, with SIGTERM, so they close their peers
        )
        w.process.start()
        w.ready = False

    async def _wait_ready(self, w: Worker) -> None:
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if not w.alive:
                code = None if w.process is None else w.process.exitcode
                raise RuntimeError(f"live worker {w.index} exited with code {code} while starting")
            if w.socket.exists():
                with contextlib.suppress(WorkerUnavailable):
                    status, _ = await self._call(w, "GET", "/readyz", limit_s=2.0)
                    if status == 200:
                        w.ready = True
                        return
            await asyncio.sleep(0.2)
        raise RuntimeError(f"live worker {w.index} was not ready after {START_TIMEOUT:.0f} s")

    async def _supervise(self) -> None:
        """Restart workers that died or stopped answering; the only task that restarts workers."""
        while not self._closing:
            await asyncio.sleep(SUPERVISE_EVERY)
            now = time.monotonic()
            for w in self.workers:
                busy = w.index in self._restarts and not self._restarts[w.index].done()
                if self._closing or w.alive or now < w.next_start or busy:
                    continue
                self._restarts[w.index] = asyncio.create_task(
                    self._restart(w), name=f"restart-worker-{w.index}"
                )
            due = [w for w in self.workers if w.ready and w.alive and now - w.checked_at >= self.health_every]
            if due:
                await asyncio.gather(*(self._check_health(w) for w in due))

    async def _restart(self, w: Worker) -> None:
        code = None if w.process is None else w.process.exitcode
        lost = [sid for sid, i in self.owner.items() if i == w.index]
        for sid in lost:
            self.owner.pop(sid, None)
        backoff = min(MAX_BACKOFF, 2.0 ** min(w.restarts, 6))
        w.restarts += 1
        w.next_start = time.monotonic() + backoff
        log.error(
            "live worker %d died (exit code %s), %d session(s) lost; restarting it", w.index, code, len(lost)
        )
        await self._close_http(w)
        self._spawn(w)
        try:
            await self._wait_ready(w)
            log.info("live worker %d is back (pid %s)", w.index, w.process.pid if w.process else None)
        except RuntimeError as exc:
            log.error("%s; retrying in %.0f s", exc, backoff)
            if w.alive and w.process is not None:  # alive but never ready: start it afresh
                w.process.kill()

    async def _check_health(self, w: Worker) -> None:
        w.checked_at = time.monotonic()
        try:
            status, _ = await self._call(w, "GET", "/healthz", limit_s=self.health_timeout)
            healthy = status == 200
        except WorkerUnavailable:
            healthy = False
        w.health_failures = 0 if healthy else w.health_failures + 1
        if w.health_failures >= self.health_failures and w.process is not None and w.alive:
            log.error(
                "live worker %d did not answer %d health checks in a row; killing it",
                w.index,
                w.health_failures,
            )
            w.health_failures = 0
            w.ready = False
            w.process.kill()

    async def close(self) -> None:
        """Stop every worker: SIGTERM (they close their peers), then SIGKILL after STOP_TIMEOUT."""
        self._closing = True
        for task in [self._supervisor, *self._restarts.values()]:
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        for w in self.workers:
            if w.alive and w.process is not None:
                w.process.terminate()
        loop = asyncio.get_running_loop()
        deadline = time.monotonic() + STOP_TIMEOUT
        for w in self.workers:
            if w.process is not None:
                await loop.run_in_executor(None, w.process.join, max(0.0, deadline - time.monotonic()))
            if w.alive and w.process is not None:
                log.warning("live worker %d did not stop in %.0f s; killing it", w.index, STOP_TIMEOUT)
                w.process.kill()
                await loop.run_in_executor(None, w.process.join, 5.0)
            await self._close_http(w)
        shutil.rmtree(self._dir, ignore_errors=True)

    # -- requests to workers ----------------------------------------------------------------------
    def _client(self, w: Worker) -> aiohttp.ClientSession:
        if w.http is None or w.http.closed:
            w.http = aiohttp.ClientSession(connector=aiohttp.UnixConnector(path=str(w.socket)))
        return w.http

    @staticmethod
    async def _close_http(w: Worker) -> None:
        if w.http is not None:
            await w.http.close()
            w.http = None

    async def _call(
        self,
        w: Worker,
        method: str,
        path: str,
        *,
        body: bytes | None = None,
        limit_s: float = QUERY_TIMEOUT,
        text: bool = False,
    ) -> tuple[int, Any]:
        """One request to worker ``w`` -> (status, JSON body or text); raises WorkerUnavailable."""
        headers = {"Content-Type": "application/json"} if body is not None else None
        try:
            async with self._client(w).request(
                method,
                f"http://worker{path}",
                data=body,
                headers=headers,
                timeout=aiohttp.ClientTimeout(total=limit_s),
            ) as r:
                if text:
                    return r.status, await r.text()
                return r.status, await r.json(content_type=None)
        except (TimeoutError, aiohttp.ClientError, ValueError) as exc:
            raise WorkerUnavailable(f"live worker {w.index}: {exc or type(exc).__name__}") from exc

    async def snapshot(self) -> dict[int, list[dict[str, Any]]]:
        """The sessions of every ready worker that answers; rebuilds the session -> worker map."""
        ready = [w for w in self.workers if w.ready and w.alive]
        replies = await asyncio.gather(
            *(self._call(w, "GET", "/sessions") for w in ready), return_exceptions=True
        )
        out: dict[int, list[dict[str, Any]]] = {}
        for w, reply in zip(ready, replies, strict=True):
            if isinstance(reply, BaseException):
                log.warning("%s", reply)
                continue
            status, data = reply
            if status == 200 and isinstance(data, dict):
                out[w.index] = [dict(s, worker=w.index) for s in data.get("sessions", [])]
        self.owner = {s["session_id"]: i for i, sessions in out.items() for s in sessions}
        return out

    async def choose(self) -> Worker | None:
        """Reserve the ready worker with the fewest sessions (None: none can take one, or all full).

        Call under :attr:`lock`; release with ``worker.pending -= 1`` when the offer is answered.
        """
        sessions = await self.snapshot()
        total = sum(len(s) for s in sessions.values()) + sum(w.pending for w in self.workers)
        if total >= self.config.server.max_sessions:
            raise PoolFull
        candidates = [w for w in self.workers if w.index in sessions]
        if not candidates:
            return None
        best = min(candidates, key=lambda w: (len(sessions[w.index]) + w.pending, w.index))
        best.pending += 1
        return best

    async def forward(self, w: Worker, method: str, path: str, body: bytes | None = None) -> tuple[int, Any]:
        limit_s = OFFER_TIMEOUT if path == "/offer" else QUERY_TIMEOUT
        return await self._call(w, method, path, body=body, limit_s=limit_s)

    async def find(self, session_id: str) -> Worker | None:
        """The worker that runs ``session_id`` (None if no worker does)."""
        if session_id not in self.owner:
            await self.snapshot()
        index = self.owner.get(session_id)
        return None if index is None else self.workers[index]

    async def metric_families(self) -> list[Metric]:
        """Every ready worker's metrics, each sample labelled with its ``worker`` index."""
        ready = [w for w in self.workers if w.ready and w.alive]
        replies = await asyncio.gather(
            *(self._call(w, "GET", "/metrics", text=True) for w in ready), return_exceptions=True
        )
        families: list[Metric] = []
        for w, reply in zip(ready, replies, strict=True):
            if isinstance(reply, BaseException) or reply[0] != 200:
                continue
            for fam in text_string_to_metric_families(reply[1]):
                labelled = Metric(fam.name, fam.documentation, fam.type, fam.unit)
                for s in fam.samples:
                    labelled.add_sample(
                        s.name, {**s.labels, "worker": str(w.index)}, s.value, s.timestamp, s.exemplar
                    )
                families.append(labelled)
        return families

    def ready(self) -> bool:
        return all(w.ready and w.alive for w in self.workers)


class PoolFull(Exception):
    """Every live-session slot of the server is taken."""


POOL_KEY = web.AppKey("worker_pool", WorkerPool)


# -- the front's live endpoints ---------------------------------------------------------------------
def _unavailable(message: str) -> web.Response:
    return json_reply({"success": False, "error": message}, 503)


async def offer(request: web.Request) -> web.Response:
    """``POST /offer`` on the front: the least-loaded worker answers it."""
    from realtime.app import CONFIG_KEY

    pool, config = request.app[POOL_KEY], request.app[CONFIG_KEY]
    body = await request.read()  # already checked as JSON with a usable SDP by the limits middleware
    async with pool.lock:
        try:
            worker = await pool.choose()
        except PoolFull:
            return server_full(request, config.server.max_sessions)
    if worker is None:
        return _unavailable("no live worker is ready (starting or restarting); retry later")
    try:
        status, data = await pool.forward(worker, "POST", "/offer", body)
    except WorkerUnavailable as exc:
        log.warning("offer failed: %s", exc)
        return _unavailable(f"live worker {worker.index} did not answer; retry later")
    finally:
        worker.pending -= 1
    if status == 200 and isinstance(data, dict) and "session_id" in data:
        pool.owner[data["session_id"]] = worker.index
    return json_reply(data, status)


async def list_sessions(request: web.Request) -> web.Response:
    """``GET /sessions``: every worker's sessions, each with its ``worker`` index."""
    from realtime.app import CONFIG_KEY

    pool = request.app[POOL_KEY]
    by_worker = await pool.snapshot()
    return web.json_response(
        {
            "sessions": [s for i in sorted(by_worker) for s in by_worker[i]],
            "max_sessions": request.app[CONFIG_KEY].server.max_sessions,
            "workers": [
                w.describe(len(by_worker[w.index]) if w.index in by_worker else None) for w in pool.workers
            ],
        }
    )


async def _session_call(request: web.Request, method: str) -> web.Response:
    pool = request.app[POOL_KEY]
    sid = request.match_info["session_id"]
    worker = await pool.find(sid)
    if worker is None:
        raise web.HTTPNotFound(text=f"no live session {sid!r}")
    try:
        status, data = await pool.forward(worker, method, f"/sessions/{sid}")
    except WorkerUnavailable as exc:
        return _unavailable(str(exc))
    if status == 200 and isinstance(data, dict):
        data = dict(data, worker=worker.index)
    if method == "DELETE" and status == 200:
        pool.owner.pop(sid, None)
    return json_reply(data, status)


async def get_session(request: web.Request) -> web.Response:
    """``GET /sessions/{id}`` from the worker that runs it."""
    return await _session_call(request, "GET")


async def delete_session(request: web.Request) -> web.Response:
    """``DELETE /sessions/{id}`` on the worker that runs it."""
    return await _session_call(request, "DELETE")


async def _pool_ctx(app: web.Application) -> AsyncIterator[None]:
    pool = app[POOL_KEY]
    await pool.start()
    yield
    await pool.close()


def setup_front(app: web.Application, config: Config) -> None:
    """The live endpoints of a front: forwarded to ``config.server.workers`` worker processes."""
    app[POOL_KEY] = WorkerPool(config)
    app.cleanup_ctx.append(_pool_ctx)
    add_live_routes(app, offer, list_sessions, get_session, delete_session)


# -- the worker process ------------------------------------------------------------------------------
def worker_main(config: Config, index: int, socket_path: str, parent: int, log_level: int) -> None:
    """Entry point of a worker process: the live endpoints on a Unix socket until SIGTERM."""
    from realtime.app import create_worker_app
    from realtime.logs import configure_logging

    configure_logging(log_level, config.server.log_format)
    # Out of the front's process group: Ctrl-C in a terminal stops the front, which then stops its
    # workers in order, instead of every worker racing the front's shutdown.
    os.setpgrp()
    app = create_worker_app(config, index=index, parent=parent)
    web.run_app(app, path=socket_path, print=None, access_log=None, shutdown_timeout=5.0, handle_signals=True)


async def watch_parent(app: web.Application, parent: int) -> AsyncIterator[None]:
    """Stop this worker (SIGTERM to itself: a graceful shutdown) when its front is gone."""

    async def watch() -> None:
        while True:
            await asyncio.sleep(1.0)
            if os.getppid() != parent:
                log.warning("the front (pid %d) is gone; stopping", parent)
                os.kill(os.getpid(), signal.SIGTERM)
                return

    task = asyncio.create_task(watch(), name="parent-watch")
    yield
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
