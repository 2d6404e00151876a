"""``avatar bench browser``: one session from a real headless Chromium, with and without uplink DTX.

The loopback bench's aiortc clients send audio packets without pause; a browser asked for Opus DTX
(``live.uplink_dtx``, the default) stops sending in silence. This runs the shipped server (its own
process, 2 workers) and Debian's Chromium with a fake microphone that loops a sentence and 8 s of
silence, in pairs: ``live.uplink_dtx=false``, then ``true``. Each run reports, over ``--seconds``
after the page has connected: the server's CPU (all its processes), the audio packets that reached
the session per second, the repeated frames by cause and those sent late within the video track's
grace, the playout delay's changes and the server-side audio-to-frame latency (``GET
/sessions/{id}``); and from the page, over the same span: its fps, Chromium's video jitter-buffer
delay and its target (means over the frames the buffer let out; frames sent late would show here),
and the freezes and frames Chromium counted (``window.avatarState.videoStats``).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from realtime.benchmarks._support import busy_cores, stop_server, tests_on_path, wait_ready, write_result
from realtime.benchmarks.live import _proc_cpu, start_server

SENTENCE = "Hello there, this is a short test of the avatar, speaking for a few seconds."
SILENCE_S = 8.0


def make_input(workdir: Path) -> Path:
    """The fake microphone's file: one sentence (flite) and then silence; Chromium loops it."""
    import soundfile as sf

    spoken = workdir / "sentence.wav"
    subprocess.run(["flite", "-voice", "awb", "-t", SENTENCE, "-o", str(spoken)], check=True)
    x, rate = sf.read(spoken, dtype="float32")
    out = workdir / "mic.wav"
    sf.write(out, np.concatenate([x, np.zeros(int(rate * SILENCE_S), np.float32)]), rate)
    return out


def page_video(v0: dict[str, float], v1: dict[str, float]) -> dict[str, Any]:
    """Chromium's view of the video between two readings of ``avatarState.videoStats``."""
    out = int(v1["jitterBufferEmittedCount"] - v0["jitterBufferEmittedCount"])

    def mean_ms(key: str) -> float | None:
        return round(1000.0 * (v1[key] - v0[key]) / out, 1) if out > 0 else None

    return {
        "page_jitter_buffer_ms": mean_ms("jitterBufferDelay"),
        "page_jitter_target_ms": mean_ms("jitterBufferTargetDelay"),
        "page_freezes": int(v1["freezeCount"] - v0["freezeCount"]),
        "page_freeze_s": round(v1["totalFreezesDuration"] - v0["totalFreezesDuration"], 3),
        "page_frames_dropped": int(v1["framesDropped"] - v0["framesDropped"]),
    }


async def _session(http: Any, url: str) -> dict[str, Any] | None:
    """The one session's info (``GET /sessions`` lists each session's full info), or None."""
    async with http.get(f"{url}/sessions") as r:
        sessions = (await r.json())["sessions"]
    return sessions[0] if sessions else None


async def run_once(dtx: bool, seconds: float, mic: Path, work: Path) -> dict[str, Any]:
    """One server + one Chromium page (OBS mode: it connects by itself); the numbers of one run."""
    import aiohttp

    tests_on_path()
    from chromium import chromium, open_page

    server, url = start_server(1, work / "avatars", [f"live.uplink_dtx={'true' if dtx else 'false'}"])
    profile = work / f"profile-{int(dtx)}"
    shutil.rmtree(profile, ignore_errors=True)
    try:
        await wait_ready(url, server)
        async with (
            aiohttp.ClientSession() as http,
            chromium(profile, mic) as port,
            open_page(http, port, f"{url}/?mode=obs") as page,
        ):
            info = None
            for _ in range(120):
                await asyncio.sleep(0.5)
                info = await _session(http, url)
                if info and info.get("frames_sent", 0) > 25:
                    break
            if not info:
                raise RuntimeError("the page did not connect")
            await asyncio.sleep(2.0)  # past the first packets and the bitrate ramp
            i0, c0, t0 = await _session(http, url), _proc_cpu(server.pid), time.monotonic()
            v0 = await page.evaluate("window.avatarState.videoStats")  # the page polls getStats each second
            await asyncio.sleep(seconds)
            i1, c1, t1 = await _session(http, url), _proc_cpu(server.pid), time.monotonic()
            seen = await page.evaluate("({...window.avatarState, lastMotion: null})")
            v1 = seen["videoStats"]
    finally:
        stop_server(server)
    assert i0 is not None and i1 is not None
    wall = t1 - t0
    causes = {
        k: v - (i0["frames_dropped_by_cause"] or {}).get(k, 0)
        for k, v in i1["frames_dropped_by_cause"].items()
    }
    return {
        "uplink_dtx": dtx,
        "seconds": round(wall, 1),
        "server_cpu_pct": round(100.0 * (c1 - c0) / wall, 1),
        "audio_packets_per_s": round((i1["audio_frames_in"] - i0["audio_frames_in"]) / wall, 1),
        "frames_sent": i1["frames_sent"] - i0["frames_sent"],
        "frames_repeated": i1["frames_dropped"] - i0["frames_dropped"],
        "frames_sent_late": i1["frames_sent_late"] - i0["frames_sent_late"],
        "repeated_by_cause": causes,
        "silence_filled_s": round(i1["silence_filled_s"] - i0["silence_filled_s"], 2),
        "pipeline_delay_ms_end": i1["pipeline_delay_ms"],
        "pipeline_delay_changes": [c for c in i1["pipeline_delay_history"] if c[0] > i0["age_s"] - 1],
        "server_latency_ms": i1["latency_ms"],
        "frame_slack_ms": i1["frame_slack_ms"],
        "page_fps": seen.get("fps"),
        **page_video(v0, v1),
    }


def cli_main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="avatar bench browser", description=__doc__)
    parser.add_argument("--seconds", type=float, default=30.0, help="measured span of each run")
    parser.add_argument("--pairs", type=int, default=2, help="runs without and with DTX, interleaved")
    parser.add_argument("--busy", type=float, default=0.0, help="cores to keep busy in other processes")
    parser.add_argument("--json", type=Path, default=None, help="also write the result here")
    args = parser.parse_args(argv)
    if shutil.which("chromium") is None or shutil.which("flite") is None:
        parser.error("needs Debian's chromium and flite (scripts/setup.sh --test installs them)")
    work = Path(tempfile.mkdtemp(prefix="bench-browser-"))
    try:
        mic = make_input(work)
        runs = []
        with busy_cores(args.busy):
            for _ in range(args.pairs):
                for dtx in (False, True):
                    runs.append(asyncio.run(run_once(dtx, args.seconds, mic, work)))
                    print(json.dumps(runs[-1]), file=sys.stderr)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    date = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    result = {"bench": "browser", "date": date, "busy_cores": args.busy, "runs": runs}
    return write_result(result, args.json)
