"""Helpers shared by the benchmarks and their tests.

Process probes read Linux ``/proc``; the server runs as its own process (``avatar serve``)
so what is measured is the server, not the clients.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from realtime.config import ROOT

BURN = """
import sys, time
share, period = float(sys.argv[1]), 0.01
while True:
    t = time.perf_counter()
    while time.perf_counter() - t < share * period:
        pass
    time.sleep((1.0 - share) * period)
"""


@contextlib.contextmanager
def busy_cores(cores: float) -> Iterator[None]:
    """Keep ``cores`` of CPU busy while the block runs (the benches' ``--busy``): processes that burn
    them between them in 10 ms duty cycles, as another tenant of a shared host would."""
    n = math.ceil(cores - 1e-9) if cores > 0 else 0
    burners = [subprocess.Popen([sys.executable, "-c", BURN, str(cores / n)]) for _ in range(n)]
    try:
        yield
    finally:
        for p in burners:
            p.kill()
            p.wait()


def fd_count(pid: int | None = None) -> int:
    """Open file descriptors of a process (default: this one)."""
    return len(os.listdir(f"/proc/{pid or os.getpid()}/fd"))


def thread_count(pid: int | None = None) -> int:
    """OS threads of a process (Python and native: codec, onnxruntime, executor threads)."""
    return len(os.listdir(f"/proc/{pid or os.getpid()}/task"))


def rss_mb(pid: int | None = None) -> float:
    """Resident memory of a process in MiB."""
    for line in Path(f"/proc/{pid or os.getpid()}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024.0
    return 0.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def has_trained_model(model_path: str = "models/motion") -> bool:
    folder = ROOT / model_path
    return (folder / "config.json").is_file() and (folder / "motion.pt").is_file()


def write_untrained_model(folder: Path, seed: int = 0) -> Path:
    """A randomly initialised motion model in the shipped layout: same compute, meaningless motion.

    Lets lifecycle and load checks run before (or without) a trained model; results that
    depend on motion quality must not use it.
    """
    import torch

    from realtime.model import MotionConfig, MotionDenoiser

    torch.manual_seed(seed)
    cfg = MotionConfig()
    net = MotionDenoiser(cfg)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps({"config": cfg.to_dict(), "untrained": True}))
    torch.save(net.state_dict(), folder / "motion.pt")
    return folder


def start_server(
    overrides: list[str], log_level: str = "WARNING", env: dict[str, str] | None = None, stderr: Any = None
) -> tuple[subprocess.Popen, str]:
    """``avatar serve`` on a free loopback port as its own process; returns it and its base URL."""
    port = free_port()
    cmd = [sys.executable, "-m", "realtime.cli", "serve", "--host", "127.0.0.1", "--port", str(port)]
    cmd += ["--log-level", log_level]
    for item in overrides:
        cmd += ["--set", item]
    full_env = {**os.environ, **(env or {})}
    return subprocess.Popen(cmd, cwd=ROOT, env=full_env, stderr=stderr), f"http://127.0.0.1:{port}"


async def wait_ready(url: str, server: subprocess.Popen | None = None, within: float = 180.0) -> None:
    """Poll ``/readyz`` until the models are warm."""
    import aiohttp

    deadline = time.monotonic() + within
    async with aiohttp.ClientSession() as http:
        while True:
            try:
                async with http.get(f"{url}/readyz") as r:
                    if r.status == 200:
                        return
            except aiohttp.ClientError:
                pass
            if (server is not None and server.poll() is not None) or time.monotonic() > deadline:
                raise RuntimeError("the server did not become ready")
            await asyncio.sleep(0.5)


def stop_server(server: subprocess.Popen, timeout: float = 20.0) -> int:
    """SIGINT (graceful shutdown, like Ctrl-C) and wait; kill if it hangs. Returns the exit code."""
    import signal

    if server.poll() is None:
        server.send_signal(signal.SIGINT)
        try:
            server.wait(timeout)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
    return int(server.returncode)


def tests_on_path() -> None:
    """Make ``tests/``'s reusable helpers (``webrtc_client``, ``chromium``) importable."""
    tests = str(ROOT / "tests")
    if tests not in sys.path:
        sys.path.insert(0, tests)


def import_test_client() -> type:
    """The reusable aiortc test client (``tests/webrtc_client.py``)."""
    tests_on_path()
    from webrtc_client import AvatarClient

    return AvatarClient


# A peer that vanishes: connects, prints "READY <session_id>" once frames flow, then hangs until
# it is killed (SIGKILL, so it never closes its peer connection).
VANISH_CLIENT = r"""
import asyncio, sys
import numpy as np
sys.path.insert(0, sys.argv[2])
from webrtc_client import AvatarClient

async def main():
    client = AvatarClient(sys.argv[1], np.zeros(16000, np.float32), 16000, keep_video=False)
    await client.connect()
    await client.wait_frames(5, within=60)
    print("READY", client.session_id, flush=True)
    await asyncio.sleep(3600)

asyncio.run(main())
"""


async def start_vanishing_client(url: str) -> asyncio.subprocess.Process:
    """Start the vanishing peer against ``url``; read its READY line from ``stdout``."""
    return await asyncio.create_subprocess_exec(
        sys.executable, "-c", VANISH_CLIENT, url, str(ROOT / "tests"), stdout=asyncio.subprocess.PIPE
    )


def write_result(result: dict[str, Any], out: Path | None) -> int:
    """Add the load average, print the result as JSON and write it to ``out`` if given; exit code 0."""
    result["loadavg"] = Path("/proc/loadavg").read_text().split()[:3]
    text = json.dumps(result, indent=2)
    print(text)
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(text + "\n")
    return 0
