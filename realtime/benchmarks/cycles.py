"""``avatar bench cycles``: resources after many connect/disconnect cycles, vanished peers, shutdown.

Runs ``avatar serve`` as its own process and drives it with the aiortc test client:

1. ``--n`` cycles of connect -> a few frames -> close; the server's file descriptors,
   OS threads and RSS are sampled before, during and after (leaks show as growth);
2. ``--vanish`` peers in child processes killed with SIGKILL (no DTLS close, no RTCP BYE):
   the time from the kill until the session is gone from ``/sessions``;
3. a graceful shutdown (SIGINT) with ``--shutdown-sessions`` live sessions: exit code,
   tracebacks and errors in the server's log.

Example: ``avatar bench cycles --n 200 --out docs/bench/cycles.json``
"""

from __future__ import annotations

import argparse
import asyncio
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from realtime.benchmarks._support import (
    fd_count,
    has_trained_model,
    import_test_client,
    rss_mb,
    start_server,
    start_vanishing_client,
    stop_server,
    thread_count,
    wait_ready,
    write_result,
    write_untrained_model,
)


def _probe(pid: int) -> dict[str, float]:
    return {"fds": fd_count(pid), "threads": thread_count(pid), "rss_mb": round(rss_mb(pid), 1)}


async def _session_count(http: Any, url: str) -> int:
    async with http.get(f"{url}/sessions") as r:
        return len((await r.json())["sessions"])


async def _cycle(client_cls: type, url: str, http: Any, frames: int) -> None:
    client = client_cls(url, np.zeros(16000, np.float32), 16000, keep_video=False)
    try:
        await client.connect(http)
        await client.wait_frames(frames, within=60)
    finally:
        await client.close()


async def _wait_sessions_zero(http: Any, url: str, within: float = 30.0) -> float:
    t0 = time.monotonic()
    while await _session_count(http, url) > 0:
        if time.monotonic() - t0 > within:
            raise TimeoutError("sessions were not freed")
        await asyncio.sleep(0.05)
    return time.monotonic() - t0


async def run_cycles(url: str, pid: int, n: int, frames: int, sample_every: int) -> dict[str, Any]:
    """Connect/disconnect ``n`` times; server resources before, during and after."""
    import aiohttp

    client_cls = import_test_client()
    samples: list[dict[str, Any]] = []
    connector = aiohttp.TCPConnector(force_close=True)
    async with aiohttp.ClientSession(connector=connector) as http:
        for _ in range(3):  # warm-up: encoders, executors, caches reach steady state
            await _cycle(client_cls, url, http, frames)
        await _wait_sessions_zero(http, url)
        await asyncio.sleep(1.0)
        base = _probe(pid)
        t0 = time.monotonic()
        for i in range(1, n + 1):
            await _cycle(client_cls, url, http, frames)
            if i % sample_every == 0 or i == n:
                await _wait_sessions_zero(http, url)
                samples.append({"cycle": i, **_probe(pid)})
                print(f"  cycle {i}/{n}: {samples[-1]}", file=sys.stderr, flush=True)
        elapsed = time.monotonic() - t0
        await _wait_sessions_zero(http, url)
        await asyncio.sleep(3.0)  # let closing transports and executors settle
        final = _probe(pid)
    rss = [s["rss_mb"] for s in samples]
    half = len(rss) // 2
    return {
        "cycles": n,
        "seconds": round(elapsed, 1),
        "baseline": base,
        "final": final,
        "fd_growth": final["fds"] - base["fds"],
        "thread_growth": final["threads"] - base["threads"],
        "rss_growth_mb": round(final["rss_mb"] - base["rss_mb"], 1),
        # Growth over the second half only: allocator warm-up happens early, a leak keeps growing.
        "rss_growth_second_half_mb": round(rss[-1] - rss[half], 1) if len(rss) > 2 else None,
        "samples": samples,
    }


async def run_vanish(url: str, repeats: int) -> dict[str, Any]:
    """SIGKILL a connected peer process; seconds until its session is gone from ``/sessions``."""
    import aiohttp

    times: list[float] = []
    async with aiohttp.ClientSession() as http:
        for _ in range(repeats):
            proc = await start_vanishing_client(url)
            try:
                async with asyncio.timeout(120):
                    line = (await proc.stdout.readline()).decode().split()
                if not line or line[0] != "READY":
                    raise RuntimeError(f"vanish client failed: {line}")
                sid = line[1]
                proc.kill()
                t0 = time.monotonic()
                await proc.wait()
                while True:
                    async with http.get(f"{url}/sessions/{sid}") as r:
                        if r.status == 404:
                            break
                    if time.monotonic() - t0 > 60:
                        raise TimeoutError("vanished peer was never freed")
                    await asyncio.sleep(0.05)
                times.append(time.monotonic() - t0)
            finally:
                if proc.returncode is None:
                    proc.kill()
                    await proc.wait()
    arr = np.array(times)
    return {
        "repeats": repeats,
        "freed_after_kill_s": [round(t, 2) for t in times],
        "median_s": round(float(np.median(arr)), 2),
        "max_s": round(float(arr.max()), 2),
    }


async def run_shutdown(server: subprocess.Popen, url: str, sessions: int, log_path: Path) -> dict[str, Any]:
    """Graceful stop (SIGINT) with live sessions: exit code and what the server logged."""
    client_cls = import_test_client()
    clients = [client_cls(url, np.zeros(16000, np.float32), 16000, keep_video=False) for _ in range(sessions)]
    for c in clients:
        await c.connect()
    for c in clients:
        await c.wait_frames(3, within=60)
    t0 = time.monotonic()
    code = await asyncio.get_running_loop().run_in_executor(None, stop_server, server)
    took = time.monotonic() - t0
    await asyncio.sleep(0.5)
    peers = [c.pc.connectionState for c in clients]
    for c in clients:
        await c.close()
    log = log_path.read_text(errors="replace")  # noqa: ASYNC240 - the server has exited; one small read
    return {
        "sessions": sessions,
        "exit_code": code,
        "seconds": round(took, 2),
        "tracebacks": log.count("Traceback"),
        "error_lines": sum(1 for ln in log.splitlines() if " ERROR " in ln or " CRITICAL " in ln),
        "client_peer_states_after": peers,
        "log_tail": log.splitlines()[-6:],
    }


def cli_main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="avatar bench cycles", description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=200, help="connect/disconnect cycles")
    parser.add_argument("--frames", type=int, default=3, help="video frames to receive per cycle")
    parser.add_argument("--vanish", type=int, default=5, help="vanished-peer repeats")
    parser.add_argument("--shutdown-sessions", type=int, default=2)
    parser.add_argument(
        "--malloc-arena-max", type=int, default=0, help="MALLOC_ARENA_MAX for the server (0 = glibc default)"
    )
    parser.add_argument("--out", type=Path, default=None, help="write the results as JSON here")
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory(prefix="bench-cycles-") as tmp:
        overrides = ["server.rate_limit_per_minute=0", f"avatars.cache_dir={tmp}/avatars"]
        overrides += [f"offline.output_dir={tmp}/outputs", "server.max_sessions=8"]
        untrained = not has_trained_model()
        if untrained:
            print("no trained model in models/motion: using an untrained one", file=sys.stderr)
            overrides.append(f"model.path={write_untrained_model(Path(tmp) / 'motion')}")
        result: dict[str, Any] = {
            "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
            "command": "avatar bench cycles " + " ".join(argv),
            "untrained_model": untrained,
        }

        env = {"MALLOC_ARENA_MAX": str(args.malloc_arena_max)} if args.malloc_arena_max else {}
        result["malloc_arena_max"] = args.malloc_arena_max or "glibc default"
        server, url = start_server(overrides, env=env)
        try:
            asyncio.run(wait_ready(url, server))
            result["cycles"] = asyncio.run(
                run_cycles(url, server.pid, args.n, args.frames, max(1, args.n // 10))
            )
            if args.vanish > 0:
                result["vanish"] = asyncio.run(run_vanish(url, args.vanish))
        finally:
            stop_server(server)
        if args.shutdown_sessions > 0:
            log_path = Path(tmp) / "server.log"
            cmd_server, url = _start_logged(overrides, log_path, env)
            try:
                asyncio.run(wait_ready(url, cmd_server))
                result["shutdown"] = asyncio.run(
                    run_shutdown(cmd_server, url, args.shutdown_sessions, log_path)
                )
            finally:
                stop_server(cmd_server)
    return write_result(result, args.out)


def _start_logged(overrides: list[str], log_path: Path, env: dict[str, str]) -> tuple[subprocess.Popen, str]:
    """Like ``start_server`` but with stderr in ``log_path`` (a pipe could fill and stall the server)."""
    with log_path.open("wb") as fh:
        return start_server(overrides, log_level="INFO", env=env, stderr=fh)
