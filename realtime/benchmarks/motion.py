"""``avatar bench motion``: motion-model speed and stability on one core.

* per-chunk inference time (median, p95) of a streaming session at each step count 1..8
  (torch with 1 thread and onnxruntime with 1 intra-op thread);
* whole-file generation speed (x real time);
* boundary jumps: mean mouth jump across 2-frame chunk boundaries vs inside chunks;
* stability: long streamed audio (speech and silence) at accelerated speed: NaN count, head-pose
  drift (mean pose per 10-minute block) and RSS memory at the start and the end.

Writes a markdown report to ``docs/bench/motion.md`` (``--out`` to change, ``--out -`` for stdout).
"""

from __future__ import annotations

import argparse
import resource
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np

from realtime.config import ROOT

TEXT = (
    "Please bring me a bumpy pillow, Bob. My mom baked a big apple pie. "
    "We were away for a few weeks, so the boat is full of water."
)


def _rss_mb() -> float:
    try:
        with open("/proc/self/statm") as fh:
            return int(fh.read().split()[1]) * resource.getpagesize() / 2**20
    except OSError:
        return float("nan")


def _speech() -> np.ndarray:
    """Held-out speech (flite awb, never trained on), or noise bursts if flite is missing."""
    if shutil.which("flite"):
        import soundfile as sf

        with tempfile.TemporaryDirectory() as tmp:
            out = Path(tmp) / "s.wav"
            subprocess.run(["flite", "-voice", "awb", "-t", TEXT, "-o", str(out)], check=True)
            pcm, rate = sf.read(str(out), dtype="float32")
        assert rate == 16000
        return pcm
    rng = np.random.default_rng(0)
    env = (np.sin(np.arange(16000 * 8) / 16000 * 2 * np.pi * 3) > 0).astype(np.float32)
    return (0.1 * env * rng.standard_normal(env.size)).astype(np.float32)


def per_chunk(
    model, speech: np.ndarray, steps: int, fps: int = 25, dynamic_scale: float = 1.0
) -> tuple[np.ndarray, np.ndarray]:
    """(wall seconds, thread CPU seconds) per push() that emitted a chunk, streaming 10 ms pieces.

    CPU time is what one core spends on the chunk; on a shared machine wall time also counts
    the time other processes held the core.
    """
    from realtime.generator import MotionControls, MotionStream

    stream = MotionStream(
        model, fps=fps, controls=MotionControls(inference_steps=steps, dynamic_scale=dynamic_scale)
    )
    wall, cpu = [], []
    for i in range(0, speech.size, 160):
        t, c = time.perf_counter(), time.thread_time()
        out = stream.push(speech[i : i + 160])
        dt, dc = time.perf_counter() - t, time.thread_time() - c
        if out:
            wall.append(dt)
            cpu.append(dc)
    return np.asarray(wall[5:]), np.asarray(cpu[5:])


def boundary_jumps(model, speech: np.ndarray) -> tuple[float, float]:
    """Mean abs mouth jump across 2-frame chunk boundaries and inside chunks."""
    from realtime.generator import MotionStream
    from realtime.motion import MOUTH_CHANNELS

    stream = MotionStream(model, chunk_frames=2)
    frames = []
    for i in range(0, speech.size, 640):
        frames += stream.push(speech[i : i + 640])
    frames += stream.flush()
    m = np.array([f.values for f in frames])[:, : len(MOUTH_CHANNELS)]
    d = np.abs(np.diff(m, axis=0)).mean(axis=1)
    return float(d[1::2].mean()), float(d[0::2].mean())


def stability(model, speech: np.ndarray, minutes: float) -> dict[str, object]:
    """Stream ``minutes`` of alternating speech/silence as fast as possible."""
    from realtime.generator import MotionStream
    from realtime.motion import CHANNEL_INDEX, POSE_CHANNELS

    pose_idx = [CHANNEL_INDEX[c] for c in POSE_CHANNELS]
    stream = MotionStream(model)
    rng = np.random.default_rng(0)
    total = int(minutes * 60 * 16000)
    fed, nan, rss = 0, 0, []
    block = 10 * 60 * 25  # frames per 10 minutes
    sums = np.zeros(3)
    counts = 0
    means, maxabs = [], 0.0
    start, cpu0 = time.perf_counter(), time.thread_time()
    silence = np.zeros(16000 * 3, np.float32)
    gains = (0.3, 1.0, 2.0)
    while fed < total:
        piece = speech * gains[int(rng.integers(3))] if rng.random() < 0.65 else silence
        for i in range(0, piece.size, 640):
            for f in stream.push(piece[i : i + 640]):
                if not np.isfinite(f.values).all():
                    nan += 1
                p = f.values[pose_idx]
                sums += p
                counts += 1
                maxabs = max(maxabs, float(np.abs(p).max()))
                if counts == block:
                    means.append((sums / counts).round(2).tolist())
                    sums[:] = 0
                    counts = 0
        fed += piece.size
        if not rss or time.perf_counter() - start > 30 * len(rss):
            rss.append(round(_rss_mb(), 1))
    rss.append(round(_rss_mb(), 1))
    wall, cpu = time.perf_counter() - start, time.thread_time() - cpu0
    return {
        "audio_minutes": round(fed / 16000 / 60, 1),
        "wall_seconds": round(wall, 1),
        "x_real_time_wall": round(fed / 16000 / wall, 1),
        "x_real_time_cpu": round(fed / 16000 / cpu, 1),
        "frames": stream.frames_emitted,
        "nan_frames": nan,
        "pose_mean_per_10min_deg": means,
        "pose_max_abs_deg": round(maxabs, 2),
        "rss_mb_first_last": (rss[0], rss[-1]),
        "rss_mb_max": max(rss),
    }


def run(model_dir: Path, minutes: float, backends: list[str], repeats: int) -> str:
    """All measurements -> markdown."""
    import torch

    from realtime.generator import MotionModel, MotionStream, generate_motion

    torch.set_num_threads(1)
    speech = _speech()
    long = np.tile(speech, repeats)
    lines = [
        "# Motion model benchmark",
        "",
        f"Date: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}. Command: "
        f"`avatar bench motion --minutes {minutes:g}` (model `{model_dir.relative_to(ROOT) if model_dir.is_relative_to(ROOT) else model_dir}`).",
        "Machine: the shared 2-core CPU dev box (other jobs were running: treat absolute times as upper bounds, "
        "compare ratios). One thread: `torch.set_num_threads(1)`, onnxruntime `intra_op_num_threads=1`.",
        "",
    ]
    model = MotionModel.load(model_dir, backend="onnx" if "onnx" in backends else "torch")
    cfg = model.config
    from realtime.model import count_parameters

    chunk = MotionStream(model).chunk_frames
    lines += [
        f"Model: {count_parameters(model.net):,} parameters, lookahead {cfg.lookahead_ms} ms, chunk {chunk} frame(s) "
        f"({chunk * 40} ms at 25 fps), default {model.default_steps} steps, "
        f"latency_ms {MotionStream(model).latency_ms:.0f} at 25 fps.",
        "",
        f"## Per-chunk time (one streaming chunk = {chunk} frame(s) at 25 fps, 10 ms pushes of held-out speech)",
        "",
        "CPU = thread CPU time of the push() that produced the chunk (robust to other jobs on the box);",
        "wall = elapsed time (includes time the shared CPU spent on other processes).",
        "",
        "| backend | steps | CPU median ms | CPU p95 ms | wall median ms | wall p95 ms | one core at 25 fps (CPU median) |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    per_s = 25 / chunk  # chunks per second of audio

    def row(label: str, wall: np.ndarray, cpu: np.ndarray) -> str:
        cm, cp = np.median(cpu) * 1e3, np.percentile(cpu, 95) * 1e3
        wm, wp = np.median(wall) * 1e3, np.percentile(wall, 95) * 1e3
        return f"| {label} | {cm:.2f} | {cp:.2f} | {wm:.2f} | {wp:.2f} | {cm * per_s / 10:.1f}% |"

    for backend in backends:
        m = MotionModel.load(model_dir, backend=backend)
        m.warmup()
        for steps in range(1, 9):
            lines.append(row(f"{backend} | {steps}", *per_chunk(m, long, steps)))
        guided = per_chunk(m, long, m.default_steps, dynamic_scale=1.5)
        lines.append(row(f"{backend} | {m.default_steps} + guidance (dynamic_scale 1.5)", *guided))
    lines += [
        "",
        "## Whole-file generation (`generate_motion`)",
        "",
        "| backend | audio s | x real time, wall (median of 3) | x real time, CPU |",
        "| --- | --- | --- | --- |",
    ]
    for backend in backends:
        m = MotionModel.load(model_dir, backend=backend)
        speeds, cpu_speeds = [], []
        for _ in range(3):
            t, c = time.perf_counter(), time.thread_time()
            generate_motion(m, long, 16000)
            speeds.append(long.size / 16000 / (time.perf_counter() - t))
            cpu_speeds.append(long.size / 16000 / (time.thread_time() - c))
        lines.append(
            f"| {backend} | {long.size / 16000:.1f} | {np.median(speeds):.0f} | {np.median(cpu_speeds):.0f} |"
        )
    b, i = boundary_jumps(model, long)
    lines += [
        "",
        "## Chunk boundaries (2-frame chunks, mean abs jump of the 14 mouth channels)",
        "",
        f"across a chunk boundary: {b:.4f}; inside a chunk: {i:.4f}; ratio {b / i:.2f} "
        "(tests/test_generator.py asserts ratio <= 1.3).",
        "",
    ]
    st = stability(model, speech, minutes)
    lines += [f"## Stability ({st['audio_minutes']} min of streamed speech/silence, accelerated)", ""]
    lines += [f"- {k}: {v}" for k, v in st.items()]
    return "\n".join(lines) + "\n"


def cli_main(argv: list[str]) -> int:
    """``avatar bench motion [--model models/motion] [--minutes 60] [--out docs/bench/motion.md]``."""
    p = argparse.ArgumentParser(prog="avatar bench motion", description=__doc__.splitlines()[0])
    p.add_argument("--model", default=str(ROOT / "models" / "motion"))
    p.add_argument("--minutes", type=float, default=60.0, help="length of the stability run (audio minutes)")
    p.add_argument("--backends", default="onnx,torch")
    p.add_argument("--repeats", type=int, default=4, help="copies of the test sentence for the timing runs")
    p.add_argument("--out", default=str(ROOT / "docs" / "bench" / "motion.md"))
    args = p.parse_args(argv)
    report = run(Path(args.model), args.minutes, [b for b in args.backends.split(",") if b], args.repeats)
    if args.out == "-":
        print(report)
    else:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(report)
        print(report)
    return 0
