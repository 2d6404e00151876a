"""VP8 encode benchmark: ``avatar bench encode [--frames N] [--bitrates ...] [--static-thresh ...]``.

Encodes the live path's own frames (the default avatar rendered at 512x512 from a speech-like
motion stream, converted to I420 as a session does) with libvpx as :class:`AvatarVp8Encoder`
opens it, for each target bitrate and ``static-thresh`` given, plus aiortc's own settings for
reference. Per setting: the encoder's CPU time per frame (thread time, median), the bitrate it
actually produced, and luma PSNR of the decoded frames, over the whole frame and over the
renderer's animated region (where the face is), mean and worst frame.

On one core; compare ratios within one run, not absolute times (the machine is shared).
"""

from __future__ import annotations

import argparse
import datetime as dt
import fractions
import time
from typing import Any

import numpy as np

FPS = 25
WARMUP = 10  # frames left out of the figures: the first keyframe and the rate control settling
# what aiortc itself opens libvpx with (aiortc.codecs.vpx), for reference
AIORTC_OPTIONS = {"noise-sensitivity": "4", "cpu-used": "-6", "static-thresh": "1"}


def render_frames(frames: int, resolution: int = 512) -> tuple[list[np.ndarray], tuple[int, int, int, int]]:
    """I420 planes of ``frames`` rendered frames of the default avatar, and the animated box."""
    import cv2

    from realtime.avatar import register_avatar
    from realtime.benchmarks.render import ROOT, speech_like_motion
    from realtime.renderer import PortraitRenderer
    from realtime.yuv import I420Converter

    cv2.setNumThreads(1)
    bundle = register_avatar((ROOT / "models" / "avatars" / "astronaut.png").read_bytes())
    renderer = PortraitRenderer(bundle, resolution)
    to_i420 = I420Converter(renderer)
    if to_i420.box is None:
        raise RuntimeError("the renderer has no animated region")
    planes = [to_i420.region(renderer.render_region(m)).copy() for m in speech_like_motion(frames)]
    return planes, to_i420.box


def _psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((a.astype(np.float32) - b.astype(np.float32)) ** 2))
    return 10.0 * np.log10(255.0**2 / max(mse, 1e-6))


def encode_run(planes: list[np.ndarray], box: tuple[int, int, int, int], bitrate: int, options: dict) -> dict:
    """Encode and decode every frame at ``bitrate`` with ``options``; the figures of one setting."""
    import av

    from realtime.tracks import _open_vp8
    from realtime.yuv import i420_frame

    height, width = planes[0].shape[0] * 2 // 3, planes[0].shape[1]
    encoder = _open_vp8(width, height, bitrate, options)
    decoder = av.CodecContext.create("libvpx", "r")
    x0, y0, x1, y1 = box
    cpu: list[float] = []
    full: list[float] = []
    region: list[float] = []
    size = 0
    for i, yuv in enumerate(planes):
        frame = i420_frame(yuv)
        frame.pts, frame.time_base = i * 90000 // FPS, fractions.Fraction(1, 90000)
        c0 = time.thread_time()
        packets = encoder.encode(frame)
        spent = time.thread_time() - c0
        for packet in packets:
            for decoded in decoder.decode(packet):
                if i < WARMUP:
                    continue
                luma = decoded.to_ndarray(format="yuv420p")[:height]
                full.append(_psnr(luma, yuv[:height]))
                region.append(_psnr(luma[y0:y1, x0:x1], yuv[y0:y1, x0:x1]))
            if i >= WARMUP:
                size += packet.size
        if i >= WARMUP:
            cpu.append(spent)
    seconds = (len(planes) - WARMUP) / FPS
    return {
        "encode_ms_median": round(float(np.median(cpu)) * 1000, 3),
        "kbps": round(size * 8 / seconds / 1000, 1),
        "psnr_full_db": round(float(np.mean(full)), 2),
        "psnr_region_db": round(float(np.mean(region)), 2),
        "psnr_region_worst_db": round(float(np.min(region)), 2),
    }


def run(frames: int, bitrates: list[int], thresholds: list[int]) -> list[dict[str, Any]]:
    from realtime.tracks import AvatarVp8Encoder

    planes, box = render_frames(frames)
    rows = []
    for kbps in bitrates:
        settings = [("aiortc", AIORTC_OPTIONS)]
        settings += [
            (f"ours, static-thresh {st}", {**AvatarVp8Encoder.OPTIONS, "static-thresh": str(st)})
            for st in thresholds
        ]
        for name, options in settings:
            rows.append(
                {"target_kbps": kbps, "setting": name, **encode_run(planes, box, kbps * 1000, options)}
            )
    return rows


def report(rows: list[dict[str, Any]], frames: int) -> str:
    from realtime.tracks import AvatarVp8Encoder

    lines = [
        f"VP8 encode of {frames} rendered 512x512 frames ({dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M} UTC); shipped: "
        + ", ".join(f"{k} {v}" for k, v in AvatarVp8Encoder.OPTIONS.items()),
        "",
        "| target | setting | encode CPU ms/frame (median) | kb/s produced | PSNR full | PSNR face region (mean / worst frame) |",
        "| ---: | --- | ---: | ---: | ---: | --- |",
    ]
    for r in rows:
        lines.append(
            f"| {r['target_kbps']} kb/s | {r['setting']} | {r['encode_ms_median']:.2f} | {r['kbps']:.0f} |"
            f" {r['psnr_full_db']:.2f} dB | {r['psnr_region_db']:.2f} / {r['psnr_region_worst_db']:.2f} dB |"
        )
    return "\n".join(lines)


def _int_list(text: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from exc
    if not values or min(values) < 0:
        raise argparse.ArgumentTypeError(f"expected non-negative integers, got {text!r}")
    return values


def cli_main(argv: list[str]) -> int:
    """``avatar bench encode``: VP8 CPU, bitrate and quality on rendered frames."""
    ap = argparse.ArgumentParser(prog="avatar bench encode", description=__doc__.splitlines()[0])
    ap.add_argument("--frames", type=int, default=260, help="frames encoded per setting (default 260)")
    ap.add_argument(
        "--bitrates", type=_int_list, default=[500, 1000, 1500], help="target kb/s, e.g. 500,1500"
    )
    ap.add_argument(
        "--static-thresh", type=_int_list, default=[1, 500, 800], help="libvpx static-thresh values"
    )
    ap.add_argument("--json", default=None, help="also write the rows here")
    args = ap.parse_args(argv)
    if args.frames <= WARMUP:
        ap.error(f"--frames must be more than {WARMUP}")
    rows = run(args.frames, args.bitrates, args.static_thresh)
    print(report(rows, args.frames))
    if args.json:
        import json
        from pathlib import Path

        Path(args.json).write_text(json.dumps({"frames": args.frames, "rows": rows}, indent=2))
    return 0
