"""Live sessions sharded over worker processes (``server.workers`` = 2), end to end.

The real front (aiohttp on loopback) starts two real worker processes; Python aiortc peers
connect through it. Checked: sessions spread over the workers and stream video from them,
session requests reach the owning worker, the global session limit holds, worker metrics are
merged into the front's /metrics, avatars uploaded to the front work in a worker, a killed
worker is restarted (readiness reflects it), and shutdown stops every worker.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import numpy as np
import pytest
from aiohttp.test_utils import TestServer
from conftest import read_wav
from faces import astronaut, encode
from webrtc_client import AvatarClient

from realtime.app import create_app
from realtime.config import load_config
from realtime.workers import POOL_KEY

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


@pytest.fixture(scope="module")
def front_config(engine, tmp_path_factory: pytest.TempPathFactory):
    tmp = tmp_path_factory.mktemp("workers")
    return load_config(
        overrides=[
            # the front registers uploads with the shared engine; workers find them in its cache
            f"avatars.cache_dir={engine.avatar_cache_dir}",
            f"offline.output_dir={tmp / 'outputs'}",
            "server.workers=2",
            "server.max_sessions=2",
            "server.rate_limit_per_minute=1000",
        ],
        env={},
    )


@pytest.fixture
async def front(engine, front_config) -> AsyncIterator[tuple[str, object]]:
    """The real app as a front with two live workers, on a loopback port."""
    app = create_app(front_config, engine=engine)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    pool = app[POOL_KEY]
    pids = [w.process.pid for w in pool.workers]
    try:
        yield str(server.make_url("")).rstrip("/"), app
    finally:
        await server.close()
    # shutdown stopped every worker process (the ones started since, after a restart, too)
    for w in pool.workers:
        assert w.process is not None and not w.process.is_alive()
    for pid in pids:
        assert not _running(pid)


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


@pytest.fixture(scope="module")
def speech(speech_wav: Path) -> tuple[np.ndarray, int]:
    pcm, rate = read_wav(speech_wav)
    return np.concatenate([np.zeros(rate // 2, np.float32), pcm]), rate


async def _json(http: aiohttp.ClientSession, method: str, url: str, **kw) -> tuple[int, dict]:
    async with http.request(method, url, **kw) as r:
        return r.status, await r.json()


async def test_sessions_spread_over_workers_and_stream(front, speech) -> None:
    url, app = front
    pcm, rate = speech
    async with aiohttp.ClientSession() as http:
        clients = [AvatarClient(url, pcm, rate, keep_video=False) for _ in range(2)]
        for c in clients:
            await c.connect(http)
        try:
            for c in clients:
                await c.wait_frames(1)
            counts0 = [c.video_count for c in clients]
            await asyncio.sleep(2.0)
            rates = [(c.video_count - n) / 2.0 for c, n in zip(clients, counts0, strict=True)]
            assert all(r > 18 for r in rates), rates  # about 25 fps from each worker

            status, listing = await _json(http, "GET", f"{url}/sessions")
            assert status == 200
            owners = {s["session_id"]: s["worker"] for s in listing["sessions"]}
            assert set(owners) == {c.session_id for c in clients}
            assert sorted(owners.values()) == [0, 1]  # least-loaded placement: one each
            assert [w["sessions"] for w in listing["workers"]] == [1, 1]
            assert all(w["ready"] and w["pid"] for w in listing["workers"])

            # the limit is global: a third offer is refused while two sessions are open
            extra = AvatarClient(url, pcm, rate, keep_video=False)
            with pytest.raises(RuntimeError, match="503"):
                await extra.connect(http)
            await extra.close()

            # session requests reach the worker that runs the session
            sid = clients[1].session_id
            status, info = await _json(http, "GET", f"{url}/sessions/{sid}")
            assert status == 200 and info["worker"] == owners[sid] and info["frames_sent"] > 0
            status, body = await _json(http, "DELETE", f"{url}/sessions/{sid}")
            assert status == 200 and body["closed"] is True
            status, body = await _json(http, "GET", f"{url}/sessions/{sid}")
            assert status == 404
            status, listing = await _json(http, "GET", f"{url}/sessions")
            assert [s["session_id"] for s in listing["sessions"]] == [clients[0].session_id]

            # the workers' counters are in the front's /metrics, labelled by worker
            async with http.get(f"{url}/metrics") as r:
                text = await r.text()
            sent = {
                line.split('worker="')[1][0]
                for line in text.splitlines()
                if line.startswith("avatar_video_frames_sent_total{") and float(line.split()[-1]) > 0
            }
            assert sent == {"0", "1"}, text[:2000]
            assert text.count("# TYPE avatar_video_frames_sent_total counter") == 1
        finally:
            for c in clients:
                await c.close()


async def test_uploaded_avatar_is_used_by_a_worker(front, speech) -> None:
    url, _ = front
    pcm, rate = speech
    async with aiohttp.ClientSession() as http:
        form = aiohttp.FormData()
        form.add_field("image", encode(astronaut()[:, ::-1].copy(), "png"), filename="me.png")
        status, body = await _json(http, "POST", f"{url}/api/avatars", data=form)
        assert status == 200, body
        client = AvatarClient(url, pcm, rate, avatar=body["avatar"], keep_video=False)
        try:
            await client.connect(http)
            await client.wait_frames(3)
            status, info = await _json(http, "GET", f"{url}/sessions/{client.session_id}")
            assert info["params"]["avatar"] == body["avatar"]
        finally:
            await client.close()
        # an unknown avatar is the worker's clear 400, passed through by the front
        bad = AvatarClient(url, pcm, rate, avatar="nope", keep_video=False)
        with pytest.raises(RuntimeError, match="400.*unknown avatar"):
            await bad.connect(http)
        await bad.close()


async def _readyz_becomes(http: aiohttp.ClientSession, url: str, status: int, within: float) -> bool:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        async with http.get(f"{url}/readyz") as r:
            if r.status == status:
                return True
        await asyncio.sleep(0.2)
    return False


async def test_a_killed_worker_is_restarted(front, speech) -> None:
    url, app = front
    pool = app[POOL_KEY]
    pcm, rate = speech
    async with aiohttp.ClientSession() as http:
        client = AvatarClient(url, pcm, rate, keep_video=False)
        await client.connect(http)
        await client.wait_frames(1)
        victim = pool.workers[pool.owner[client.session_id]]
        old_pid = victim.process.pid
        os.kill(old_pid, signal.SIGKILL)
        # readiness drops while it is down, and its session is gone from the listing
        assert await _readyz_becomes(http, url, 503, within=10), "/readyz stayed 200 with a dead worker"
        status, listing = await _json(http, "GET", f"{url}/sessions")
        assert client.session_id not in {s["session_id"] for s in listing["sessions"]}
        await client.close()
        # the supervisor starts a new process and the server is ready again
        assert await _readyz_becomes(http, url, 200, within=120), "the killed worker did not come back"
        assert victim.process.pid != old_pid and victim.restarts == 1
        again = AvatarClient(url, pcm, rate, keep_video=False)
        try:
            await again.connect(http)
            await again.wait_frames(3)
        finally:
            await again.close()


async def test_a_wedged_worker_is_replaced(front) -> None:
    """A worker that stops answering (SIGSTOP: alive but silent) is killed and restarted."""
    url, app = front
    pool = app[POOL_KEY]
    pool.health_every, pool.health_timeout = 0.5, 0.5  # seconds instead of 5 + 5 (x 3 misses)
    victim = pool.workers[0]
    old_pid = victim.process.pid
    os.kill(old_pid, signal.SIGSTOP)
    async with aiohttp.ClientSession() as http:
        assert await _readyz_becomes(http, url, 503, within=15), "a silent worker was not noticed"
        assert await _readyz_becomes(http, url, 200, within=120), "the wedged worker was not replaced"
    assert not _running(old_pid) and victim.process.pid != old_pid and victim.restarts == 1


async def test_a_front_loads_the_motion_model_only_for_offline_jobs(front_config, speech) -> None:
    """A front with its own engine (as `avatar serve` builds it) starts without the motion model,
    which only its offline jobs use, and loads it for the first one; the MP4 comes out whole."""
    import av
    from test_offline_api import form, wav_bytes

    from realtime.app import ENGINE_KEY

    config = load_config(
        overrides=[
            f"avatars.cache_dir={front_config.avatars.cache_dir}",
            f"offline.output_dir={front_config.offline.output_dir}",
            "server.workers=1",
        ],
        env={},
    )
    import cv2

    cv2.setNumThreads(2)  # whatever an earlier test left: the server sets its own
    app = create_app(config)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    try:
        engine = app[ENGINE_KEY]
        assert engine.ready and engine._motion_model is None
        assert cv2.getNumThreads() == 1  # server processes: no OpenCV pool spinning between calls
        pcm, rate = speech
        url = str(server.make_url("")).rstrip("/")
        async with aiohttp.ClientSession() as http:
            data = form(wav_bytes(pcm[: rate * 2], rate), encode(astronaut()), '{"min_resolution": 256}')
            async with http.post(f"{url}/api/sonic/generate", data=data) as r:
                body = await r.json()
                assert r.status == 200, body
            async with http.get(body["video_url"]) as r:
                video = await r.read()
        assert engine._motion_model is not None
        out = Path(config.offline.output_dir) / "check.mp4"
        out.write_bytes(video)
        with av.open(str(out)) as c:
            assert sum(1 for _ in c.decode(video=0)) == 50
    finally:
        await server.close()
