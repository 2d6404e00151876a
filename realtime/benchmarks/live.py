"""``avatar bench live``: N concurrent live sessions over real WebRTC on loopback.

The server runs as a separate process (``avatar serve``) so its CPU time is measured
apart from the clients'. Each client sends speech made of short words after silences
(sharp onsets) and records what comes back. Reported:

* CPU per session: server CPU time / wall / N (encode included), and server RSS over time;
* delivered fps and dropped frames (server counters and gaps in received pts);
* time from the answer to the first received frame;
* audio-to-mouth latency p50/p95: a sound onset leaving the client -> the first received
  frame whose mouth region (pixels) moved, measured per onset;
* A/V offset of the returned tracks (mouth onset vs the returned voice's onset) and the drift
  of the returned voice's delay between the first and last part of the run.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from realtime.benchmarks._support import busy_cores
from realtime.config import ROOT

WORDS = ("Ah", "Hop", "Odd", "Eye", "Ha", "Out")  # open-mouth onsets: the lips move with the sound
GAP_S = 1.2  # silence before every word: each word is a fresh onset


def make_speech(seconds: float, workdir: Path) -> tuple[np.ndarray, list[float]]:
    """16 kHz speech: words after silences, repeated to ``seconds``; returns pcm and onset times."""
    from realtime.ingest import RATE

    words = []
    for i, word in enumerate(WORDS):
        path = workdir / f"w{i}.wav"
        subprocess.run(["flite", "-voice", "kal", "-t", word, "-o", str(path)], check=True)
        words.append(_read_wav(path))
    parts, onsets, t = [], [], 0.0
    i = 0
    while t < seconds:
        w = words[i % len(words)]
        env = np.abs(w)
        start = int(np.argmax(env > 0.02))
        w = w[start:]
        parts += [np.zeros(int(GAP_S * RATE), np.float32), w]
        t += GAP_S
        onsets.append(t)
        t += len(w) / RATE
        i += 1
    return np.concatenate(parts).astype(np.float32), onsets


def _read_wav(path: Path) -> np.ndarray:
    import wave

    with wave.open(str(path), "rb") as wf:
        x = np.frombuffer(wf.readframes(wf.getnframes()), "<i2").astype(np.float32) / 32768.0
        x = x.reshape(-1, wf.getnchannels()).mean(axis=1)
        rate = wf.getframerate()
    if rate != 16000:
        from scipy.signal import resample_poly

        g = np.gcd(rate, 16000)
        x = resample_poly(x, 16000 // g, rate // g).astype(np.float32)
    return x


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _process_tree(pid: int) -> list[int]:
    """``pid`` and its live descendants (the server's live workers), from Linux /proc."""
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        for task in Path(f"/proc/{p}/task").glob("*/children"):
            try:
                todo += [int(c) for c in task.read_text().split()]
            except OSError:
                pass
    return out


def _proc_cpu(pid: int) -> float:
    """User + system CPU seconds of a process and its live descendants (Linux /proc)."""
    total = 0.0
    for p in _process_tree(pid):
        try:
            fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return total


def _proc_rss_mb(pid: int) -> float:
    """Resident memory of a process and its live descendants, MB."""
    total = 0.0
    for p in _process_tree(pid):
        try:
            lines = Path(f"/proc/{p}/status").read_text().splitlines()
        except OSError:
            continue
        total += next((int(x.split()[1]) / 1024.0 for x in lines if x.startswith("VmRSS:")), 0.0)
    return total


def match_motion(video: list, motion: list[tuple[float, dict]], fps: int) -> dict[int, np.ndarray]:
    """Received video frame (by list position) -> the motion vector the server sent for it.

    The data channel carries frame ``n``; received pts are ``(n - n0) * 90000 / fps``, so ``n0``
    is the offset under which each message arrives together with its frame.
    """
    from realtime.motion import CHANNELS

    by_n = {m["frame"]: (t, m) for t, m in motion if "channels" in m}
    step = 90000 // fps
    best, best_err = 0, float("inf")
    for d in range(-200, 201):
        errs = [abs(by_n[f.pts // step + d][0] - f.arrival) for f in video if f.pts // step + d in by_n]
        if len(errs) > 0.5 * len(video) and np.median(errs) < best_err:
            best, best_err = d, float(np.median(errs))
    if best_err > 0.1:
        return {}
    out = {}
    for i, f in enumerate(video):
        item = by_n.get(f.pts // step + best)
        if item is not None:
            out[i] = np.array([item[1]["channels"][c] for c in CHANNELS], np.float32)
    return out


class MouthMeter:
    """Crops of the lower face from received frames near each onset (the rest is not kept).

    The mouth is then judged against the real renderer's image of the same frame's motion with
    the mouth channels at rest, so head motion does not count as mouth motion.
    """

    def __init__(self, resolution: int, cache_dir: str, onsets: list[float]) -> None:
        from realtime.config import load_config
        from realtime.engine import Engine
        from realtime.motion import idx, neutral

        self.engine = Engine(load_config(overrides=[f"avatars.cache_dir={cache_dir}"], env={}))
        self.renderer = self.engine.renderer(self.engine.avatar("default"), resolution)
        rest = self.renderer.render(neutral()).astype(np.float32)
        m = neutral()
        m[idx("jawOpen")] = 1.0
        ys, xs = np.nonzero(np.abs(self.renderer.render(m).astype(np.float32) - rest).mean(axis=2) > 12.0)
        self.box = (slice(int(ys.min()), int(ys.max()) + 1), slice(int(xs.min()), int(xs.max()) + 1))
        self.onsets = np.array(onsets)

    def bind(self, client: Any) -> Any:
        """The client's ``video_transform``: keep luma crops only near onsets (the client's send clock).

        The crop is cut from the decoded frame's Y plane as it is, so measuring costs the client no
        colour conversion: on a 2-core machine the clients' CPU is CPU the server does not get.
        """

        def crop(frame: Any) -> np.ndarray | None:
            started = client.track.started_at
            if started is None:
                return None
            t = time.monotonic() - started
            if not np.any((t > self.onsets - 0.8) & (t < self.onsets + 1.2)):
                return None
            plane = frame.planes[0]
            luma = np.frombuffer(plane, np.uint8).reshape(plane.height, plane.line_size)
            return luma[self.box].copy()

        return crop

    def score(self, crop: np.ndarray, motion: np.ndarray) -> float:
        """Lower-face luma difference from the same motion with the mouth at rest."""
        from realtime.motion import MOUTH_CHANNELS, idx
        from realtime.yuv import rgb_to_i420

        closed = motion.copy()
        closed[[idx(c) for c in MOUTH_CHANNELS]] = 0.0
        rgb = self.renderer.render(closed)
        ref = rgb_to_i420(np.ascontiguousarray(rgb))[: rgb.shape[0]][self.box].astype(np.float32)
        return float(np.abs(crop.astype(np.float32) - ref).mean())

    def host_speed_ms(self, frames: int = 60) -> float:
        """Median CPU ms to render one frame here, now: a gauge of how fast this shared host runs.

        Taken with nothing else of ours running, before the sessions start. The same code varies
        by 10-30 % from hour to hour on the shared VM; runs are comparable only at a similar gauge.
        """
        from realtime.motion import idx, neutral

        times = []
        for k in range(-10, frames):  # the first 10 warm caches and are not counted
            m = neutral()
            m[idx("jawOpen")] = 0.5 + 0.5 * np.sin(k / 3.0)
            t = time.thread_time()
            self.renderer.render(m)
            if k >= 0:
                times.append(time.thread_time() - t)
        return round(1000.0 * float(np.median(times)), 3)

    def close(self) -> None:
        self.engine.close()


def analyse(client: Any, onsets: list[float], fps: int, meter: MouthMeter) -> dict[str, Any]:
    """Per-session numbers from what one client received."""
    video = client.video
    arrivals = np.array([v.arrival for v in video])
    pts = np.array([v.pts for v in video])
    step = 90000 // fps
    missing = int(np.sum(np.maximum(np.diff(pts) // step - 1, 0))) if len(pts) > 1 else 0
    span = arrivals[-1] - arrivals[0] if len(arrivals) > 1 else 0.0
    # the time between frames as they arrive: a frame sent late (within the track's grace) shows
    # here as a long interval and a short one; a repeated frame does not (it is counted apart)
    gaps = np.diff(arrivals) * 1000
    intervals = None
    if len(gaps):
        values = np.percentile(gaps, (1, 50, 99, 100))
        intervals = {k: round(float(v), 1) for k, v in zip(("p1", "p50", "p99", "max"), values, strict=True)}
    motion = match_motion(video, client.motion, fps)
    score = np.full(len(video), np.nan)
    for i, v in enumerate(video):
        if v.image is not None and i in motion:
            score[i] = meter.score(v.image, motion[i])
    started = client.track.started_at
    audio = client.audio
    a_arr = np.array([a.arrival for a in audio])
    a_rms = np.array([float(np.sqrt(np.mean(a.pcm**2))) for a in audio])
    lat_mouth, av = [], []
    for s in (started + t for t in onsets):
        if s + 1.0 > arrivals[-1]:
            break
        ok = ~np.isnan(score)
        base_sel = ok & (arrivals > s - 0.6) & (arrivals < s + 0.05)
        after = ok & (arrivals >= s + 0.05) & (arrivals < s + 0.8)
        if base_sel.sum() < 3 or after.sum() < 5:
            continue
        base = float(np.median(score[base_sel]))
        peak = float(score[after].max())
        if peak - base < 2.0:
            continue  # the mouth did not visibly move for this word
        hit = np.flatnonzero(after & (score > base + 0.3 * (peak - base)))
        lat = float(arrivals[hit[0]] - s)
        lat_mouth.append(lat)
        a_sel = np.flatnonzero((a_arr >= s) & (a_arr < s + 0.8) & (a_rms > 0.02))
        if len(a_sel):
            av.append((s - started, lat - float(a_arr[a_sel[0]] - s)))
    return {
        "frames": len(video),
        "fps": (len(video) - 1) / span if span > 0 else 0.0,
        "pts_gaps": missing,
        "frame_interval_ms": intervals,
        "first_frame_s": float(arrivals[0] - client.answered_at) if len(arrivals) else None,
        "latency_mouth": lat_mouth,
        "av_offset": av,
        "matched_motion": len(motion),
    }


def _audio_delays(client: Any, points: int = 8, window_s: float = 4.0) -> list[float | None]:
    """Send -> arrival delay of the returned voice (cross-correlation) at ``points`` places in the run.

    The lag is searched only within 0..1.5 s of each window's arrival time, because the input
    repeats its words and a free search could match another repetition.
    """
    from realtime.tracks import AUDIO_RATE

    got, _ = client.audio_pcm()
    sent = client.track.pcm48
    window = int(window_s * AUDIO_RATE)
    base_pts = client.audio[0].pts
    out: list[float | None] = []
    starts = np.linspace(AUDIO_RATE, max(AUDIO_RATE, len(got) - window - AUDIO_RATE), points).astype(int)
    for lo in starts:
        part = got[lo : lo + window]
        if len(part) < window or part.std() < 1e-3:
            out.append(None)
            continue
        frame = next(i for i, a in enumerate(client.audio) if a.pts - base_pts + len(a.pcm) > lo)
        arrival = client.audio[frame].arrival
        # sent index of part[0] is in [arrival - 1.5 s, arrival] on the sender's clock
        hi_i = int((arrival - client.track.started_at) * AUDIO_RATE)
        lo_i = max(0, hi_i - int(1.5 * AUDIO_RATE))
        seg = sent[lo_i : hi_i + window]
        if len(seg) < window:
            out.append(None)
            continue
        scores = [float(np.dot(part, seg[k : k + window])) for k in range(0, len(seg) - window + 1, 48)]
        k0 = int(np.argmax(scores)) * 48
        fine = range(max(0, k0 - 48), min(len(seg) - window, k0 + 48) + 1)
        k = max(fine, key=lambda j: float(np.dot(part, seg[j : j + window])))
        out.append(float(arrival - client.track.sent_at(lo_i + k)))
    return out


def _slope_per_min(samples: list[float], every_s: float, skip: int) -> float | None:
    """Least-squares growth (MB per minute) of RSS samples taken every ``every_s``, after ``skip``."""
    y = np.array(samples[skip:], dtype=np.float64)
    if len(y) < 3:
        return None
    return round(float(np.polyfit(np.arange(len(y)) * every_s / 60.0, y, 1)[0]), 3)


def _loadavg() -> list[str]:
    return Path("/proc/loadavg").read_text().split()[:3]


def start_server(
    sessions: int, cache_dir: Path, extra: tuple[str, ...] | list[str] = ()
) -> tuple[subprocess.Popen, str]:
    """``avatar serve`` on a free loopback port, as its own process (its CPU is what we measure)."""
    port = _free_port()
    cmd = [sys.executable, "-m", "realtime.cli", "serve", "--host", "127.0.0.1", "--port", str(port)]
    cmd += ["--log-level", "WARNING", "--set", f"server.max_sessions={max(sessions, 1)}"]
    cmd += ["--set", "server.rate_limit_per_minute=1000", "--set", f"avatars.cache_dir={cache_dir}"]
    for item in extra:
        cmd += ["--set", item]
    return subprocess.Popen(cmd, cwd=ROOT), f"http://127.0.0.1:{port}"


async def measure(
    args: argparse.Namespace,
    server: subprocess.Popen,
    url: str,
    pcm: np.ndarray,
    onsets: list[float],
    meter: MouthMeter,
) -> dict[str, Any]:
    """Run the sessions against a started server and analyse what came back."""
    import aiohttp

    sys.path.insert(0, str(ROOT / "tests"))
    from webrtc_client import AvatarClient  # the reusable test client

    result: dict[str, Any] = {
        "sessions": args.sessions,
        "seconds": args.seconds,
        "resolution": args.resolution,
        "server_settings": list(args.overrides),
    }
    async with aiohttp.ClientSession() as http:
        deadline = time.monotonic() + 180
        while True:
            try:
                async with http.get(f"{url}/readyz") as r:
                    if r.status == 200:
                        break
            except aiohttp.ClientError:
                pass
            if server.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("the server did not become ready")
            await asyncio.sleep(0.5)
        clients = [
            AvatarClient(
                url,
                pcm,
                16000,
                params={"fps": args.fps, "resolution": args.resolution},
                heartbeat=1.0,
                dtx=args.dtx,
            )
            for _ in range(args.sessions)
        ]
        for c in clients:
            c.video_transform = meter.bind(c)
        cpu0, t0, rss0 = _proc_cpu(server.pid), time.monotonic(), _proc_rss_mb(server.pid)
        client_cpu0 = time.process_time()
        for c in clients:
            await c.connect(http)
            await asyncio.sleep(0.1)
        rss = []
        end = time.monotonic() + args.seconds
        while time.monotonic() < end:
            await asyncio.sleep(min(10.0, max(0.0, end - time.monotonic())))
            rss.append(round(_proc_rss_mb(server.pid), 1))
        cpu1, t1 = _proc_cpu(server.pid), time.monotonic()
        client_cpu1 = time.process_time()
        infos = []
        for c in clients:
            async with http.get(f"{url}/sessions/{c.session_id}") as r:
                # a session the server closed early (e.g. a starved client looked vanished) reports 404
                infos.append(await r.json() if r.status == 200 else {"closed_early": True})
        for c in clients:
            await c.close()
    per = [analyse(c, onsets, args.fps, meter) for c in clients]
    delays = [_audio_delays(c) for c in clients]
    lat = np.array([x for p in per for x in p["latency_mouth"]])
    av = np.array([x for p in per for _, x in p["av_offset"]])
    half = args.seconds / 2
    early = [x for p in per for t, x in p["av_offset"] if t < half]
    late = [x for p in per for t, x in p["av_offset"] if t >= half]
    result.update(
        {
            "cpu_per_session_pct": round(100.0 * (cpu1 - cpu0) / (t1 - t0) / max(args.sessions, 1), 1),
            "server_cpu_pct": round(100.0 * (cpu1 - cpu0) / (t1 - t0), 1),
            # the loopback clients share the machine: their CPU is what the server could not have
            "client_cpu_pct": round(100.0 * (client_cpu1 - client_cpu0) / (t1 - t0), 1),
            "fps_delivered": [round(p["fps"], 2) for p in per],
            "sessions_closed_early": sum(1 for i in infos if i.get("closed_early")),
            "frames_sent_server": [i.get("frames_sent") for i in infos],
            "frames_dropped_server": [i.get("frames_dropped") for i in infos],
            "frames_sent_late_server": [i.get("frames_sent_late") for i in infos],
            "frames_dropped_by_cause": [i.get("frames_dropped_by_cause") for i in infos],
            # motion frames made in pauses without the denoiser
            "frames_idle_server": [i.get("frames_idle") for i in infos],
            "audio_frames_in_server": [i.get("audio_frames_in") for i in infos],
            "frame_slack_ms": [i.get("frame_slack_ms") for i in infos],
            "audio_arrival_lag_ms": [i.get("audio_arrival_lag_ms") for i in infos],
            "pts_gaps_client": [p["pts_gaps"] for p in per],
            "frame_interval_ms_client": [p["frame_interval_ms"] for p in per],
            "first_frame_after_answer_ms": [round(1000 * p["first_frame_s"], 1) for p in per],
            "latency_onsets": int(len(lat)),
            "latency_p50_ms": round(float(np.percentile(lat, 50)) * 1000, 1) if len(lat) else None,
            "latency_p95_ms": round(float(np.percentile(lat, 95)) * 1000, 1) if len(lat) else None,
            "server_latency_ms": [i.get("latency_ms") for i in infos],
            "pipeline_delay_ms": next(
                (i["pipeline_delay_ms"] for i in infos if "pipeline_delay_ms" in i), None
            ),
            # the adaptive playout delay per session: at the end, its highest, how often it moved
            "pipeline_delay_ms_end": [i.get("pipeline_delay_ms") for i in infos],
            "pipeline_delay_max_ms": [i.get("pipeline_delay_max_ms") for i in infos],
            "pipeline_delay_changes": [i.get("pipeline_delay_changes") for i in infos],
            "pipeline_delay_history": [i.get("pipeline_delay_history") for i in infos],
            "av_offset_p50_ms": round(float(np.median(av)) * 1000, 1) if len(av) else None,
            # mouth-vs-voice offset in the first and the second half of the run: its drift
            "av_offset_p50_ms_first_second_half": [
                round(float(np.median(x)) * 1000, 1) if x else None for x in (early, late)
            ],
            # the returned voice's send -> arrival delay at 8 evenly spaced points of each session
            "audio_delay_ms_over_run": [
                [None if d is None else round(d * 1000, 1) for d in ds] for ds in delays
            ],
            "rss_mb_start_end": [round(rss0, 1), rss[-1] if rss else None],
            "rss_mb_samples": rss,
            "rss_mb_per_min_after_1min": _slope_per_min(rss, 10.0, skip=6),
            "loadavg_end": _loadavg(),
        }
    )
    return result


def cli_main(argv: list[str]) -> int:
    """``avatar bench live --sessions N [--seconds S]``."""
    parser = argparse.ArgumentParser(prog="avatar bench live", description=__doc__.split("\n\n")[0])
    parser.add_argument("--sessions", type=int, default=1)
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--fps", type=int, default=25, choices=(25, 30))
    parser.add_argument("--resolution", type=int, default=512)
    parser.add_argument("--json", type=Path, default=None, help="also write the result here")
    parser.add_argument("--margin-ms", type=float, default=None, help="live.latency_margin_ms for the server")
    parser.add_argument(
        "--busy",
        type=float,
        default=0.0,
        metavar="CORES",
        help="burn this many cores in other processes meanwhile: a busier or slower host, on demand",
    )
    parser.add_argument(
        "--dtx",
        action="store_true",
        help="clients send Opus with DTX in silence (two packets per 400 ms), as Chromium does when asked",
    )
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="SECTION.KEY=VALUE",
        help="a server setting, e.g. server.workers=0 (repeatable)",
    )
    args = parser.parse_args(argv)
    if args.sessions < 1 or args.seconds < 5:
        parser.error("--sessions must be >= 1 and --seconds >= 5")
    work = Path(tempfile.mkdtemp(prefix="bench-live-"))
    pcm, onsets = make_speech(args.seconds + 2, work)
    # latency is measured on at most 120 onsets, the first and the last 60 of a long soak: crops near
    # every onset would not fit in memory, and both ends are what the A/V drift compares
    usable = [t for t in onsets if t < args.seconds - 1.0]
    meter = MouthMeter(
        args.resolution, str(work / "avatars"), usable if len(usable) <= 120 else usable[:60] + usable[-60:]
    )
    host_speed = meter.host_speed_ms()
    if args.margin_ms is not None:
        args.overrides.append(f"live.latency_margin_ms={args.margin_ms}")
    server, url = start_server(args.sessions, work / "avatars", args.overrides)
    try:
        with busy_cores(args.busy):
            result = asyncio.run(measure(args, server, url, pcm, onsets, meter))
    finally:
        server.terminate()
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
        meter.close()
        shutil.rmtree(work, ignore_errors=True)
    result["host_render_ms_before"] = host_speed  # see MouthMeter.host_speed_ms
    result["busy_cores"] = args.busy
    result["client_dtx"] = args.dtx
    text = json.dumps(result, indent=2)
    print(text)
    if args.json is not None:
        args.json.write_text(text + "\n")
    return 0
