"""The browser client in a real Chromium: fake microphone (a speech WAV) in, decoded avatar video out.

Drives Debian's headless ``/usr/bin/chromium`` over the DevTools protocol (aiohttp's
websocket client); no browser is downloaded.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import shutil
import time
from pathlib import Path

import aiohttp
import pytest
from aiohttp.test_utils import TestServer
from chromium import CHROMIUM, chromium, open_page

from realtime.app import create_app
from realtime.benchmarks.browser import page_video
from realtime.config import Config

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(shutil.which(CHROMIUM) is None, reason="Debian's chromium is not installed"),
]


async def test_browser_client_receives_avatar_video(
    engine, test_config: Config, speech_wav: Path, tmp_path: Path
) -> None:
    # the shipped deployment: a front that forwards the browser's offer to live worker processes
    config = dataclasses.replace(test_config, server=dataclasses.replace(test_config.server, workers=2))
    app = create_app(config, engine=engine)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    url = str(server.make_url("")).rstrip("/")
    try:
        async with chromium(tmp_path / "profile", speech_wav) as port, aiohttp.ClientSession() as http:
            async with open_page(http, port, f"{url}/?autostart=1") as page:
                state: dict = {}
                deadline = time.monotonic() + 40
                while time.monotonic() < deadline:
                    await asyncio.sleep(0.5)
                    with contextlib.suppress(RuntimeError):
                        state = await page.evaluate("JSON.stringify(window.avatarState || {})")
                        state = json.loads(state or "{}")
                    if state.get("state") == "failed":
                        pytest.fail(f"the page failed to connect: {state}")
                    if state.get("framesDecoded", 0) > 10:
                        break
                assert state.get("state") == "connected", state
                assert state.get("sessionId")
                # measure decoded frames over a few seconds with getStats (polled by the page each second)
                t0, n0, v0 = time.monotonic(), state["framesDecoded"], state["videoStats"]
                await asyncio.sleep(4.0)
                state = json.loads(await page.evaluate("JSON.stringify(window.avatarState)"))
                fps = (state["framesDecoded"] - n0) / (time.monotonic() - t0)
                assert fps > 0.5 * 25, f"decoded {fps:.1f} fps: {state}"
                # the browser's own counters, as a kiosk watcher or `avatar bench browser` reads them:
                # the jitter buffer let out about the frames decoded in the same span
                v1 = state["videoStats"]
                seen = page_video(v0, v1)
                emitted = v1["jitterBufferEmittedCount"] - v0["jitterBufferEmittedCount"]
                assert emitted >= 0.5 * (state["framesDecoded"] - n0) > 0, (seen, state)
                assert seen["page_jitter_buffer_ms"] >= 0, seen
                assert state["motionFrames"] > 10  # the motion data channel works in the browser
                video = await page.evaluate(
                    "(() => { const v = document.getElementById('video');"
                    " return [v.videoWidth, v.videoHeight, v.srcObject.getTracks().map(t => t.kind).sort()]; })()"
                )
                assert video[0] == 512 and video[1] == 512 and video[2] == ["audio", "video"]
                async with http.get(f"{url}/sessions/{state['sessionId']}") as r:
                    info = await r.json()
                assert info["audio_frames_in"] > 50  # the fake microphone reached the pipeline
                assert info["speech_frames"] > 0, info
                await page.evaluate("window.avatarDisconnect()")
                for _ in range(50):
                    async with http.get(f"{url}/sessions") as r:
                        if not (await r.json())["sessions"]:
                            break
                    await asyncio.sleep(0.1)
                async with http.get(f"{url}/sessions") as r:
                    assert (await r.json())["sessions"] == []

                # OBS / kiosk mode: no UI at all, connects by itself
                await page.call("Page.navigate", url=f"{url}/?mode=obs")
                state = {}
                deadline = time.monotonic() + 30
                while time.monotonic() < deadline and (
                    state.get("framesDecoded", 0) <= 5 or state.get("rttMs") is None
                ):
                    await asyncio.sleep(0.5)
                    with contextlib.suppress(RuntimeError):
                        state = json.loads(
                            await page.evaluate("JSON.stringify(window.avatarState || {})") or "{}"
                        )
                assert state.get("state") == "connected" and state["framesDecoded"] > 5, state
                # its "control" channel answers pings (the heartbeat) but carries no per-frame motion
                assert state["rttMs"] is not None and state["motionFrames"] == 0, state
                ui = await page.evaluate(
                    "[document.body.className, getComputedStyle(document.getElementById('panel')).display,"
                    " getComputedStyle(document.getElementById('overlay')).display]"
                )
                assert "obs" in ui[0] and ui[1] == "none" and ui[2] == "none", ui
    finally:
        await server.close()
