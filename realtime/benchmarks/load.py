"""``avatar bench load``: ramp live sessions past ``max_sessions``; what was held, what was refused.

Runs ``avatar serve`` as its own process with ``server.max_sessions = --max-sessions`` and
connects ``--ramp`` aiortc test clients (speech in, avatar out), one every ``--interval`` s.
Offers past capacity must get 503 + Retry-After. During the ``--hold`` window a background
task keeps sending offers (all refused) while the held sessions' delivered fps, the server's
frame drops and its CPU are measured: capacity refusals must not cost open sessions frames.

``--fuzz N`` instead runs the HTTP fuzz suite (``tests/test_fuzz.py``) with N hypothesis
examples against the real app and reports inputs tried and 5xx seen.

Examples::

    avatar bench load --max-sessions 4 --ramp 6 --hold 30 --out docs/bench/load.json
    avatar bench load --fuzz 10000 --out docs/bench/fuzz.json
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import wave
from pathlib import Path
from typing import Any

import numpy as np

from realtime.benchmarks._support import (
    has_trained_model,
    import_test_client,
    rss_mb,
    start_server,
    stop_server,
    wait_ready,
    write_result,
    write_untrained_model,
)
from realtime.config import ROOT

TEXT = "Please bring me a bumpy pillow, Bob. My mom baked a big apple pie. Then we talked for a while."


def speech(seconds: float, workdir: Path) -> np.ndarray:
    """``seconds`` of English speech at 16 kHz (flite, repeated with pauses); a tone if flite is missing."""
    rate = 16000
    if shutil.which("flite") is None:
        t = np.arange(int(seconds * rate)) / rate
        return (0.2 * np.sin(2 * np.pi * 180 * t) * (np.sin(2 * np.pi * 0.5 * t) > 0)).astype(np.float32)
    path = workdir / "speech.wav"
    subprocess.run(["flite", "-voice", "slt", "-t", TEXT, "-o", str(path)], check=True)
    with wave.open(str(path), "rb") as wf:
        assert wf.getframerate() == rate
        pcm = np.frombuffer(wf.readframes(wf.getnframes()), "<i2").astype(np.float32) / 32768.0
    unit = np.concatenate([pcm, np.zeros(rate // 2, np.float32)])
    reps = int(np.ceil(seconds * rate / len(unit)))
    return np.tile(unit, reps)[: int(seconds * rate)]


def _proc_cpu(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def run_load(args: argparse.Namespace, url: str, pid: int, pcm: np.ndarray) -> dict[str, Any]:
    import aiohttp

    client_cls = import_test_client()
    held: list[Any] = []
    attempts: list[dict[str, Any]] = []
    refusals: list[tuple[int, str | None]] = []
    async with aiohttp.ClientSession() as http:
        for i in range(args.ramp):
            client = client_cls(url, pcm, 16000, keep_video=False, heartbeat=1.0)
            t0 = time.monotonic()
            try:
                await client.connect(http)
                await client.wait_frames(1, within=30)
                held.append(client)
                attempts.append({"n": i + 1, "status": 200, "first_frame_s": round(time.monotonic() - t0, 3)})
            except RuntimeError as exc:
                status = int(str(exc).split("->")[1].split(":")[0]) if "->" in str(exc) else -1
                attempts.append({"n": i + 1, "status": status})
                await client.close()
            print(f"  offer {i + 1}/{args.ramp}: {attempts[-1]}", file=sys.stderr, flush=True)
            await asyncio.sleep(args.interval)

        stop = asyncio.Event()
        stop.set()

        # One real offer, re-sent: the server refuses before it touches the SDP, and building a new
        # peer connection per attempt would load this (client) process, not the server.
        spare = client_cls(url, np.zeros(1600, np.float32), 16000, keep_video=False)
        offer = await spare.offer_payload()
        await spare.close()

        async def hammer() -> None:
            """Keep asking for more sessions while the held ones are measured."""
            while not stop.is_set():
                async with http.post(f"{url}/offer", json=offer) as resp:
                    await resp.read()
                    refusals.append((resp.status, resp.headers.get("Retry-After")))
                await asyncio.sleep(args.hammer_every)

        async def server_stats() -> list[dict[str, Any]]:
            out = []
            for c in held:
                async with http.get(f"{url}/sessions/{c.session_id}") as r:
                    out.append(await r.json())
            return out

        async def window(seconds: float, refusing: bool) -> dict[str, Any]:
            """Held sessions' delivered fps and server drops over ``seconds`` (optionally while refusing)."""
            stop.clear()
            before = await server_stats()
            counts0 = [c.video_count for c in held]
            cpu0, t0 = _proc_cpu(pid), time.monotonic()
            n0 = len(refusals)
            task = asyncio.create_task(hammer()) if refusing else None
            await asyncio.sleep(seconds)
            stop.set()
            if task is not None:
                await task
            span = time.monotonic() - t0
            cpu1 = _proc_cpu(pid)
            after = await server_stats()
            fps = [(c.video_count - k) / span for c, k in zip(held, counts0, strict=True)]
            sent = sum(a["frames_sent"] - b["frames_sent"] for a, b in zip(after, before, strict=True))
            drops = sum(a["frames_dropped"] - b["frames_dropped"] for a, b in zip(after, before, strict=True))
            return {
                "seconds": round(span, 1),
                "offers_refused": len(refusals) - n0,
                "held_fps_client": [round(f, 2) for f in fps],
                "held_fps_median": round(float(np.median(fps)), 2) if fps else None,
                "held_fps_min": round(float(np.min(fps)), 2) if fps else None,
                # repeats of the last frame plus frames skipped to catch up, per session-second
                "server_drops_per_session_s": round(drops / span / max(1, len(held)), 2),
                "server_frames_sent_per_session_s": round(sent / span / max(1, len(held)), 2),
                "server_cpu_pct": round(100.0 * (cpu1 - cpu0) / span, 1),
            }

        rss0 = rss_mb(pid)
        # Alternate quiet and refusing windows so background load on a shared machine hits both alike.
        windows = []
        for k in range(args.windows):
            refusing = k % 2 == 1
            windows.append(
                {"refusing": refusing, **await window(args.hold / args.windows, refusing=refusing)}
            )
        rss1 = rss_mb(pid)
        for c in held:
            await c.close()
    ok_503 = sum(1 for s, ra in refusals if s == 503 and ra)
    return {
        "max_sessions": args.max_sessions,
        "ramp": args.ramp,
        "attempts": attempts,
        "sessions_held": len(held),
        "ramp_rejected_503": sum(1 for a in attempts if a["status"] == 503),
        "refusals_503_with_retry_after": ok_503,
        "refusals_other_statuses": sorted({s for s, _ in refusals if s != 503}),
        "windows": windows,
        "quiet_fps_median": _median([f for w in windows if not w["refusing"] for f in w["held_fps_client"]]),
        "refusing_fps_median": _median([f for w in windows if w["refusing"] for f in w["held_fps_client"]]),
        "quiet_drops_per_session_s": _mean(
            [w["server_drops_per_session_s"] for w in windows if not w["refusing"]]
        ),
        "refusing_drops_per_session_s": _mean(
            [w["server_drops_per_session_s"] for w in windows if w["refusing"]]
        ),
        "server_rss_mb_start_end": [round(rss0, 1), round(rss1, 1)],
    }


def _median(xs: list[float]) -> float | None:
    return round(float(np.median(xs)), 2) if xs else None


def _mean(xs: list[float]) -> float | None:
    return round(float(np.mean(xs)), 2) if xs else None


def run_fuzz(examples: int, report: Path) -> dict[str, Any]:
    """The hypothesis HTTP fuzz suite with a large budget, in a pytest child process."""
    env = dict(os.environ)
    env.update(
        {
            "AVATAR_FUZZ_EXAMPLES": str(examples),
            "AVATAR_FUZZ_REPORT": str(report),
            "AVATAR_FUZZ_RANDOM": "1",  # a fresh random sample, not CI's fixed one
        }
    )
    cmd = [
        sys.executable,
        "-m",
        "pytest",
        "-q",
        "-p",
        "no:cacheprovider",
        "tests/test_fuzz.py",
        "-o",
        "timeout=0",
    ]
    t0 = time.monotonic()
    # errors="replace": the suite's output echoes hostile bytes (it fuzzes with them)
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, errors="replace")
    out: dict[str, Any] = {
        "examples_requested": examples,
        "pytest_exit_code": proc.returncode,
        "seconds": round(time.monotonic() - t0, 1),
        "pytest_tail": proc.stdout.strip().splitlines()[-3:],
    }
    if report.exists():
        out.update(json.loads(report.read_text()))
    return out


def cli_main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="avatar bench load", description=__doc__.split("\n\n")[0])
    parser.add_argument("--max-sessions", type=int, default=4)
    parser.add_argument("--ramp", type=int, default=6, help="offers made, one every --interval s")
    parser.add_argument("--interval", type=float, default=1.5)
    parser.add_argument("--hold", type=float, default=30.0, help="seconds the held sessions are measured")
    parser.add_argument(
        "--hammer-every", type=float, default=0.5, help="s between refused offers in the hold"
    )
    parser.add_argument("--windows", type=int, default=4, help="alternating quiet/refusing windows in --hold")
    parser.add_argument("--resolution", type=int, default=512)
    parser.add_argument("--fuzz", type=int, default=0, help="run the HTTP fuzz suite with N examples instead")
    parser.add_argument("--out", type=Path, default=None, help="write the results as JSON here")
    args = parser.parse_args(argv)

    result: dict[str, Any] = {
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "command": "avatar bench load " + " ".join(argv),
        "cpus": os.cpu_count(),
    }
    with tempfile.TemporaryDirectory(prefix="bench-load-") as tmp:
        if args.fuzz > 0:
            result["fuzz"] = run_fuzz(args.fuzz, Path(tmp) / "fuzz.json")
        else:
            overrides = [f"server.max_sessions={args.max_sessions}", "server.rate_limit_per_minute=0"]
            overrides += [f"avatars.cache_dir={tmp}/avatars", f"offline.output_dir={tmp}/outputs"]
            overrides += [f"live.resolution={args.resolution}"]
            untrained = not has_trained_model()
            if untrained:
                print("no trained model in models/motion: using an untrained one", file=sys.stderr)
                overrides.append(f"model.path={write_untrained_model(Path(tmp) / 'motion')}")
            result["untrained_model"] = untrained
            pcm = speech(args.ramp * args.interval + args.hold + 30, Path(tmp))
            server, url = start_server(overrides)
            try:
                asyncio.run(wait_ready(url, server))
                result["load"] = asyncio.run(run_load(args, url, server.pid, pcm))
            finally:
                stop_server(server)
    return write_result(result, args.out)
