"""The Sonic-compatible HTTP API, through aiohttp's test client with the real engine."""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import threading
import wave
from collections.abc import AsyncIterator
from pathlib import Path

import cv2
import numpy as np
import pytest
from aiohttp import FormData
from aiohttp.test_utils import TestClient, TestServer

from realtime.app import METRICS_KEY, create_app
from realtime.config import load_config
from realtime.media import decode_audio
from realtime.offline_api import JOBS_KEY

AVATAR = Path(__file__).resolve().parent.parent / "models" / "avatars" / "astronaut.png"
FPS = 25


def wav_bytes(pcm: np.ndarray, rate: int = 16000) -> bytes:
    import io

    buf = io.BytesIO()
    with wave.open(buf, "wb") as wf:
        wf.setnchannels(1)
        wf.setsampwidth(2)
        wf.setframerate(rate)
        wf.writeframes((np.clip(pcm, -1, 1) * 32767).astype("<i2").tobytes())
    return buf.getvalue()


def form(
    audio: bytes | None = None,
    image: bytes | None = None,
    config: str | None = None,
    *,
    audio_name: str = "voice.mp3",  # a misleading name: formats are detected by content
    image_name: str = "face.png",
    extra: tuple[tuple[str, bytes], ...] = (),
) -> FormData:
    fd = FormData()
    if audio is not None:
        fd.add_field("audio", audio, filename=audio_name, content_type="application/octet-stream")
    if image is not None:
        fd.add_field("image", image, filename=image_name, content_type="image/png")
    if config is not None:
        fd.add_field("config", config)
    for name, value in extra:
        fd.add_field(name, value, filename="x.bin")
    return fd


@pytest.fixture(scope="module")
def short_speech(speech_16k: np.ndarray) -> bytes:
    """1.6 s: half a second of silence then speech, kept short so the suite stays fast."""
    return wav_bytes(np.concatenate([np.zeros(8000, np.float32), speech_16k[:17600]]))


def make_config(tmp_path: Path, *overrides: str):
    return load_config(
        overrides=[
            f"offline.output_dir={tmp_path / 'out'}",
            "offline.max_audio_bytes=400000",
            "offline.max_audio_seconds=10",
            "avatars.max_image_bytes=2000000",
            "server.workers=0",
            *overrides,
        ],
        env={},
    )


@pytest.fixture
async def client(engine, tmp_path: Path) -> AsyncIterator[TestClient]:
    app = create_app(make_config(tmp_path), engine=engine)
    async with TestClient(TestServer(app)) as c:
        yield c


def leftovers(tmp_path: Path) -> list[str]:
    """Every file under the output folder (uploads included)."""
    root = tmp_path / "out"
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())


async def test_generate_sync(client: TestClient, short_speech: bytes, tmp_path: Path) -> None:
    cfg = json.dumps({"min_resolution": 256, "seed": 1, "dynamic_scale": 1.2, "smooth_motion": 0.2})
    resp = await client.post("/api/sonic/generate", data=form(short_speech, AVATAR.read_bytes(), cfg))
    body = await resp.json()
    assert resp.status == 200, body
    assert body["success"] is True and set(body) == {"success", "video_url", "output_path"}
    name = body["video_url"].rsplit("/", 1)[1]
    assert body["output_path"].endswith(name) and len(name) >= 20
    assert leftovers(tmp_path) == [name]  # the upload folder is gone, no partial files

    video = await client.get(f"/output/{name}")
    assert video.status == 200 and video.headers["Content-Type"] == "video/mp4"
    data = await video.read()
    out = tmp_path / "got.mp4"
    out.write_bytes(data)
    import av

    with av.open(str(out)) as c:
        n_frames = sum(1 for _ in c.decode(video=0))
    duration = 1.6
    assert abs(n_frames - math.ceil(duration * FPS)) <= 1
    audio = decode_audio(out)
    assert abs(audio.duration - duration) < 1 / FPS
    source = decode_audio(short_speech)
    n = min(audio.pcm.size, source.pcm.size)
    assert np.corrcoef(audio.pcm[:n], source.pcm[:n])[0, 1] > 0.9

    metrics = client.server.app[METRICS_KEY].exposition().decode()
    assert 'avatar_jobs_total{status="done"} 1.0' in metrics
    assert "avatar_jobs_active 0.0" in metrics

    # Ranges: what a browser's <video> asks for.
    part = await client.get(f"/output/{name}", headers={"Range": "bytes=0-99"})
    assert part.status == 206 and len(await part.read()) == 100
    assert part.headers["Content-Range"] == f"bytes 0-99/{len(data)}"
    tail = await client.get(f"/output/{name}", headers={"Range": "bytes=-10"})
    assert tail.status == 206 and await tail.read() == data[-10:]


async def test_async_job_with_progress_events(client: TestClient, short_speech: bytes) -> None:
    # Hold the only worker so the job is still queued when the event stream opens.
    gate = threading.Event()
    client.server.app[JOBS_KEY].submit(lambda progress, cancel: gate.wait(30))
    cfg = json.dumps({"min_resolution": 256, "fps": 30, "duration": 1.2})
    try:
        resp = await client.post(
            "/api/sonic/generate?async=1", data=form(short_speech, AVATAR.read_bytes(), cfg)
        )
        body = await resp.json()
        assert resp.status == 202 and body["success"] and body["job_id"]
        queued = await (await client.get(body["status_url"])).json()
        assert queued["status"] == "queued" and queued["progress"] == 0.0
    except BaseException:
        gate.set()
        raise

    events: list[tuple[str, dict]] = []
    async with client.get(body["events_url"]) as stream:
        assert stream.headers["Content-Type"].startswith("text/event-stream")
        event = None
        async for raw in stream.content:
            line = raw.decode().rstrip("\n")
            if line.startswith("event: "):
                event = line[7:]
            elif line.startswith("data: "):
                events.append((event or "", json.loads(line[6:])))
                gate.set()  # the first event (queued) arrived: let the job run
    assert events[0][1]["status"] == "queued"
    assert any(d["status"] == "running" and 0 < d["progress"] < 1 for _, d in events)
    kinds = [e for e, _ in events]
    assert kinds[-1] == "done" and "progress" in kinds
    progress = [d["progress"] for _, d in events]
    assert progress == sorted(progress) and progress[-1] == 1.0
    final = events[-1][1]
    assert final["status"] == "done" and final["video_url"].endswith(".mp4")

    status = await (await client.get(body["status_url"])).json()
    assert status["status"] == "done" and status["progress"] == 1.0
    name = final["video_url"].rsplit("/", 1)[1]
    video = await client.get(f"/output/{name}")
    assert video.status == 200
    # Events of a finished job: just the final one.
    again = await (await client.get(body["events_url"])).text()
    assert again.count("event: done") == 1 and "event: progress" not in again


async def test_full_queue_answers_503(engine, short_speech: bytes, tmp_path: Path) -> None:
    app = create_app(make_config(tmp_path, "offline.workers=1", "offline.queue_size=1"), engine=engine)
    gate = threading.Event()
    async with TestClient(TestServer(app)) as client:
        queue = app[JOBS_KEY]
        blocker = queue.submit(lambda progress, cancel: gate.wait(30))  # occupies the only worker
        try:
            for _ in range(100):
                if blocker.status == "running":
                    break
                await asyncio.sleep(0.01)
            cfg = json.dumps({"min_resolution": 256})
            queued = await client.post(
                "/api/sonic/generate?async=1", data=form(short_speech, AVATAR.read_bytes(), cfg)
            )
            assert queued.status == 202
            job_id = (await queued.json())["job_id"]
            full = await client.post("/api/sonic/generate", data=form(short_speech, AVATAR.read_bytes(), cfg))
            assert full.status == 503 and int(full.headers["Retry-After"]) >= 1
            assert (await full.json())["code"] == "queue_full"
            # A queued job can be cancelled; it never runs and leaves nothing behind.
            cancel = await client.delete(f"/api/jobs/{job_id}")
            assert cancel.status == 202
        finally:
            gate.set()
        job = queue.get(job_id)
        await asyncio.wait_for(job.wait_done(), 30)
        assert job.status == "cancelled"
        assert leftovers(tmp_path) == []


async def test_sync_job_is_cancelled_when_the_client_leaves(client: TestClient, short_speech: bytes) -> None:
    queue = client.server.app[JOBS_KEY]
    gate = threading.Event()
    blocker = queue.submit(lambda progress, cancel: gate.wait(30))  # hold the worker: the job stays queued
    try:
        for _ in range(500):
            if blocker.status == "running":
                break
            await asyncio.sleep(0.01)
        cfg = json.dumps({"min_resolution": 256})
        request = asyncio.create_task(
            client.post("/api/sonic/generate", data=form(short_speech, AVATAR.read_bytes(), cfg))
        )
        for _ in range(500):
            waiting = [j for j in queue._jobs.values() if j.status == "queued"]
            if waiting:
                break
            await asyncio.sleep(0.01)
        assert waiting, "the request never queued its job"
        request.cancel()  # the client hangs up
        with contextlib.suppress(asyncio.CancelledError):
            await request
        for _ in range(500):  # the server notices within a second
            if waiting[0].cancel_event.is_set():
                break
            await asyncio.sleep(0.01)
        assert waiting[0].cancel_event.is_set()
    finally:
        gate.set()
    await asyncio.wait_for(waiting[0].wait_done(), 10)
    assert waiting[0].status == "cancelled"


def _blank_png() -> bytes:
    gradient = np.tile(np.linspace(40, 200, 512, dtype=np.uint8)[None, :, None], (512, 1, 3))
    return cv2.imencode(".png", gradient)[1].tobytes()


BAD_INPUTS = {
    "missing audio": (lambda s, i: form(None, i), 400, "missing_field"),
    "missing image": (lambda s, i: form(s, None), 400, "missing_field"),
    "invalid json": (lambda s, i: form(s, i, "{min_resolution: 512"), 400, "invalid_config"),
    "unknown key": (lambda s, i: form(s, i, '{"resolution": 512}'), 400, "invalid_config"),
    "out of range": (lambda s, i: form(s, i, '{"min_resolution": 4096}'), 400, "invalid_config"),
    "bad fps": (lambda s, i: form(s, i, '{"fps": 60}'), 400, "invalid_config"),
    "not an object": (lambda s, i: form(s, i, "[1, 2]"), 400, "invalid_config"),
    "audio is an image": (lambda s, i: form(_blank_png(), i), 415, "not_audio"),
    "image is audio": (lambda s, i: form(s, s), 415, "not_an_image"),
    "corrupt audio": (
        lambda s, i: form(b"RIFF\x24\x00\x00\x00WAVEjunk" + bytes(4000), i),
        422,
        "corrupt_audio",
    ),
    "empty audio": (lambda s, i: form(b"", i), 400, "empty_audio"),
    "no samples": (lambda s, i: form(wav_bytes(np.zeros(0)), i), 422, "empty_audio"),
    "audio too large": (lambda s, i: form(wav_bytes(np.zeros(16000 * 13)), i), 413, "audio_too_large"),
    "audio too long": (lambda s, i: form(wav_bytes(np.zeros(16000 * 11)), i), 413, "audio_too_long"),
    "no face": (lambda s, i: form(s, _blank_png()), 422, "no_face"),
    "corrupt image": (
        lambda s, i: form(s, b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 4),
        422,
        "corrupt_image",
    ),
    "empty image": (lambda s, i: form(s, b""), 400, "empty_image"),
    "image too large": (lambda s, i: form(s, i + bytes(2_000_000)), 413, "image_too_large"),
    "path trick": (lambda s, i: form(s, i, audio_name="../../etc/passwd"), 400, "bad_filename"),
    "unknown field": (lambda s, i: form(s, i, extra=(("video", b"x"),)), 400, "unknown_field"),
    "duplicate field": (lambda s, i: form(s, i, extra=(("audio", s),)), 400, "duplicate_field"),
}


@pytest.mark.parametrize("case", list(BAD_INPUTS))
async def test_bad_input(case: str, client: TestClient, short_speech: bytes, tmp_path: Path) -> None:
    make, status, code = BAD_INPUTS[case]
    resp = await client.post("/api/sonic/generate", data=make(short_speech, AVATAR.read_bytes()))
    body = await resp.json()
    assert resp.status == status, body
    assert body["success"] is False and body["code"] == code and body["error"]
    assert leftovers(tmp_path) == []


async def test_not_multipart_and_unknown_names(client: TestClient) -> None:
    resp = await client.post("/api/sonic/generate", json={"audio": "x"})
    assert resp.status == 400 and (await resp.json())["code"] == "not_multipart"
    for name in ("..%2F..%2Fetc%2Fpasswd", "nope.mp4", "short.mp4", ".uploads", "a" * 22 + ".txt"):
        got = await client.get(f"/output/{name}")
        assert got.status == 404, name
    assert (await client.get("/api/jobs/not-a-job-id")).status == 404


# -- the job queue on its own -------------------------------------------------------------------------
class _BadAudio(ValueError):
    code = "corrupt_audio"


async def test_job_queue_failures_expiry_and_close(tmp_path: Path) -> None:
    from realtime.jobs import JobQueue
    from realtime.metrics import Metrics

    metrics = Metrics()
    queue = JobQueue(workers=2, queue_size=4, output_dir=tmp_path / "out", output_ttl=60.0, metrics=metrics)
    await queue.start()
    finished: list[str] = []
    try:

        def fails(progress, cancel):  # noqa: ANN001, ANN202
            progress(0.5, "render")
            raise _BadAudio("the mp3 audio is corrupt")

        def bug(progress, cancel):  # noqa: ANN001, ANN202
            raise KeyError("internal detail")

        def long_running(progress, cancel):  # noqa: ANN001, ANN202
            while not cancel.wait(0.01):
                progress(0.1, "render")
            raise RuntimeError("stopped")

        bad = queue.submit(fails, on_finish=lambda j: finished.append(j.id))
        crash = queue.submit(bug)
        await asyncio.wait_for(bad.wait_done(), 10)
        await asyncio.wait_for(crash.wait_done(), 10)
        assert bad.status == "failed" and bad.error_code == "corrupt_audio" and "corrupt" in bad.error
        assert bad.snapshot()["code"] == "corrupt_audio" and finished == [bad.id]
        assert (
            crash.status == "failed" and crash.error_code == "internal_error" and "detail" not in crash.error
        )
        assert bad.body is None  # a finished job holds no references to its inputs

        # Expiry: old outputs, stale partial files and abandoned uploads go; fresh ones stay.
        # (A second, unstarted queue on its own folder, so the running one's sweep cannot race us.)
        sweeper = JobQueue(output_dir=tmp_path / "sweep", output_ttl=60.0)
        sweeper.upload_dir.mkdir(parents=True)
        old, fresh = sweeper.output_dir / "old.mp4", sweeper.output_dir / "fresh.mp4"
        stale_upload = sweeper.upload_dir / "abc123"
        stale_upload.mkdir()
        for p in (old, fresh, sweeper.output_dir / ".x.part"):
            p.write_bytes(b"x")
        import os
        import time

        past = time.time() - 120
        for p in (old, sweeper.output_dir / ".x.part", stale_upload):
            os.utime(p, (past, past))
        assert sweeper.cleanup_once() == 3
        assert sorted(p.name for p in sweeper.output_dir.iterdir()) == [".uploads", "fresh.mp4"]

        running = queue.submit(long_running)
        for _ in range(200):
            if running.progress > 0:
                break
            await asyncio.sleep(0.01)
    finally:
        await queue.aclose()
    assert running.status == "cancelled"
    text = metrics.exposition().decode()
    assert 'avatar_jobs_total{status="failed"} 2.0' in text and "avatar_jobs_active 0.0" in text


async def test_progress_streams_are_capped_per_client(engine, tmp_path: Path) -> None:
    """Each open event stream holds a connection and a task until its job ends: one client gets
    ``offline.max_event_streams_per_client`` of them, the next is a 429 naming the cap, and the
    slots come back when the streams end."""
    app = create_app(make_config(tmp_path, "offline.max_event_streams_per_client=2"), engine=engine)
    gate = threading.Event()
    async with TestClient(TestServer(app)) as client:
        job = app[JOBS_KEY].submit(lambda progress, cancel: gate.wait(30))
        url = f"/api/jobs/{job.id}/events"
        try:
            streams = [await client.get(url) for _ in range(2)]
            for stream in streams:
                assert stream.status == 200
                assert (await stream.content.readline()).startswith(b"event: ")  # streaming
            refused = await client.get(url)
            assert refused.status == 429 and int(refused.headers["Retry-After"]) >= 1
            body = await refused.json()
            assert body["code"] == "too_many_streams" and f"/api/jobs/{job.id}" in body["error"]
            assert (await client.get(f"/api/jobs/{job.id}")).status == 200  # polling still works
        finally:
            gate.set()
        for stream in streams:  # the job ends: each stream gets its last event and closes
            assert b"event: done" in await asyncio.wait_for(stream.content.read(), 30)
            stream.release()
        again = await client.get(url)
        assert again.status == 200 and b"event: done" in await again.read()
