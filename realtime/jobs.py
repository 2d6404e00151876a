"""A bounded queue of offline jobs, its worker threads, and the expiry of their outputs.

One :class:`JobQueue` per application owns everything here: the asyncio worker
tasks, the thread pool that runs the blocking job bodies (the offline pipeline,
which in turn hands model and render work to the engine's executor), and the
periodic cleanup task that deletes outputs older than their time to live. Its
``aclose()`` cancels running jobs and awaits every task and thread.

Job state changes only on the event loop; worker threads report progress through
``call_soon_threadsafe``. Watchers (SSE) await :meth:`Job.wait_change`, which
coalesces updates, so a slow watcher never builds a backlog.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import secrets
import shutil
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from realtime.metrics import Metrics

log = logging.getLogger(__name__)

QUEUED, RUNNING, DONE, FAILED, CANCELLED = "queued", "running", "done", "failed", "cancelled"
FINAL = frozenset({DONE, FAILED, CANCELLED})
INTERNAL = "internal_error"

# A job body: called in a worker thread with (progress(fraction, stage), cancel_event); returns the result.
JobBody = Callable[[Callable[[float, str], None], threading.Event], Any]


class QueueFullError(Exception):
    """No room in the queue; retry after ``retry_after`` seconds."""

    def __init__(self, retry_after: int) -> None:
        super().__init__(f"the job queue is full; retry in {retry_after} s")
        self.retry_after = retry_after


@dataclass(eq=False)
class Job:
    """One offline job. Mutated only on the event loop."""

    id: str
    body: JobBody | None  # dropped once the job finishes, so a finished job holds no audio
    on_finish: Callable[[Job], None] | None = None
    status: str = QUEUED
    progress: float = 0.0
    stage: str = "queued"
    created: float = field(default_factory=time.time)
    started: float | None = None
    finished: float | None = None
    error: str | None = None
    error_code: str | None = None
    result: Any = None
    info: dict[str, Any] = field(default_factory=dict)  # extra public fields (video_url, ...)
    cancel_event: threading.Event = field(default_factory=threading.Event)
    version: int = 0
    _event: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def done(self) -> bool:
        return self.status in FINAL

    def snapshot(self) -> dict[str, Any]:
        """The public, JSON-ready view of the job."""
        out: dict[str, Any] = {
            "id": self.id,
            "status": self.status,
            "progress": round(self.progress, 4),
            "stage": self.stage,
            "created": self.created,
            "started": self.started,
            "finished": self.finished,
        }
        if self.error is not None:
            out["error"] = self.error
            out["code"] = self.error_code
        if self.status == DONE:
            out.update(self.info)
        return out

    def _touch(self) -> None:
        self.version += 1
        event, self._event = self._event, asyncio.Event()
        event.set()

    async def wait_change(self, since: int, max_wait: float | None = None) -> int:
        """Wait until the job changed after version ``since`` (or ``max_wait`` s); return the version."""
        if self.version == since:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._event.wait(), max_wait)
        return self.version

    async def wait_done(self) -> None:
        """Wait until the job reached a final status."""
        version = self.version
        while not self.done:
            version = await self.wait_change(version)


class JobQueue:
    """A bounded job queue with ``workers`` concurrent jobs and output expiry under ``output_dir``."""

    def __init__(
        self,
        *,
        workers: int = 1,
        queue_size: int = 8,
        output_dir: Path,
        output_ttl: float = 3600.0,
        metrics: Metrics | None = None,
        cleanup_interval: float | None = None,
        keep_finished: int = 1000,
    ) -> None:
        if workers < 1 or queue_size < 1:
            raise ValueError("workers and queue_size must be >= 1")
        self.workers = workers
        self.queue_size = queue_size
        self.output_dir = Path(output_dir)
        self.output_ttl = output_ttl
        self.metrics = metrics
        self.cleanup_interval = cleanup_interval or max(1.0, min(60.0, output_ttl / 4))
        self._keep_finished = keep_finished
        self._jobs: OrderedDict[str, Job] = OrderedDict()
        self._queue: asyncio.Queue[Job] | None = None
        self._pool: ThreadPoolExecutor | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._recent_seconds: deque[float] = deque(maxlen=20)
        self._loop: asyncio.AbstractEventLoop | None = None

    # -- lifecycle ------------------------------------------------------------------------------------
    async def start(self) -> None:
        """Start the workers and the cleanup task (call on the event loop)."""
        self._loop = asyncio.get_running_loop()
        self.upload_dir.mkdir(parents=True, exist_ok=True)
        self._queue = asyncio.Queue(maxsize=self.queue_size)
        self._pool = ThreadPoolExecutor(max_workers=self.workers, thread_name_prefix="offline-job")
        self._tasks = [
            asyncio.create_task(self._worker(i), name=f"offline-worker-{i}") for i in range(self.workers)
        ]
        self._tasks.append(asyncio.create_task(self._cleanup_loop(), name="offline-cleanup"))

    async def aclose(self) -> None:
        """Cancel queued and running jobs, then await every task and thread."""
        for job in self._jobs.values():
            if not job.done:
                job.cancel_event.set()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks = []
        if self._queue is not None:
            while not self._queue.empty():
                self._finish(
                    self._queue.get_nowait(), CANCELLED, error="server shutting down", code="cancelled"
                )
        if self._pool is not None:
            pool, self._pool = self._pool, None
            # Running bodies see their cancel event within one render chunk; wait for them off the loop.
            await asyncio.get_running_loop().run_in_executor(None, pool.shutdown, True)

    # -- jobs -----------------------------------------------------------------------------------------
    def submit(self, body: JobBody, *, on_finish: Callable[[Job], None] | None = None) -> Job:
        """Queue a job. Raises :class:`QueueFullError` when the queue is full."""
        if self._queue is None:
            raise RuntimeError("JobQueue.start() was not called")
        job = Job(id=secrets.token_urlsafe(12), body=body, on_finish=on_finish)
        try:
            self._queue.put_nowait(job)
        except asyncio.QueueFull:
            if self.metrics is not None:
                self.metrics.http_rejected.labels(reason="queue_full").inc()
            raise QueueFullError(self.retry_after()) from None
        self._jobs[job.id] = job
        self._evict_finished()
        if self.metrics is not None:
            self.metrics.jobs_active.inc()
        return job

    def get(self, job_id: str) -> Job | None:
        return self._jobs.get(job_id)

    def cancel(self, job_id: str) -> bool:
        """Ask a queued or running job to stop; False if unknown or already finished."""
        job = self._jobs.get(job_id)
        if job is None or job.done:
            return False
        job.cancel_event.set()
        return True

    def retry_after(self) -> int:
        """Seconds a refused client should wait: about one job's run time, 1..60."""
        typical = (
            sorted(self._recent_seconds)[len(self._recent_seconds) // 2] if self._recent_seconds else 5.0
        )
        return int(min(60, max(1, math.ceil(typical))))

    @property
    def pending(self) -> int:
        return 0 if self._queue is None else self._queue.qsize()

    # -- internals ------------------------------------------------------------------------------------
    async def _worker(self, index: int) -> None:
        assert self._queue is not None and self._loop is not None
        loop = self._loop
        while True:
            job = await self._queue.get()
            if job.cancel_event.is_set():
                self._finish(job, CANCELLED, error="cancelled before it started", code="cancelled")
                continue
            job.status, job.stage, job.started = RUNNING, "starting", time.time()
            job._touch()

            def progress(fraction: float, stage: str, job: Job = job) -> None:
                with contextlib.suppress(RuntimeError):  # the loop closed under a cancelled job
                    loop.call_soon_threadsafe(self._progress, job, fraction, stage)

            body, job.body = job.body, None
            assert body is not None
            try:
                result = await loop.run_in_executor(self._pool, body, progress, job.cancel_event)
            except asyncio.CancelledError:
                job.cancel_event.set()
                self._finish(job, CANCELLED, error="server shutting down", code="cancelled")
                raise
            except Exception as exc:  # the job's error is its status; the worker carries on
                if job.cancel_event.is_set():
                    self._finish(job, CANCELLED, error="cancelled", code="cancelled")
                elif isinstance(exc, ValueError):  # bad input found late (MediaError, AvatarError, ...)
                    code = getattr(exc, "code", None) or "invalid_input"
                    self._finish(job, FAILED, error=str(exc) or type(exc).__name__, code=code)
                else:  # a bug or a broken install: log the traceback, report no internals
                    log.exception("job %s failed", job.id)
                    self._finish(job, FAILED, error=f"internal error ({type(exc).__name__})", code=INTERNAL)
            else:
                job.result = result
                self._finish(job, DONE)

    def _progress(self, job: Job, fraction: float, stage: str) -> None:
        if job.status != RUNNING:
            return
        job.progress = max(job.progress, min(1.0, fraction))
        job.stage = stage
        job._touch()

    def _finish(self, job: Job, status: str, *, error: str | None = None, code: str | None = None) -> None:
        if job.done:
            return
        job.status, job.error, job.error_code = status, error, code
        job.finished = time.time()
        job.body = None
        if status == DONE:
            job.progress, job.stage = 1.0, "done"
            if job.started is not None:
                self._recent_seconds.append(job.finished - job.started)
        else:
            job.stage = status
        if job.on_finish is not None:
            try:
                job.on_finish(job)
            except Exception:
                log.exception("job %s: on_finish failed", job.id)
        if self.metrics is not None:
            self.metrics.jobs_active.dec()
            self.metrics.jobs_total.labels(status=status).inc()
        job._touch()

    def _evict_finished(self) -> None:
        finished = [j for j in self._jobs.values() if j.done]
        for job in finished[: max(0, len(finished) - self._keep_finished)]:
            self._jobs.pop(job.id, None)

    async def _cleanup_loop(self) -> None:
        while True:
            try:
                await asyncio.get_running_loop().run_in_executor(None, self.cleanup_once)
                self.forget_expired()
            except Exception:
                log.exception("output cleanup failed")
            await asyncio.sleep(self.cleanup_interval)

    def cleanup_once(self, now: float | None = None) -> int:
        """Delete outputs, stale partial files and upload folders older than the TTL; forget old jobs.

        Returns how many files or folders were removed. Touches only files, so it may run
        in a worker thread.
        """
        now = time.time() if now is None else now
        removed = 0
        for folder in (self.output_dir, self.upload_dir):
            if not folder.is_dir():
                continue
            for entry in folder.iterdir():
                if entry == self.upload_dir:
                    continue
                try:
                    age = now - entry.stat().st_mtime
                except FileNotFoundError:
                    continue
                if age < self.output_ttl:
                    continue
                if entry.is_dir():
                    shutil.rmtree(entry, ignore_errors=True)
                else:
                    entry.unlink(missing_ok=True)
                removed += 1
        return removed

    @property
    def upload_dir(self) -> Path:
        """Where request handlers stage uploads (per-request folders, swept like outputs)."""
        return self.output_dir / ".uploads"

    def forget_expired(self, now: float | None = None) -> None:
        """Drop records of jobs that finished longer than the TTL ago (their files are gone)."""
        now = time.time() if now is None else now
        for job in [
            j for j in self._jobs.values() if j.done and j.finished and now - j.finished > self.output_ttl
        ]:
            self._jobs.pop(job.id, None)
