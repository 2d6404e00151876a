"""Offline generation: one portrait + one audio file -> an MP4 (H.264 + AAC), and ``avatar generate``.

The same engine as the live path: the motion model turns the whole audio into one
motion frame per video frame, the portrait renderer draws each frame, and PyAV
encodes. Rendering runs on the engine's inference executor in small chunks (so
live sessions sharing it are not starved) while the calling thread encodes, so
render and encode overlap. Frames are streamed to the encoder and never all held,
so memory stays flat however long the audio is.

Frame *n* shows audio time *n / fps*; the video has ``ceil(duration * fps)`` frames
and the sound track is the source audio cut to ``duration``.

Framework-free: no aiohttp here.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import math
import os
import secrets
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Mapping
from concurrent.futures import Executor, Future
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

import av
import numpy as np

from realtime.media import MODEL_RATE, AudioClip, MediaError, decode_audio, iter_source_frames, sniff_audio
from realtime.motion import CONTROL_RANGES
from realtime.yuv import I420Converter, i420_frame

if TYPE_CHECKING:
    from realtime.avatar import AvatarBundle
    from realtime.engine import Engine
    from realtime.generator import MotionControls

log = logging.getLogger(__name__)

Progress = Callable[[float, str], None]

# Share of the progress bar given to motion generation; rendering + encoding take the rest.
_MOTION_SHARE = 0.1
# Long audio becomes motion in blocks of about this many seconds. generate_motion holds per-frame
# audio features for all of its input (~1.7 MB per second of audio: +1 GB for 10 minutes), so
# blocks keep memory flat, and rendering starts before all motion exists. Each block after the
# first starts early: its first second (the model warming up from no context) is dropped and the
# next second cross-fades from the previous block, so the seams do not show. Nothing can be drawn
# before the first block exists, so blocks start short and double (4, 8, 16, 32 s, then 60 s):
# rendering starts after the motion of 4 s, not of the whole first minute (a 20-s clip would
# otherwise spend ~13% of its time on motion with one core idle).
MOTION_BLOCK_S = 60
FIRST_BLOCK_S = 4
_WARMUP_S = 1
_FADE_S = 1
# Frames per render task (at 512x512; fewer at larger sizes): small enough that other users of the
# executor get a turn every ~10 ms, large enough to amortise the hand-off.
_CHUNK = 6
# The default encoder setting "fast": x264 veryfast with a cheaper motion search, a short lookahead,
# no scene-cut analysis (a talking head has no cuts; keyframes still come every 250 frames for
# seeking) and one encoder thread. On avatar video (a still background, a moving face) it costs 40%
# less CPU than plain veryfast at 1.4 dB lower PSNR (39.6 dB) and a smaller file; any x264 preset
# name is used as is. One thread: with one render thread on the other core (see generate_video),
# x264's frame threads only added CPU (0.76 against 0.71 ms a frame, the same bitstream) and were
# slower on 2 idle cores (median 21.0x against 21.8x real time at 512x512, alternating runs; on a
# busy machine they grab more of a contended CPU and were faster).
FAST = "fast"
_FAST_X264 = {
    "preset": "veryfast",
    "x264-params": "me=dia:subme=1:weightp=0:mixed-refs=0:rc-lookahead=5:b-adapt=0:scenecut=0:threads=1",
}
_AAC_RATES = (96000, 88200, 64000, 48000, 44100, 32000, 24000, 22050, 16000, 12000, 11025, 8000)


class ParamError(ValueError):
    """A generation parameter is unknown, of the wrong type or out of range."""


class Cancelled(Exception):
    """Generation was cancelled before it finished; nothing was left on disk."""


def _number(key: str, value: Any, *, integer: bool = False) -> float | int:
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError:
            raise ParamError(f"{key} must be a number, got {value!r}") from None
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ParamError(f"{key} must be a number, got {value!r}")
    if integer:
        if float(value) != int(value):
            raise ParamError(f"{key} must be an integer, got {value!r}")
        return int(value)
    return float(value)


@dataclass(frozen=True)
class GenerateParams:
    """The Sonic-compatible generation config (the ``config`` JSON of the API)."""

    duration: float | None = None  # seconds; None = the whole audio; capped by the audio's length
    min_resolution: int = 512  # shorter side of the output, 256..1024
    expand_ratio: float = 0.15  # crop margin around the face, 0..0.5
    inference_steps: int | None = None  # 1..8; None = the model's default
    dynamic_scale: float = 1.0  # 0..2, mouth strength
    motion_scale: float = 1.0  # 0..2, head/brow/blink amplitude
    align_mouth: float = 0.0  # ms, -200..200
    smooth_motion: float = 0.0  # 0..1
    fps: int = 25  # 25 or 30
    seed: int = 0

    _RANGES = MappingProxyType({"min_resolution": (256, 1024), "expand_ratio": (0.0, 0.5), **CONTROL_RANGES})
    _INTEGERS = frozenset({"min_resolution", "inference_steps", "fps", "seed"})

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any]) -> GenerateParams:
        """Validate a parsed ``config`` object; ``null`` means the default. Raises :class:`ParamError`."""
        if not isinstance(data, Mapping):
            raise ParamError("config must be a JSON object")
        fields = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - fields)
        if unknown:
            raise ParamError(
                f"unknown config key(s): {', '.join(unknown)}; known: {', '.join(sorted(fields))}"
            )
        values: dict[str, Any] = {}
        for key, raw in data.items():
            if raw is None:
                continue
            value = _number(key, raw, integer=key in cls._INTEGERS)
            if key == "duration" and value <= 0:
                raise ParamError(f"duration must be > 0 seconds, got {value:g}")
            if key == "fps" and value not in (25, 30):
                raise ParamError(f"fps must be 25 or 30, got {value}")
            if key in cls._RANGES:
                lo, hi = cls._RANGES[key]
                if not lo <= value <= hi:
                    raise ParamError(f"{key} must be in {lo:g}..{hi:g}, got {value:g}")
            values[key] = value
        return cls(**values)

    def controls(self) -> MotionControls:
        """The motion generator's controls for these parameters."""
        from realtime.generator import MotionControls

        return MotionControls(
            inference_steps=self.inference_steps,
            dynamic_scale=self.dynamic_scale,
            motion_scale=self.motion_scale,
            smooth_motion=self.smooth_motion,
            align_mouth=self.align_mouth,
            seed=self.seed,
        ).validated()

    def clip_duration(self, audio_seconds: float) -> float:
        """The video's duration: ``duration`` capped by the audio's length."""
        return audio_seconds if self.duration is None else min(self.duration, audio_seconds)


@dataclass(frozen=True)
class VideoResult:
    """What :func:`generate_video` wrote."""

    path: Path
    frames: int
    fps: int
    duration: float
    size: tuple[int, int]
    seconds: float  # wall time spent

    @property
    def speed(self) -> float:
        """Generation speed as a multiple of real time."""
        return self.duration / self.seconds if self.seconds > 0 else math.inf


def n_frames_for(duration: float, fps: int) -> int:
    """Video frames for ``duration`` seconds: frame n shows time n/fps, so ceil(duration * fps)."""
    return max(1, math.ceil(duration * fps - 1e-9))


# -- encoding ------------------------------------------------------------------------------------------
class Mp4Writer:
    """Streams I420 frames and the source audio into an MP4 (H.264 yuv420p + AAC, moov at the front).

    Audio is encoded alongside video, up to the time of each video frame, so the
    muxer interleaves without buffering. Writes to ``path`` as given (callers pass a
    temporary name and rename on success).
    """

    def __init__(
        self,
        path: Path,
        size: tuple[int, int],
        fps: int,
        clip: AudioClip,
        duration: float,
        *,
        preset: str = FAST,
        crf: int = 23,
    ) -> None:
        width, height = size
        if width % 2 or height % 2:
            raise ValueError(f"frame size must be even, got {width}x{height}")
        self.fps = fps
        self.size = size
        self.frames_written = 0
        self._container = av.open(str(path), mode="w", format="mp4", options={"movflags": "+faststart"})
        try:
            video = self._container.add_stream("libx264", rate=fps)
            video.width, video.height = width, height
            video.pix_fmt = "yuv420p"
            encoder = dict(_FAST_X264) if preset == FAST else {"preset": preset}
            video.codec_context.options = {**encoder, "crf": str(crf), "profile": "high"}
            video.thread_type = "AUTO"
            video.thread_count = 0
            self._video = video
            self._audio_iter, rate, layout = self._audio_source(clip, duration)
            audio = self._container.add_stream("aac", rate=rate, layout=layout)
            audio.bit_rate = 128_000 if layout == "stereo" else 64_000
            audio.codec_context.options = {"aac_coder": "fast"}  # the default two-loop coder costs 3x the CPU
            self._audio = audio
            self._audio_rate = rate
            self._audio_total = int(round(duration * rate))
            self._audio_sent = 0
            self._audio_time_base = Fraction(1, rate)
            self._video_time_base = Fraction(1, fps)
        except BaseException:
            self._container.close()
            raise

    @staticmethod
    def _audio_source(clip: AudioClip, duration: float) -> tuple[Iterator[av.AudioFrame], int, str]:
        """The sound track: the source file at its own rate when we have it, else the 16 kHz mono pcm."""
        if clip.path is not None and clip.path.exists():
            rate = clip.source_rate if clip.source_rate in _AAC_RATES else 48000
            layout = "stereo" if clip.source_channels >= 2 else "mono"
            total = int(round(duration * rate))
            return iter_source_frames(clip.path, rate=rate, layout=layout, max_samples=total), rate, layout
        total = int(round(duration * MODEL_RATE))
        return _pcm_frames(clip.pcm[:total], MODEL_RATE), MODEL_RATE, "mono"

    def _mux_audio_until(self, samples: int) -> None:
        samples = min(samples, self._audio_total)
        while self._audio_sent < samples:
            frame = next(self._audio_iter, None)
            if frame is None:
                # The source ended early (decoder padding differences): no more audio to write.
                self._audio_total = self._audio_sent
                return
            frame.pts = self._audio_sent
            frame.time_base = self._audio_time_base
            self._audio_sent += frame.samples
            for packet in self._audio.encode(frame):
                self._container.mux(packet)

    def write(self, yuv: np.ndarray) -> None:
        """Append one frame, an I420 array of shape (H * 3 // 2, W) as made by ``cv2.COLOR_RGB2YUV_I420``.

        The encoder reads ``yuv`` in place (no copy); the caller must not change it afterwards.
        """
        # Wrapping the buffer costs nothing; from_ndarray would copy it twice holding the GIL,
        # which the render threads need (a fifth of the GIL's busy time in a 512x512 job).
        frame = i420_frame(yuv)
        frame.pts = self.frames_written
        frame.time_base = self._video_time_base
        for packet in self._video.encode(frame):
            self._container.mux(packet)
        self.frames_written += 1
        self._mux_audio_until(math.ceil(self.frames_written * self._audio_rate / self.fps))

    def close(self) -> None:
        """Finish both streams and write the index (moved to the front of the file)."""
        self._mux_audio_until(self._audio_total)
        for packet in self._video.encode(None):
            self._container.mux(packet)
        for packet in self._audio.encode(None):
            self._container.mux(packet)
        self._container.close()

    def abort(self) -> None:
        """Close without finishing (the file is deleted by the caller)."""
        try:
            self._container.close()
        except (av.FFmpegError, OSError, ValueError):
            pass


def _pcm_frames(pcm: np.ndarray, rate: int, size: int = 1024) -> Iterator[av.AudioFrame]:
    """Mono float32 samples as AAC-sized audio frames."""
    for i in range(0, pcm.size, size):
        frame = av.AudioFrame.from_ndarray(
            np.ascontiguousarray(pcm[None, i : i + size], dtype=np.float32), format="fltp", layout="mono"
        )
        frame.sample_rate = rate
        yield frame


def i420_drawer(renderer: Any) -> Callable[[np.ndarray], list[np.ndarray]]:
    """A function that turns a chunk of motion rows into I420 frames for ``renderer``.

    With a renderer that can draw just its animated region (``render_region``), only that
    region is drawn and converted onto the photo's precomputed planes: no whole RGB frame
    is built, copied or read. Otherwise whole frames are rendered and converted, the
    region-only conversion checked once per chunk.
    """
    convert = I420Converter(renderer)
    region = getattr(renderer, "render_region", None)
    if region is not None and convert.box is not None:
        return lambda rows: [convert.region(region(m)) for m in rows]
    return lambda rows: [convert(renderer.render(m), check=(i == 0)) for i, m in enumerate(rows)]


def _rechunk(blocks: Iterable[np.ndarray], size: int) -> Iterator[np.ndarray]:
    """The rows of ``blocks`` regrouped into arrays of ``size`` rows (the last may be shorter)."""
    buf: list[np.ndarray] = []
    have = 0
    for block in blocks:
        i = 0
        while i < len(block):
            take = min(size - have, len(block) - i)
            buf.append(block[i : i + take])
            have += take
            i += take
            if have == size:
                yield np.concatenate(buf)
                buf, have = [], 0
    if have:
        yield np.concatenate(buf)


def render_frames(
    draw: Callable[[np.ndarray], list[np.ndarray]],
    motion: np.ndarray | Iterable[np.ndarray],
    executor: Executor,
    *,
    workers: int,
    pixels: int = 0,
    cancel: threading.Event | None = None,
) -> Iterator[np.ndarray]:
    """The frames ``draw`` makes for each motion row, in order, drawn in chunks on ``executor``.

    ``draw`` maps a chunk of rows to a list of frames (see :func:`i420_drawer`). ``motion``
    is one (n, N_CHANNELS) array or an iterable of consecutive blocks of rows (consumed as
    rendering proceeds). At most ``workers`` chunks are in flight, each drawn by one
    executor thread, so memory stays bounded and other users of the executor get a turn
    between chunks. The next chunks are submitted before a finished chunk's frames are
    handed on, so drawing goes on while they are encoded.
    """
    pending: deque[Future[list[np.ndarray]]] = deque()
    limit = max(1, workers)
    size = max(1, round(_CHUNK * 512 * 512 / pixels)) if pixels else _CHUNK
    chunks = _rechunk([motion] if isinstance(motion, np.ndarray) else motion, size)

    def refill() -> None:
        while len(pending) < limit:
            rows = next(chunks, None)
            if rows is None:
                return
            pending.append(executor.submit(draw, rows))

    try:
        refill()
        while pending:
            if cancel is not None and cancel.is_set():
                raise Cancelled()
            frames = pending.popleft().result()
            refill()
            yield from frames
    finally:
        for fut in pending:
            fut.cancel()


# -- the pipeline --------------------------------------------------------------------------------------
def block_seed(seed: int, block: int) -> int:
    """The sampler seed of motion block ``block`` of a long file (block 0 keeps ``seed``).

    Every block starts its sampler noise and blink process at its own frame 0, so with one seed
    for all of them a long file would repeat the same head motion and blink rhythm every block.
    """
    if block == 0:
        return int(seed)
    return int(np.random.SeedSequence([int(seed), int(block)]).generate_state(1)[0])


def motion_blocks(
    generate: Callable[[np.ndarray, Callable[[float], None], int], np.ndarray],
    pcm: np.ndarray,
    fps: int,
    n_frames: int,
    executor: Executor,
    *,
    block_s: int = MOTION_BLOCK_S,
    first_s: int = FIRST_BLOCK_S,
    progress: Callable[[int], None] | None = None,
    cancel: threading.Event | None = None,
) -> Iterator[np.ndarray]:
    """Motion for all of ``pcm`` as consecutive blocks of rows, ``n_frames`` rows in all.

    ``generate(segment, on_fraction, block)`` makes the motion of one audio segment (frame *j*
    shows segment time *j / fps*), the ``block``-th; it runs on ``executor``, one block ahead of
    the consumer. Blocks last ``first_s`` seconds, then twice as long each time up to
    ``block_s``. Block edges fall on whole seconds, so every segment starts exactly on a
    frame. ``progress`` gets the number of frames of motion made so far.
    """
    duration = pcm.size / MODEL_RATE
    edges, size = [0], max(1, min(first_s, block_s))
    while round((duration - edges[-1]) / size) >= 2:  # the last block is 0.5 to 1.5 times its size
        edges.append(edges[-1] + size)
        size = min(2 * size, block_s)
    n_blocks = len(edges)
    lead = _WARMUP_S + _FADE_S
    fade = _FADE_S * fps
    bounds: list[int | None] = [*edges, None]
    done = [0]

    def make(k: int) -> np.ndarray:
        start = 0 if k == 0 else (bounds[k] - lead) * MODEL_RATE  # type: ignore[operator]
        end = None if bounds[k + 1] is None else bounds[k + 1] * MODEL_RATE  # type: ignore[operator]
        segment = pcm[start:end]
        base = done[0]
        expected = math.ceil(segment.size * fps / MODEL_RATE)

        def on_fraction(fraction: float) -> None:
            if progress is not None:
                progress(base + int(min(max(fraction, 0.0), 1.0) * expected))

        out = np.asarray(generate(segment, on_fraction, k), dtype=np.float32)
        done[0] = base + len(out)
        return out

    emitted = 0
    tail: np.ndarray | None = None
    future = executor.submit(make, 0)
    try:
        for k in range(n_blocks):
            block = future.result()
            if k + 1 < n_blocks:
                if cancel is not None and cancel.is_set():
                    raise Cancelled()
                future = executor.submit(make, k + 1)
            if k > 0 and tail is not None:
                block = block[_WARMUP_S * fps :]
                w = ((np.arange(fade, dtype=np.float32) + 0.5) / fade)[:, None]
                block = np.concatenate([(1 - w) * tail + w * block[:fade], block[fade:]])
            if k + 1 < n_blocks:
                block, tail = block[:-fade], block[-fade:]
            block = block[: max(0, n_frames - emitted)]
            emitted += len(block)
            if len(block):
                yield block
    finally:
        future.cancel()
    if emitted < n_frames:  # the generator rounds like n_frames_for; hold the last pose if it ever differs
        yield _fit_frames(np.zeros((0, 0), np.float32) if emitted == 0 else block[-1:], n_frames - emitted)


def temp_path_for(out_path: Path) -> Path:
    """A hidden sibling name to write to before the atomic rename."""
    return out_path.with_name(f".{out_path.name}.{secrets.token_hex(4)}.part")


def generate_video(
    engine: Engine,
    clip: AudioClip,
    out_path: str | Path,
    params: GenerateParams = GenerateParams(),
    *,
    image: bytes | None = None,
    bundle: AvatarBundle | None = None,
    progress: Progress | None = None,
    cancel: threading.Event | None = None,
    preset: str = FAST,
) -> VideoResult:
    """Make the MP4 for ``clip`` and a portrait (``image`` bytes or a registered ``bundle``).

    Writes to a temporary name and renames on success; on any failure or
    cancellation the partial file is deleted. Call from a worker thread: this
    blocks, and hands model and render work to ``engine.executor``.
    """
    t0 = time.perf_counter()
    out_path = Path(out_path)
    report = progress or (lambda _f, _s: None)
    if bundle is None:
        if image is None:
            raise ValueError("generate_video needs an image or a bundle")
        report(0.0, "register")
        bundle = engine.executor.submit(engine.register, image, expand_ratio=params.expand_ratio).result()
    controls = params.controls()
    duration = params.clip_duration(clip.duration)
    n_frames = n_frames_for(duration, params.fps)
    pcm = clip.pcm[: int(round(duration * MODEL_RATE))]

    from realtime.generator import generate_motion, with_controls

    lock = threading.Lock()
    state = {"motion": 0, "encoded": 0}

    def emit(stage: str, **update: int) -> None:
        with lock:  # motion reports from an executor thread, rendering from this one
            state.update(update)
            fraction = (_MOTION_SHARE * state["motion"] + (1 - _MOTION_SHARE) * state["encoded"]) / n_frames
        report(min(fraction, 1.0), stage)

    def generate(segment: np.ndarray, on_fraction: Callable[[float], None], block: int) -> np.ndarray:
        seeded = with_controls(controls, seed=block_seed(controls.seed, block))
        return generate_motion(
            engine.motion_model, segment, MODEL_RATE, fps=params.fps, controls=seeded, progress=on_fraction
        )

    report(0.0, "motion")
    motion = motion_blocks(
        generate,
        pcm,
        params.fps,
        n_frames,
        engine.executor,
        progress=lambda frames: emit("motion", motion=frames),
        cancel=cancel,
    )

    renderer = engine.executor.submit(engine.renderer, bundle, params.min_resolution).result()
    # Draw in at most one thread fewer than there are cores: the job's thread and x264's encode on
    # the last one, and render threads beyond that only fight over the GIL (on 2 cores, one render
    # thread at a time made 512x512 ~21x real time, two 18-21x, for 10% more CPU).
    workers = max(1, min(getattr(engine.executor, "_max_workers", 2), (os.cpu_count() or 2) - 1))
    out_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_path_for(out_path)
    writer: Mp4Writer | None = None
    try:
        writer = Mp4Writer(tmp, renderer.size, params.fps, clip, duration, preset=preset)
        step = max(1, n_frames // 200)
        for i, yuv in enumerate(
            render_frames(
                i420_drawer(renderer),
                motion,
                engine.executor,
                workers=workers,
                pixels=renderer.size[0] * renderer.size[1],
                cancel=cancel,
            )
        ):
            writer.write(yuv)
            if i % step == 0:
                emit("render", encoded=i)
        writer.close()
        writer = None
        os.replace(tmp, out_path)
    except BaseException:
        if writer is not None:
            writer.abort()
        tmp.unlink(missing_ok=True)
        raise
    report(1.0, "done")
    return VideoResult(
        path=out_path,
        frames=n_frames,
        fps=params.fps,
        duration=duration,
        size=tuple(renderer.size),
        seconds=time.perf_counter() - t0,
    )


def _fit_frames(motion: np.ndarray, n_frames: int) -> np.ndarray:
    """Exactly ``n_frames`` rows: trim, or hold the last frame (the generator rounds the same way)."""
    if len(motion) >= n_frames:
        return motion[:n_frames]
    if len(motion) == 0:
        from realtime.motion import neutral

        return np.repeat(neutral()[None, :], n_frames, axis=0).astype(np.float32)
    pad = np.repeat(motion[-1:], n_frames - len(motion), axis=0)
    return np.concatenate([motion, pad])


# -- CLI -----------------------------------------------------------------------------------------------
_IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".webp"}


def _load_params(text: str | None, seed: int | None) -> GenerateParams:
    data: dict[str, Any] = {}
    if text:
        candidate = Path(text)
        source = candidate.read_text() if not text.lstrip().startswith("{") and candidate.is_file() else text
        try:
            data = json.loads(source)
        except json.JSONDecodeError as exc:
            raise ParamError(f"--config is neither a JSON object nor a JSON file: {exc}") from None
        if not isinstance(data, dict):
            raise ParamError("--config must be a JSON object")
    if seed is not None:
        data["seed"] = seed
    return GenerateParams.from_mapping(data)


def _audio_files(folder: Path) -> list[Path]:
    """Files in ``folder`` that are audio by content, sorted by name."""
    found = []
    for p in sorted(folder.iterdir()):
        if p.is_file() and not p.name.startswith("."):
            with p.open("rb") as fh:
                if sniff_audio(fh.read(64)):
                    found.append(p)
    return found


def plan_batch(image: Path, audio: Path, output: Path) -> list[tuple[Path, Path, Path]]:
    """(image, audio, output) triples for one pair, one image x a folder of audio, or pairs by name.

    - file + file: ``output`` is the MP4 path (or a folder to put ``<audio stem>.mp4`` in);
    - image file + audio folder: one MP4 per audio file, ``output/<audio stem>.mp4``;
    - image folder + audio file: one MP4 per image, ``output/<image stem>.mp4``;
    - image folder + audio folder: pairs with the same stem, ``output/<stem>.mp4``.
    """
    if image.is_file() and audio.is_file():
        if output.is_dir():
            output = output / f"{audio.stem}.mp4"
        return [(image, audio, output)]
    if output.exists() and not output.is_dir():
        raise ValueError(f"--output must be a folder in batch mode: {output}")
    if image.is_file() and audio.is_dir():
        return [(image, a, output / f"{a.stem}.mp4") for a in _audio_files(audio)]
    images = (
        sorted(p for p in image.iterdir() if p.suffix.lower() in _IMAGE_SUFFIXES) if image.is_dir() else []
    )
    if image.is_dir() and audio.is_file():
        return [(i, audio, output / f"{i.stem}.mp4") for i in images]
    if image.is_dir() and audio.is_dir():
        by_stem = {a.stem: a for a in _audio_files(audio)}
        return [(i, by_stem[i.stem], output / f"{i.stem}.mp4") for i in images if i.stem in by_stem]
    missing = image if not image.exists() else audio
    raise FileNotFoundError(f"not found: {missing}")


def cli_main(argv: list[str]) -> int:
    """``avatar generate``: image + audio -> MP4 (or a folder of them)."""
    parser = argparse.ArgumentParser(
        prog="avatar generate",
        description="Make a talking-head MP4 (H.264 + AAC) from a portrait and an audio file. "
        "Batch: give a folder for --audio (one video per audio file), for --image (one per image), "
        "or for both (pairs matched by file name stem); --output is then a folder.",
    )
    parser.add_argument("--image", type=Path, required=True, help="portrait (PNG/JPEG/WebP) or a folder")
    parser.add_argument("--audio", type=Path, required=True, help="WAV/MP3/OGG/FLAC/M4A or a folder")
    parser.add_argument("--output", type=Path, required=True, help="output .mp4, or a folder in batch mode")
    parser.add_argument(
        "--config", default=None, help="generation config: JSON ('{\"min_resolution\": 512}') or a JSON file"
    )
    parser.add_argument("--seed", type=int, default=None, help="random seed (overrides the config's)")
    parser.add_argument(
        "--preset",
        default=FAST,
        help="'fast' (default: tuned veryfast) or an x264 preset (ultrafast..medium)",
    )
    parser.add_argument("--settings", type=Path, default=None, help="server TOML (default: config.toml)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")

    from tqdm import tqdm

    from realtime.config import load_config
    from realtime.engine import Engine

    try:
        params = _load_params(args.config, args.seed)
        config = load_config(args.settings, args.overrides)
        plan = plan_batch(args.image, args.audio, args.output)
    except (ValueError, OSError) as exc:
        print(f"avatar generate: {exc}", file=sys.stderr)
        return 2
    if not plan:
        print("avatar generate: no matching image/audio files found", file=sys.stderr)
        return 2

    engine = Engine(config)
    failures = 0
    try:
        try:
            engine.motion_model  # load once up front, so per-file times are generation times  # noqa: B018
        except (OSError, ValueError) as exc:
            print(f"avatar generate: cannot load the motion model: {exc}", file=sys.stderr)
            return 2
        for k, (image, audio, output) in enumerate(plan, 1):
            label = f"[{k}/{len(plan)}] {output.name}" if len(plan) > 1 else output.name
            bar = tqdm(total=100, desc=label, unit="%", disable=args.quiet, file=sys.stderr, leave=True)
            done = [0.0]

            def progress(fraction: float, _stage: str, bar: Any = bar, done: list[float] = done) -> None:
                target = round(100 * fraction, 1)
                if target > done[0]:
                    bar.update(target - done[0])
                    done[0] = target

            try:
                clip = decode_audio(
                    audio,
                    max_bytes=config.offline.max_audio_bytes,
                    max_seconds=config.offline.max_audio_seconds,
                )
                result = generate_video(
                    engine,
                    clip,
                    output,
                    params,
                    image=image.read_bytes(),
                    progress=progress,
                    preset=args.preset,
                )
            except (ValueError, OSError) as exc:  # MediaError, AvatarError, ParamError are ValueErrors
                bar.close()
                code = getattr(exc, "code", None)
                print(
                    f"avatar generate: {image.name} + {audio.name}: {exc}" + (f" ({code})" if code else ""),
                    file=sys.stderr,
                )
                failures += 1
                continue
            bar.close()
            print(
                f"{result.path}: {result.frames} frames, {result.size[0]}x{result.size[1]} @ {result.fps} fps, "
                f"{result.duration:.2f} s in {result.seconds:.1f} s ({result.speed:.1f}x real time)"
            )
    finally:
        engine.close()
    return 1 if failures else 0


__all__ = [
    "Cancelled",
    "GenerateParams",
    "MediaError",
    "Mp4Writer",
    "ParamError",
    "VideoResult",
    "cli_main",
    "generate_video",
    "i420_drawer",
    "n_frames_for",
    "plan_batch",
    "render_frames",
]
