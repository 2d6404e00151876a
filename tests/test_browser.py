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
import subprocess
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestServer

from realtime.app import create_app
from realtime.config import Config

CHROMIUM = "/usr/bin/chromium"

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(shutil.which(CHROMIUM) is None, reason="Debian's chromium is not installed"),
]


class DevTools:
    """A minimal Chrome DevTools Protocol client for one page."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        self.ws = ws
        self._id = 0

    async def call(self, method: str, **params: Any) -> dict:
        self._id += 1
        my_id = self._id
        await self.ws.send_json({"id": my_id, "method": method, "params": params})
        while True:
            msg = await self.ws.receive_json(timeout=30)
            if msg.get("id") == my_id:
                if "error" in msg:
                    raise RuntimeError(f"{method}: {msg['error']}")
                return msg.get("result", {})

    async def evaluate(self, expression: str) -> Any:
        result = await self.call(
            "Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True
        )
        if "exceptionDetails" in result:
            raise RuntimeError(f"page error: {result['exceptionDetails']}")
        return result["result"].get("value")


@contextlib.asynccontextmanager
async def chromium(user_dir: Path, audio: Path) -> AsyncIterator[int]:
    """Start headless Chromium with a fake microphone playing ``audio``; yields its DevTools port."""
    args = [
        CHROMIUM,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        f"--user-data-dir={user_dir}",
        "--use-fake-ui-for-media-stream",
        "--use-fake-device-for-media-stream",
        f"--use-file-for-fake-audio-capture={audio}",
        "--autoplay-policy=no-user-gesture-required",
        "--remote-debugging-port=0",
        "about:blank",
    ]
    proc = await asyncio.create_subprocess_exec(*args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        port_file = user_dir / "DevToolsActivePort"
        deadline = time.monotonic() + 30
        while not port_file.exists() or not port_file.read_text().strip():
            if proc.returncode is not None or time.monotonic() > deadline:
                raise RuntimeError("chromium did not start")
            await asyncio.sleep(0.1)
        yield int(port_file.read_text().splitlines()[0])
    finally:
        if proc.returncode is None:
            proc.terminate()
            try:
                await asyncio.wait_for(proc.wait(), 10)
            except TimeoutError:
                proc.kill()
                await proc.wait()


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
            async with http.put(f"http://127.0.0.1:{port}/json/new?about:blank") as r:
                target = await r.json(content_type=None)
            async with http.ws_connect(target["webSocketDebuggerUrl"], max_msg_size=0) as ws:
                page = DevTools(ws)
                await page.call("Page.enable")
                await page.call("Page.navigate", url=f"{url}/?autostart=1")
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
                t0, n0 = time.monotonic(), state["framesDecoded"]
                await asyncio.sleep(4.0)
                state = json.loads(await page.evaluate("JSON.stringify(window.avatarState)"))
                fps = (state["framesDecoded"] - n0) / (time.monotonic() - t0)
                assert fps > 0.5 * 25, f"decoded {fps:.1f} fps: {state}"
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
