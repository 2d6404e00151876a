"""Peer-audio decode benchmark: ``avatar bench receive [--packets N] [--rounds R] [--busy C]``.

A live session gets 50 Opus packets a second from its peer. aiortc decodes them on a thread of
its own (a ``queue.Queue`` there, ``run_coroutine_threadsafe`` back, a Task per packet); the
server decodes them on the event loop as they arrive (:class:`~realtime.live_api.InlineAudioDecoder`).
This feeds the same 20 ms stereo Opus packets, one every 2 ms, through both and reports per
packet, median over the rounds: the process's CPU time (the loop's own work included, the same
for both) and the time from hand-off to the frame being in the track's queue (p50, p99). ``--busy C``
burns C cores in other processes meanwhile, as other sessions would (the hand-off then waits
for a core). Compare the two within one run; the machine is shared.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import fractions
import queue
import statistics
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

from realtime.benchmarks._support import busy_cores, write_result

SPACING = 0.002  # seconds between packets: the loop idles between them, as a session's does


def _packets(n: int) -> tuple[Any, list[bytes]]:
    """aiortc's Opus codec parameters and ``n`` different 20 ms packets of a tone, as a browser sends."""
    import av
    from aiortc.codecs import get_encoder
    from aiortc.rtcrtpparameters import RTCRtpCodecParameters

    opus = RTCRtpCodecParameters(mimeType="audio/opus", clockRate=48000, channels=2, payloadType=111)
    encoder = get_encoder(opus)
    out = []
    for k in range(n):
        t = (np.arange(960) + 960 * k) / 48000
        tone = (0.3 * np.sin(2 * np.pi * 220 * t) * 32767).astype(np.int16)
        frame = av.AudioFrame.from_ndarray(np.repeat(tone, 2).reshape(1, -1), format="s16", layout="stereo")
        frame.sample_rate, frame.pts, frame.time_base = 48000, 960 * k, fractions.Fraction(1, 48000)
        out.append(encoder.encode(frame)[0][0])
    return opus, out


async def _run(inline: bool, opus: Any, packets: list[bytes], count: int) -> tuple[float, float, float]:
    """CPU ms per packet, and the p50 and p99 ms from hand-off to the frame in the queue."""
    from aiortc.jitterbuffer import JitterFrame
    from aiortc.rtcrtpreceiver import decoder_worker

    from realtime.live_api import InlineAudioDecoder

    loop = asyncio.get_running_loop()
    out: asyncio.Queue[Any] = asyncio.Queue()
    inq: Any = InlineAudioDecoder(out) if inline else queue.Queue()
    thread = threading.Thread(target=decoder_worker, args=(loop, inq, out, threading.Event()))
    thread.start()  # started in both cases, as aiortc does; inline, it only waits for the end
    waits = []
    cpu0 = time.process_time()
    for i in range(count):
        t0 = time.perf_counter()
        inq.put((opus, JitterFrame(data=packets[i % len(packets)], timestamp=960 * i)))
        await out.get()
        waits.append(time.perf_counter() - t0)
        await asyncio.sleep(SPACING)
    cpu = time.process_time() - cpu0
    inq.put(None)
    await out.get()  # the end marker, passed on by aiortc's thread
    thread.join()
    p50, p99 = np.percentile(waits, [50, 99])
    return 1000.0 * cpu / count, 1000.0 * float(p50), 1000.0 * float(p99)


async def measure(packets: int, rounds: int) -> dict[str, Any]:
    opus, data = _packets(50)
    runs: dict[str, list[tuple[float, float, float]]] = {"aiortc_thread": [], "inline": []}
    for _ in range(rounds):  # interleaved, so both see the same minutes of a noisy host
        runs["aiortc_thread"].append(await _run(False, opus, data, packets))
        runs["inline"].append(await _run(True, opus, data, packets))
    return {
        name: {
            "cpu_ms_per_packet": round(statistics.median(x[0] for x in r), 4),
            "handoff_ms_p50": round(statistics.median(x[1] for x in r), 4),
            "handoff_ms_p99": round(statistics.median(x[2] for x in r), 4),
            "rounds": [[round(v, 4) for v in x] for x in r],
        }
        for name, r in runs.items()
    }


def cli_main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="avatar bench receive", description=__doc__.split("\n\n")[0])
    parser.add_argument("--packets", type=int, default=2000, help="packets per round and path")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--busy", type=float, default=0.0, help="cores to keep busy in other processes")
    parser.add_argument("--json", type=Path, default=None, help="also write the result here")
    args = parser.parse_args(argv)
    with busy_cores(args.busy):
        result: dict[str, Any] = {
            "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
            "packets": args.packets,
            "busy_cores": args.busy,
            **asyncio.run(measure(args.packets, args.rounds)),
        }
    return write_result(result, args.json)
