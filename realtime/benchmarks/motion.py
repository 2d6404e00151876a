"""``avatar bench motion``: motion-model speed and stability on one core.

* per-chunk inference time (median, p95) of a streaming session at each step count 1..8
  (torch with 1 thread and onnxruntime with 1 intra-op thread);
* whole-file generation speed (x real time);
* boundary jumps: mean mouth jump across 2-frame chunk boundaries vs inside chunks;
* stability: long streamed audio (speech and silence) at accelerated speed: NaN count, head-pose
  drift (mean pose per 10-minute block) and RSS memory at the start and the end;
* idle and speech motion (``--blinks`` runs only this): blinks per minute, blink duration and
  peak, the longest both-eyes-closed stretch and head-pose spread, with the blink process
  (``MotionConfig.blink_process``) and without, on held-out Allison prompts of a corpus's test split
  (whole files, against the targets' stochastic model on the same prompts) and on a streamed
  minute of speech and silence; plus the per-chunk CPU of both settings, interleaved in one process.

Writes a markdown report to ``docs/bench/motion.md`` (``--out`` to change, ``--out -`` for stdout).
"""

from __future__ import annotations

import argparse
import os
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


def blink_stats(motions: list[np.ndarray], fps: int = 25) -> dict[str, float]:
    """Blink and head-motion figures of some motion clips (pooled; each clip counted on its own).

    A blink is ``eyeBlinkLeft`` rising above 0.5 (as measured since the first weights); its
    duration is how long either eye is above 0.05; head-pose std is the mean over the 3 axes of
    the per-axis std of all frames.
    """
    from realtime.motion import CHANNEL_INDEX, POSE_CHANNELS

    left_i, right_i = CHANNEL_INDEX["eyeBlinkLeft"], CHANNEL_INDEX["eyeBlinkRight"]
    pose_i = [CHANNEL_INDEX[c] for c in POSE_CHANNELS]
    blinks, frames, durations, peaks, both_max = 0, 0, [], [], 0
    for m in motions:
        left, right = m[:, left_i], m[:, right_i]
        closed = np.r_[False, left > 0.5]
        blinks += int(np.sum(closed[1:] & ~closed[:-1]))
        frames += len(m)
        eye = np.maximum(left, right)
        for a, b in _runs(eye > 0.05):
            durations.append((b - a) * 1000.0 / fps)
            peaks.append(float(eye[a:b].max()))
        both = [(b - a) * 1000.0 / fps for a, b in _runs((left > 0.5) & (right > 0.5))]
        both_max = max([both_max, *both])
    pose = np.concatenate([m[:, pose_i] for m in motions])
    return {
        "minutes": frames / fps / 60,
        "blinks_per_min": blinks / (frames / fps / 60),
        "duration_ms_median": float(np.median(durations)) if durations else float("nan"),
        "duration_ms_max": max(durations, default=float("nan")),
        "peak_median": float(np.median(peaks)) if peaks else float("nan"),
        "both_closed_ms_max": float(both_max),
        "eyes_open_fraction": float(
            np.mean(np.concatenate([np.maximum(m[:, left_i], m[:, right_i]) < 0.05 for m in motions]))
        ),
        "pose_std_deg": float(pose.std(axis=0).mean()),
    }


def nod_stats(model, corpus: Path, prompts: int, seeds: int = 3, gap_s: float = 0.4) -> dict[str, float]:
    """The head process's nods on held-out real speech against the targets' stressed vowels.

    The prompts are joined with ``gap_s`` of silence into one stream, as a session hears them (the
    stress threshold runs over the recent peaks). A nod is a hit when it starts within 0.2 s of a
    stressed vowel's onset (the targets' nods start 80 ms before it); chance is the hit rate of the
    same nods 0.7 s later.
    """
    from realtime.evaluate import _spread, load_manifest, read_audio
    from realtime.features import logmel, resample
    from realtime.generator import SPEECH_REL, last_mel_index, speech_levels
    from realtime.targets import HeadTrack, stressed_onsets

    utts = _spread([u for u in load_manifest(corpus, "test") if u.real], prompts)
    pieces, stressed, t0 = [], [], 0.0
    for u in utts:
        pcm, rate = read_audio(u.wav)
        stressed += [t0 + s for s in stressed_onsets(u.phones, pcm, rate)]
        x = resample(pcm, rate)
        pieces += [x, np.zeros(int(gap_s * 16000), np.float32)]
        t0 += x.size / 16000 + gap_s
    pcm = np.concatenate(pieces)
    _, rel = logmel(pcm)
    fps, lookahead = 25, model.config.lookahead_ms
    n = pcm.size * fps // 16000
    last = np.minimum([last_mel_index(i, fps, lookahead) for i in range(n)], len(rel))
    levels = speech_levels(rel, 0, last)
    speech = levels > SPEECH_REL
    st = np.asarray(stressed)

    def hits(onsets: np.ndarray) -> tuple[np.ndarray, int]:
        lags = np.array([o - st[st <= o + 0.2].max() for o in onsets if (st <= o + 0.2).any()])
        return lags[(lags >= -0.2) & (lags <= 0.2)], len(lags)

    rates, precision, recall, lag, chance = [], [], [], [], []
    for seed in range(seeds):
        track, onsets = HeadTrack(seed, fps), []
        for i in range(n):
            before = track.nods
            track.step(bool(speech[i]), float(levels[i]))
            if track.nods > before:
                onsets.append(i / fps)
        o = np.asarray(onsets)
        got, total = hits(o)
        late, late_total = hits(o + 0.7)
        rates.append(len(o) / (speech.sum() / fps / 60))
        precision.append(len(got) / max(total, 1))
        chance.append(len(late) / max(late_total, 1))
        recall.append(float(np.mean([((o >= s - 0.2) & (o <= s + 0.2)).any() for s in st])))
        lag.append(float(np.median(got)) if len(got) else float("nan"))
    return {
        "prompts": len(utts),
        "speech_min": float(speech.sum() / fps / 60),
        "nods_per_speech_min": float(np.mean(rates)),
        "stressed_per_speech_min": float(len(st) / (speech.sum() / fps / 60)),
        "precision": float(np.mean(precision)),
        "chance_precision": float(np.mean(chance)),
        "recall": float(np.mean(recall)),
        "lag_ms_median": 1000.0 * float(np.nanmedian(lag)),
    }


def _runs(mask: np.ndarray) -> list[tuple[int, int]]:
    edges = np.flatnonzero(np.diff(np.r_[0, mask.astype(np.int8), 0]))
    return list(zip(edges[0::2].tolist(), edges[1::2].tolist(), strict=True))


def _with_config(model, **changes: object):
    """A view of ``model`` with some inference settings changed (same weights and backend)."""
    import copy
    from dataclasses import replace

    out = copy.copy(model)
    out.config = replace(model.config, **changes)
    return out


def _speech_and_silence(speech: np.ndarray, seconds: float, seed: int = 1) -> np.ndarray:
    """Speech pieces and 1-5 s silences in random order, ``seconds`` long or a little longer."""
    rng = np.random.default_rng(seed)
    pieces, total = [], 0
    while total < seconds * 16000:
        piece = speech if rng.random() < 0.5 else np.zeros(int(rng.uniform(1, 5) * 16000), np.float32)
        pieces.append(piece)
        total += piece.size
    return np.concatenate(pieces)


def _streamed(model, pcm: np.ndarray, steps: int | None = None, seed: int = 0) -> np.ndarray:
    from realtime.generator import MotionControls, MotionStream

    stream = MotionStream(model, controls=MotionControls(inference_steps=steps, seed=seed))
    frames = []
    for i in range(0, pcm.size, 640):
        frames += stream.push(pcm[i : i + 640])
    frames += stream.flush()
    return np.array([f.values for f in frames])


def blink_report(
    model, speech: np.ndarray, corpus: Path | None, prompts: int, steps: int, passes: int = 4
) -> list[str]:
    """Markdown lines: blink and head figures with and without the blink process, and their cost."""
    from realtime.generator import MotionControls, generate_motion

    settings = {"blink process (shipped)": True, "sampler blinks": False}
    models = {name: _with_config(model, blink_process=on) for name, on in settings.items()}
    rows: list[tuple[str, str, dict[str, float]]] = []
    if corpus is not None and (corpus / "manifest.jsonl").is_file():
        from realtime.evaluate import _spread, load_manifest, read_audio
        from realtime.targets import motion_targets

        utts = _spread([u for u in load_manifest(corpus, "test") if u.real], prompts)
        clips = [read_audio(u.wav) for u in utts]
        # seed = prompt number, as for the targets: with one seed, every short clip would show the
        # same first blink at the same time
        for name, m in models.items():
            motions = [
                generate_motion(m, pcm, rate, controls=MotionControls(inference_steps=steps, seed=i))
                for i, (pcm, rate) in enumerate(clips)
            ]
            rows.append(
                (f"{len(utts)} Allison prompts, whole file, seed = prompt number", name, blink_stats(motions))
            )
        targets = [
            motion_targets(u.phones, pcm, rate, int(np.ceil(u.duration * 25)), 25, i)
            for i, (u, (pcm, rate)) in enumerate(zip(utts, clips, strict=True))
        ]
        rows.append((f"{len(utts)} Allison prompts", "targets (seed = prompt number)", blink_stats(targets)))
    minute = _speech_and_silence(speech, 60.0)
    for name, m in models.items():
        motions = [_streamed(m, minute, steps, seed) for seed in range(5)]
        rows.append(("streamed minute of speech and silence, seeds 0-4", name, blink_stats(motions)))
    lines = [
        f"### Blinks and head motion ({steps} steps)",
        "",
        "| audio | setting | minutes | blinks/min | blink ms (median, max) | peak | both eyes > 0.5, max ms "
        "| eyes open | head pose std ° |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for audio, name, st in rows:
        lines.append(
            f"| {audio} | {name} | {st['minutes']:.1f} | {st['blinks_per_min']:.1f} | "
            f"{st['duration_ms_median']:.0f}, {st['duration_ms_max']:.0f} | {st['peak_median']:.2f} | "
            f"{st['both_closed_ms_max']:.0f} | {st['eyes_open_fraction']:.3f} | {st['pose_std_deg']:.2f} |"
        )
    if corpus is not None and (corpus / "manifest.jsonl").is_file():
        nods = nod_stats(model, corpus, max(prompts, 150))
        lines += [
            "",
            f"Nods of the head process (`head_process`), causal, on {nods['prompts']} held-out Allison prompts "
            f"joined into one stream ({nods['speech_min']:.1f} min of speech), seeds 0-2, against the targets' "
            "stressed vowels (a hit: the nod starts within 0.2 s of the vowel's onset, where the targets' start "
            "80 ms before it; chance: "
            "the same nods 0.7 s later):",
            "",
            "| nods / speech min | stressed vowels / speech min | hits (precision) | chance | vowels nodded (recall) "
            "| lag after the onset, median |",
            "| ---: | ---: | ---: | ---: | ---: | ---: |",
            f"| {nods['nods_per_speech_min']:.1f} | {nods['stressed_per_speech_min']:.1f} | {nods['precision']:.3f} "
            f"| {nods['chance_precision']:.3f} | {nods['recall']:.3f} | {nods['lag_ms_median']:.0f} ms |",
        ]
    # per-chunk CPU of both settings, passes alternating in one process, over the same minute
    cpu: dict[str, list[np.ndarray]] = {name: [] for name in models}
    for _ in range(passes):
        for name, m in models.items():
            cpu[name].append(per_chunk(m, minute, steps)[1])
    lines += [
        "",
        f"Per-chunk CPU (`MotionStream`, 1-frame chunks, 10 ms pushes of the streamed minute, {steps} steps, "
        f"onnxruntime 1 thread, thread CPU time of the producing `push()`), {passes} alternating passes per "
        "setting in one process:",
        "",
        "| setting | chunks | CPU median ms | CPU p95 ms |",
        "| --- | ---: | ---: | ---: |",
    ]
    med = {}
    for name, parts in cpu.items():
        c = np.concatenate(parts) * 1e3
        med[name] = float(np.median(c))
        lines.append(f"| {name} | {c.size} | {med[name]:.3f} | {np.percentile(c, 95):.3f} |")
    a, b = med.values()
    lines += ["", f"Ratio of medians {a / b:.3f}.", ""]
    return lines


def precision_report(model_dir: Path, passes: int = 6) -> list[str]:
    """The int8 and the float denoiser interleaved in one process: CPU per streamed frame and per call."""
    from realtime.generator import MotionControls, MotionModel, MotionStream, stream_motion
    from realtime.targets import mouth_aperture

    speech = _speech()
    models = {p: MotionModel.load(model_dir, backend="onnx", precision=p) for p in ("fp32", "int8")}
    per_frame: dict[str, list[float]] = {p: [] for p in models}
    for _ in range(passes):
        for p, m in models.items():
            stream = MotionStream(m, controls=MotionControls(inference_steps=m.default_steps).validated())
            c, frames = time.thread_time(), 0
            for i in range(0, speech.size, 320):  # 20 ms pushes, as a live session's packets
                frames += len(stream.push(speech[i : i + 320]))
            per_frame[p].append((time.thread_time() - c) / frames * 1e3)
    rng = np.random.default_rng(0)
    cfg = models["fp32"].config
    calls: dict[str, dict[str, float]] = {p: {} for p in models}
    for b, t in ((1, 9), (2, 9), (1, 40)):
        x = rng.standard_normal((b, t, cfg.n_channels)).astype(np.float32)
        args = (x, np.full(b, 0.5, np.float32), x, np.ones((b, t, 1), np.float32))
        audio = rng.standard_normal((b, t, cfg.hidden)).astype(np.float32)
        times: dict[str, list[float]] = {p: [] for p in models}
        for _ in range(passes):
            for p, m in models.items():
                c = time.thread_time()
                for _ in range(100):
                    m.backend.velocity(*args, audio)
                times[p].append((time.thread_time() - c) / 100 * 1e6)
        for p in models:
            calls[p][f"batch {b}, {t} frames"] = float(np.median(times[p]))
    a, q = (mouth_aperture(stream_motion(m, speech, 16000)) for m in models.values())
    f32, i8 = (float(np.median(per_frame[p])) for p in ("fp32", "int8"))
    lines = [
        f"### int8 against float denoiser weights ({passes} interleaved passes, thread CPU, medians)",
        "",
        "| | fp32 | int8 | ratio |",
        "| --- | ---: | ---: | ---: |",
        f"| streamed frame, {models['fp32'].default_steps} steps, 20 ms pushes (ms) | {f32:.2f} | {i8:.2f} | {i8 / f32:.2f} |",
    ]
    for k in calls["fp32"]:
        f, i = calls["fp32"][k], calls["int8"][k]
        lines.append(f"| denoiser call, {k} (µs) | {f:.0f} | {i:.0f} | {i / f:.2f} |")
    lines += ["", f"Streamed mouth aperture, int8 against float: r {np.corrcoef(a, q)[0, 1]:.4f}.", ""]
    return lines


def idle_report(model_dir: Path, seconds: float = 40.0, passes: int = 4) -> list[str]:
    """Streams that idle in pauses against streams that never do, interleaved: CPU and the lips.

    The audio is ``avatar bench live``'s: short words after 1.2 s silences (sharp onsets).
    """
    import math
    import tempfile

    from realtime.benchmarks.live import make_speech
    from realtime.generator import MOUTH, MotionModel, MotionStream

    model = MotionModel.load(model_dir, backend="onnx")
    model.warmup()
    with tempfile.TemporaryDirectory() as tmp:
        pcm, _ = make_speech(seconds, Path(tmp))
    cpu: dict[str, list[float]] = {"idles": [], "never": []}
    out: dict[str, np.ndarray] = {}
    idle = 0
    for _ in range(passes):
        for arm in cpu:
            stream = MotionStream(model)
            if arm == "never":
                stream._core.idle_after = math.inf
            c, frames = time.thread_time(), []
            for i in range(0, pcm.size, 320):  # 20 ms pushes, as a live session's packets
                frames += stream.push(pcm[i : i + 320])
            cpu[arm].append((time.thread_time() - c) / len(frames) * 1e3)
            out[arm] = np.array([f.values for f in frames])
            speech = np.array([f.speech for f in frames])
            idle = max(idle, stream.idle_frames)
    on, off = (float(np.median(cpu[a])) for a in ("idles", "never"))
    diff = np.abs(out["idles"][:, MOUTH] - out["never"][:, MOUTH]).max(axis=1)
    n = len(diff)
    return [
        f"### Pauses without the denoiser ({passes} interleaved passes, thread CPU, medians)",
        "",
        f"{seconds:.0f} s of `avatar bench live`'s words after 1.2 s silences, 20 ms pushes, 3 steps: "
        f"{n} frames, {speech.mean():.0%} of them speech, {idle} ({idle / n:.0%}) made without the denoiser.",
        "",
        "| | never idle | idles in pauses (shipped) | ratio |",
        "| --- | ---: | ---: | ---: |",
        f"| streamed frame (ms) | {off:.2f} | {on:.2f} | {on / off:.2f} |",
        "",
        f"Mouth channels, idling against not, speech frames: largest difference {diff[speech].max():.3f}, "
        f"99th percentile {np.percentile(diff[speech], 99):.3f}; pause frames {diff[~speech].max():.3f}.",
        "",
    ]


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
    lines += ["", *blink_report(model, speech, ROOT / "data" / "corpus", 60, model.default_steps)]
    return "\n".join(lines) + "\n"


def cli_main(argv: list[str]) -> int:
    """``avatar bench motion [--model models/motion] [--minutes 60] [--out docs/bench/motion.md]``."""
    p = argparse.ArgumentParser(prog="avatar bench motion", description=__doc__.splitlines()[0])
    p.add_argument("--model", default=str(ROOT / "models" / "motion"))
    p.add_argument("--minutes", type=float, default=60.0, help="length of the stability run (audio minutes)")
    p.add_argument("--backends", default="onnx,torch")
    p.add_argument("--repeats", type=int, default=4, help="copies of the test sentence for the timing runs")
    p.add_argument("--out", default=str(ROOT / "docs" / "bench" / "motion.md"))
    p.add_argument(
        "--blinks",
        action="store_true",
        help="only the blink / head-motion section (onnx), to stdout unless --out",
    )
    p.add_argument(
        "--corpus", default=str(ROOT / "data" / "corpus"), help="held-out Allison prompts for --blinks"
    )
    p.add_argument("--prompts", type=int, default=60, help="how many (spread over the test split)")
    p.add_argument(
        "--steps", type=int, default=None, help="sampler steps for --blinks (default: the model's)"
    )
    p.add_argument(
        "--precision",
        action="store_true",
        help="only the int8-against-float denoiser comparison (onnx), to stdout",
    )
    p.add_argument(
        "--idle",
        action="store_true",
        help="only the pauses-without-the-denoiser comparison (onnx), to stdout",
    )
    args = p.parse_args(argv)
    if args.idle:
        stamp = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
        print(f"Command: `avatar bench motion --idle` ({stamp})\n")
        print("\n".join(idle_report(Path(args.model))))
        return 0
    if args.precision:
        stamp = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
        print(f"Command: `avatar bench motion --precision` ({stamp})\n")
        print("\n".join(precision_report(Path(args.model))))
        return 0
    if args.blinks:
        import torch

        from realtime.generator import MotionModel

        torch.set_num_threads(1)
        model = MotionModel.load(Path(args.model), backend="onnx")
        model.warmup()
        steps = args.steps or model.default_steps
        lines = [
            f"Command: `avatar bench motion --blinks --steps {steps} --prompts {args.prompts}` "
            f"({time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, load average "
            f"{' / '.join(f'{x:.1f}' for x in os.getloadavg())})",
            "",
            *blink_report(model, _speech(), Path(args.corpus), args.prompts, steps),
        ]
        report = "\n".join(lines)
        if args.out not in ("-", str(ROOT / "docs" / "bench" / "motion.md")):
            Path(args.out).write_text(report)
        print(report)
        return 0
    report = run(Path(args.model), args.minutes, [b for b in args.backends.split(",") if b], args.repeats)
    if args.out == "-":
        print(report)
    else:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(report)
        print(report)
    return 0
