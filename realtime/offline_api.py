"""Sonic-compatible offline generation over HTTP.

- ``POST /api/sonic/generate`` (multipart ``audio``, ``image``, ``config``) answers
  ``{success, video_url, output_path}`` when the video is ready, or with ``?async=1``
  ``{success, job_id, status_url, events_url}`` at once (202).
- ``GET /api/jobs/{id}`` is a job's status and progress; ``GET /api/jobs/{id}/events``
  streams them as server-sent events; ``DELETE /api/jobs/{id}`` cancels.
- ``GET /output/{name}`` serves a finished MP4 (range requests work).

Uploads are streamed to a per-request folder under the size limits and validated
(by content) before a job is queued, so bad input gets a 4xx naming the problem at
once and leaves no files behind. Decoding runs in the default executor, face
registration and the pipeline on the engine's executor and the queue's threads;
nothing heavy runs on the event loop.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import secrets
import shutil
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from urllib.parse import unquote

from aiohttp import BodyPartReader, web

from realtime.jobs import DONE, FAILED, INTERNAL, Job, JobQueue, QueueFullError
from realtime.media import AudioClip, MediaError, decode_audio, sniff_image
from realtime.offline import GenerateParams, ParamError, generate_video

log = logging.getLogger(__name__)


class StreamSlots:
    """Open progress streams per client, capped: each holds a connection and a task until its job ends.

    Owned by the app's event loop (the only caller), so it needs no lock. ``limit`` 0 = no cap.
    """

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._open: dict[str, int] = {}

    def acquire(self, key: str) -> bool:
        held = self._open.get(key, 0)
        if self.limit > 0 and held >= self.limit:
            return False
        self._open[key] = held + 1
        return True

    def release(self, key: str) -> None:
        held = self._open.get(key, 0) - 1
        if held > 0:
            self._open[key] = held
        else:
            self._open.pop(key, None)

    def held(self, key: str) -> int:
        return self._open.get(key, 0)


JOBS_KEY = web.AppKey("offline_jobs", JobQueue)
STREAMS_KEY = web.AppKey("offline_event_streams", StreamSlots)

_FIELDS = ("audio", "image", "config")
_MAX_CONFIG_BYTES = 64 * 1024
_CHUNK = 256 * 1024
# Output names are secrets.token_urlsafe(16) + ".mp4": 22 URL-safe characters.
_OUTPUT_NAME = re.compile(r"^[A-Za-z0-9_-]{16,64}\.mp4$")
_JOB_ID = re.compile(r"^[A-Za-z0-9_-]{8,64}$")
_BAD_FILENAME = re.compile(r"[/\\\x00-\x1f]|^\.\.?$|^$")

# HTTP status for each media / avatar error code.
_STATUS = {
    "audio_too_large": 413,
    "audio_too_long": 413,
    "image_too_large": 413,
    "not_audio": 415,
    "not_an_image": 415,
}


class InputError(Exception):
    """A request that cannot be served: ``status``, a stable ``code`` and a message."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status, self.code = status, code

    def response(self) -> web.Response:
        return web.json_response(
            {"success": False, "error": str(self), "code": self.code}, status=self.status
        )


def _from_value_error(exc: ValueError, default_status: int = 422) -> InputError:
    code = getattr(exc, "code", None) or "invalid_input"
    return InputError(_STATUS.get(code, default_status), code, str(exc))


def _check_filename(part: BodyPartReader) -> None:
    """Refuse path tricks: we never use the client's file name, but a name like this is hostile."""
    name = part.filename
    if name is None:
        return
    plain = unquote(name)
    if _BAD_FILENAME.search(plain) or ".." in plain:
        raise InputError(400, "bad_filename", f"file name {name!r} of field {part.name!r} is not allowed")


async def _read_limited(part: BodyPartReader, limit: int, what: str, code: str) -> bytes:
    data = bytearray()
    while chunk := await part.read_chunk(_CHUNK):
        data += chunk
        if len(data) > limit:
            raise InputError(413, code, f"{what} is larger than the limit of {limit} bytes")
    return bytes(data)


async def _save_limited(part: BodyPartReader, path: Path, limit: int) -> int:
    """Stream a part to ``path``; file writes go to a thread so the loop never blocks on disk."""
    loop = asyncio.get_running_loop()
    size = 0
    fh = await loop.run_in_executor(None, path.open, "wb")
    try:
        while chunk := await part.read_chunk(_CHUNK):
            size += len(chunk)
            if size > limit:
                raise InputError(
                    413, "audio_too_large", f"the audio is larger than the limit of {limit} bytes"
                )
            await loop.run_in_executor(None, fh.write, chunk)
    finally:
        await loop.run_in_executor(None, fh.close)
    return size


def _parse_config(text: bytes) -> GenerateParams:
    if not text.strip():
        return GenerateParams()
    try:
        data = json.loads(text)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise InputError(400, "invalid_config", f"config is not valid JSON: {exc}") from None
    try:
        return GenerateParams.from_mapping(data)
    except ParamError as exc:
        raise InputError(400, "invalid_config", str(exc)) from None


async def _read_form(request: web.Request, folder: Path) -> tuple[Path, bytes, GenerateParams]:
    """Read the multipart body: the audio streamed to ``folder``, the image and config in memory."""
    from realtime.app import CONFIG_KEY

    config = request.app[CONFIG_KEY]
    if not request.content_type.startswith("multipart/form-data"):
        raise InputError(400, "not_multipart", "send multipart/form-data with fields audio, image and config")
    try:
        reader = await request.multipart()
    except (AssertionError, ValueError) as exc:  # aiohttp asserts on a malformed multipart header
        raise InputError(400, "bad_multipart", f"malformed multipart body: {exc}") from None
    audio_path: Path | None = None
    image: bytes | None = None
    params: GenerateParams | None = None
    seen: set[str] = set()
    while True:
        try:
            part = await reader.next()
        except (AssertionError, ValueError) as exc:
            raise InputError(400, "bad_multipart", f"malformed multipart body: {exc}") from None
        if part is None:
            break
        if not isinstance(part, BodyPartReader):
            raise InputError(400, "bad_multipart", "nested multipart bodies are not supported")
        name = part.name or ""
        if name not in _FIELDS:
            raise InputError(
                400, "unknown_field", f"unexpected form field {name!r}; expected {', '.join(_FIELDS)}"
            )
        if name in seen:
            raise InputError(400, "duplicate_field", f"form field {name!r} was sent twice")
        seen.add(name)
        _check_filename(part)
        if name == "audio":
            audio_path = folder / "audio"
            size = await _save_limited(part, audio_path, config.offline.max_audio_bytes)
            if size == 0:
                raise InputError(400, "empty_audio", "the audio file is empty")
        elif name == "image":
            image = await _read_limited(part, config.avatars.max_image_bytes, "the image", "image_too_large")
        else:
            params = _parse_config(await _read_limited(part, _MAX_CONFIG_BYTES, "config", "config_too_large"))
    missing = [f for f, v in (("audio", audio_path), ("image", image)) if v is None]
    if missing:
        raise InputError(400, "missing_field", f"missing form field(s): {', '.join(missing)}")
    assert audio_path is not None and image is not None
    if not image:
        raise InputError(400, "empty_image", "the image file is empty")
    if sniff_image(image[:16]) is None:
        raise InputError(415, "not_an_image", "the image is not a PNG, JPEG or WebP file")
    return audio_path, image, params or GenerateParams()


def _output_url(request: web.Request, name: str) -> str:
    return str(request.url.with_path(f"/output/{name}").with_query(None))


async def generate(request: web.Request) -> web.Response:
    """``POST /api/sonic/generate``."""
    from realtime.app import CONFIG_KEY, ENGINE_KEY

    config, engine, queue = request.app[CONFIG_KEY], request.app[ENGINE_KEY], request.app[JOBS_KEY]
    limit = config.server.max_body_bytes
    if request.content_length is not None and request.content_length > limit:
        return InputError(413, "body_too_large", f"request body over {limit} bytes").response()
    if queue.pending >= queue.queue_size:  # refuse before reading a large upload that cannot be queued
        return _queue_full(QueueFullError(queue.retry_after()))

    folder = queue.upload_dir / secrets.token_hex(8)
    loop = asyncio.get_running_loop()
    handed_over = False
    try:
        await loop.run_in_executor(None, folder.mkdir)
        audio_path, image, params = await _read_form(request, folder)
        clip: AudioClip = await loop.run_in_executor(
            None,
            lambda: decode_audio(
                audio_path,
                max_bytes=config.offline.max_audio_bytes,
                max_seconds=config.offline.max_audio_seconds,
            ),
        )
        bundle = await loop.run_in_executor(
            engine.executor, lambda: engine.register(image, expand_ratio=params.expand_ratio)
        )
        name = secrets.token_urlsafe(16) + ".mp4"
        out_path = queue.output_dir / name

        def body(progress: Any, cancel: Any) -> Any:
            return generate_video(
                engine, clip, out_path, params, bundle=bundle, progress=progress, cancel=cancel
            )

        job = queue.submit(body, on_finish=lambda _job: shutil.rmtree(folder, ignore_errors=True))
        handed_over = True
    except InputError as exc:
        return exc.response()
    except QueueFullError as exc:
        return _queue_full(exc)
    except (MediaError, ValueError) as exc:  # MediaError, AvatarError, ParamError
        return _from_value_error(exc).response()
    finally:
        if not handed_over:
            await loop.run_in_executor(None, shutil.rmtree, folder, True)

    job.info = {
        "video_url": _output_url(request, name),
        "output_path": str(Path(config.offline.output_dir) / name),
    }
    if _truthy(request.query.get("async")):
        return web.json_response(
            {
                "success": True,
                "job_id": job.id,
                "status": job.status,
                "status_url": f"/api/jobs/{job.id}",
                "events_url": f"/api/jobs/{job.id}/events",
            },
            status=202,
        )
    # Synchronous: wait, but give up the job if the client hangs up (nobody would get the video).
    version = job.version
    try:
        while not job.done:
            version = await job.wait_change(version, max_wait=1.0)
            transport = request.transport
            log.debug(
                "job %s: transport %r closing=%s", job.id, transport, transport and transport.is_closing()
            )
            if not job.done and (transport is None or transport.is_closing()):
                break
    except asyncio.CancelledError:  # the server cancels handlers of vanished clients when so configured
        queue.cancel(job.id)
        raise
    if not job.done:
        queue.cancel(job.id)
        log.info("job %s cancelled: the client went away", job.id)
    return _job_result(job)


def _truthy(value: str | None) -> bool:
    return value is not None and value.lower() in ("1", "true", "yes", "on")


def _retry_later(status: int, code: str, error: str, retry_after: int) -> web.Response:
    """A JSON refusal the client can retry (full queue, too many streams), with ``Retry-After``."""
    return web.json_response(
        {"success": False, "error": error, "code": code},
        status=status,
        headers={"Retry-After": str(retry_after)},
    )


def _queue_full(exc: QueueFullError) -> web.Response:
    return _retry_later(503, "queue_full", str(exc), exc.retry_after)


def _job_result(job: Job) -> web.Response:
    if job.status == DONE:
        return web.json_response({"success": True, **job.info})
    if job.status == FAILED:
        status = 500 if job.error_code == INTERNAL else _STATUS.get(job.error_code or "", 422)
    else:
        status = 503  # cancelled (shutdown or DELETE)
    return web.json_response(
        {"success": False, "error": job.error or job.status, "code": job.error_code, "job_id": job.id},
        status=status,
    )


def _job_or_404(request: web.Request) -> Job:
    job_id = request.match_info["job_id"]
    job = request.app[JOBS_KEY].get(job_id) if _JOB_ID.match(job_id) else None
    if job is None:
        raise web.HTTPNotFound(
            text=json.dumps({"success": False, "error": "no such job", "code": "not_found"}),
            content_type="application/json",
        )
    return job


async def job_status(request: web.Request) -> web.Response:
    """``GET /api/jobs/{job_id}``."""
    return web.json_response(_job_or_404(request).snapshot())


async def job_cancel(request: web.Request) -> web.Response:
    """``DELETE /api/jobs/{job_id}``: stop a queued or running job."""
    job = _job_or_404(request)
    cancelled = request.app[JOBS_KEY].cancel(job.id)
    return web.json_response({"success": cancelled, **job.snapshot()}, status=202 if cancelled else 409)


async def job_events(request: web.Request) -> web.StreamResponse:
    """``GET /api/jobs/{job_id}/events``: ``progress`` events, then one ``done`` or ``failed``/``cancelled``."""
    from realtime.ops import client_key

    job = _job_or_404(request)
    slots, key = request.app[STREAMS_KEY], client_key(request)
    if not slots.acquire(key):
        return _retry_later(
            429,
            "too_many_streams",
            f"this client already has {slots.held(key)} progress streams open (the limit);"
            f" close one, or poll {request.path.removesuffix('/events')}",
            5,
        )
    try:
        resp = web.StreamResponse(
            headers={
                "Content-Type": "text/event-stream",
                "Cache-Control": "no-cache",
                "X-Accel-Buffering": "no",
            }
        )
        await resp.prepare(request)
        # A client that leaves is noticed at the next write (a keepalive at most 15 s later).
        async for event, data in _events(job):
            await resp.write(
                f"event: {event}\ndata: {json.dumps(data)}\n\n".encode() if event else b": keepalive\n\n"
            )
        await resp.write_eof()
        return resp
    finally:
        slots.release(key)


async def _events(job: Job, keepalive: float = 15.0) -> AsyncIterator[tuple[str, dict[str, Any]]]:
    version = -1
    while True:
        if job.version != version:
            version = job.version
            snap = job.snapshot()
            if job.done:
                yield job.status, snap
                return
            yield "progress", snap
        new = await job.wait_change(version, max_wait=keepalive)
        if new == version:
            yield "", {}


async def output(request: web.Request) -> web.StreamResponse:
    """``GET /output/{name}``: a finished MP4 by its unguessable name (ranges supported)."""
    name = request.match_info["name"]
    queue = request.app[JOBS_KEY]
    path = queue.output_dir / name
    if not _OUTPUT_NAME.match(name) or not path.is_file():
        raise web.HTTPNotFound(
            text=json.dumps({"success": False, "error": "no such output", "code": "not_found"}),
            content_type="application/json",
        )
    return web.FileResponse(
        path, headers={"Content-Type": "video/mp4", "Cache-Control": "private, max-age=3600"}
    )


async def _jobs_ctx(app: web.Application) -> AsyncIterator[None]:
    queue = app[JOBS_KEY]
    await queue.start()
    yield
    await queue.aclose()


def setup_offline(app: web.Application) -> None:
    """Register ``POST /api/sonic/generate``, jobs and ``GET /output/{name}``."""
    from realtime.app import CONFIG_KEY, METRICS_KEY

    config = app[CONFIG_KEY]
    off = config.offline
    app[JOBS_KEY] = JobQueue(
        workers=off.workers,
        queue_size=off.queue_size,
        output_dir=config.resolve(off.output_dir),
        output_ttl=off.output_ttl,
        metrics=app[METRICS_KEY],
    )
    app[STREAMS_KEY] = StreamSlots(off.max_event_streams_per_client)
    app.cleanup_ctx.append(_jobs_ctx)
    app.router.add_post("/api/sonic/generate", generate)
    app.router.add_get("/api/jobs/{job_id}", job_status)
    app.router.add_delete("/api/jobs/{job_id}", job_cancel)
    app.router.add_get("/api/jobs/{job_id}/events", job_events)
    app.router.add_get("/output/{name}", output)
