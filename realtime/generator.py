"""Audio -> motion: the shared model (:class:`MotionModel`), per-session streams, whole files.

Streaming (:class:`MotionStream`)
    Frame ``n`` shows audio time ``n / fps``. It is generated once the audio up to
    ``n / fps + lookahead_ms`` has arrived, in chunks of ``chunk_frames`` frames (default 1: 40 ms
    at 25 fps, 33 ms at 30 fps), so ``latency_ms = chunk_frames * 1000 / fps + lookahead_ms``
    (100 ms at 25 fps) plus any negative ``align_mouth``. Each chunk is one window: the last
    ``context_frames`` generated frames (known, inpainted) plus the new frames, denoised by the
    flow-matching sampler in ``inference_steps`` steps; the mouth channels are the clean estimate of
    the first step (the audio-conditioned mean, see ``MotionConfig.mouth_first_estimate``), brows
    and head use every step. Blinks come from the training targets' stochastic blink process run
    causally per stream (``realtime.targets.BlinkTrack``: renewal blinks plus blinks at pauses of the
    frames' speech flags, seeded by the session seed; ``MotionConfig.blink_process``), because
    few-step sampling averages those rare events away. Emitted frames never change. The initial
    noise of frame ``n`` is drawn from ``default_rng([seed, n])`` (mouth channels scaled by the
    model's ``mouth_temperature``: mouth targets are deterministic given the phones, so their
    sampling noise is only jitter), so output depends on the seed and the audio, never on how the
    audio was chunked into ``push`` calls.

Stability
    Head pose is anchored: a 4 s running mean of the generated pose is subtracted before a frame
    is kept as context, so hours of audio cannot drift; all channels are clipped to the contract's
    ranges before they are fed back.

Controls (applied after generation, per stream, causally)
    * ``dynamic_scale`` s: classifier-free guidance on the 14 mouth channels,
      ``v = v_null + w (v_audio - v_null)`` with ``w = s * guidance_scale`` for whole files and
      ``w = s * stream_guidance_scale`` for streams (model constants chosen on validation data: the
      weight that makes the mouth open as far as the targets do; a stream lacks the later frames'
      audio and needs more); the null-audio embedding was trained on windows whose mouth is at
      rest, so 0 gives a closed mouth, 1 the calibrated model, 2 exaggerated articulation. At w = 1
      the null pass is skipped; otherwise it runs in the first sampler call only, whose mouth is kept.
    * ``motion_scale``: multiplies head pose, brows and blinks (then clipped).
    * ``smooth_motion`` m: a one-pole low-pass with time constant ``60 m`` ms on every channel; its
      group delay (the visual lag it adds) is at most ``60 m`` ms. It adds no emission delay.
    * ``align_mouth`` d ms: mouth channels show the generated mouth of time ``t - d`` (positive =
      later, from frames already generated; negative = earlier, which holds frames back by
      ``ceil(-d fps / 1000)`` frames and adds that to ``latency_ms``).
"""

from __future__ import annotations

import json
import math
import threading
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from realtime.config import MODEL_BACKENDS, MODEL_PRECISIONS
from realtime.features import (
    HOP,
    N_MELS,
    SAMPLE_RATE,
    SILENT_FEATURE,
    FeatureExtractor,
    LevelState,
    StreamResampler,
    frame_windows,
    last_mel_index,
    resample,
    sanitize,
)
from realtime.motion import (
    CHANNEL_INDEX,
    CONTROL_RANGES,
    MOUTH_CHANNELS,
    N_CHANNELS,
    POSE_CHANNELS,
    MotionFrame,
    clip_motion,
    neutral,
)
from realtime.sampling import MAX_STEPS, linear_ts, sample_euler
from realtime.targets import BlinkTrack, HeadTrack

MOUTH = np.arange(len(MOUTH_CHANNELS))
POSE = np.array([CHANNEL_INDEX[c] for c in POSE_CHANNELS])
BLINKS = np.array([CHANNEL_INDEX["eyeBlinkLeft"], CHANNEL_INDEX["eyeBlinkRight"]])
EXPRESSIVE = np.array(
    [
        CHANNEL_INDEX[c]
        for c in ("eyeBlinkLeft", "eyeBlinkRight", "browInnerUp", "browOuterUpLeft", "browOuterUpRight")
    ]
    + list(POSE)
)
ANCHOR_S = 4.0  # time constant of the pose anchor
SMOOTH_TAU_S = 0.06  # smooth_motion = 1 -> one-pole low-pass with this time constant
SPEECH_REL = -3.5  # frame energy within ~15 dB of the running speech level counts as speech
# After this long without speech the mouth is released to rest with this time constant. Longer
# than a stop closure or a short pause inside a phrase, so speech itself is never touched.
MOUTH_REST_AFTER_S = 0.2
MOUTH_RELEASE_S = 0.06
# After this long without speech the mouth gain is below 0.007 (exp(-5)): the network's mouth no
# longer shows. With blinks and head from their processes only its brows would, and those hold
# still in silence (std 0.003), so windows wholly in such a pause skip the denoiser (idle).
IDLE_AFTER_S = MOUTH_REST_AFTER_S + 5 * MOUTH_RELEASE_S
FPS_RANGE = (10, 60)
ONNX_AUDIO = "audio_encoder.onnx"
ONNX_DENOISER = "denoiser.onnx"
# The denoiser with int8 weights (realtime.export.quantize_denoiser): about half the CPU time a call,
# lip sync equal on the held-out test split (docs/bench/eval.md). CPU only; GPUs run the float graph.
ONNX_DENOISER_INT8 = "denoiser_int8.onnx"
WEIGHTS = "motion.pt"
CONFIG = "config.json"


@dataclass(frozen=True)
class MotionControls:
    """Per-session generation controls (names as in the seed API)."""

    inference_steps: int | None = None  # 1..8; None = the model's default (<= 4)
    dynamic_scale: float = 1.0  # 0..2, audio classifier-free guidance (mouth strength)
    motion_scale: float = 1.0  # 0..2, amplitude of head, brow and blink motion
    smooth_motion: float = 0.0  # 0..1, temporal smoothing of the output
    align_mouth: float = 0.0  # ms, -200..200, shifts mouth timing (A/V calibration)
    seed: int = 0

    def validated(self) -> MotionControls:
        """This object if every value is in range, else ``ValueError`` naming the control."""
        steps = self.inference_steps
        if steps is not None and (isinstance(steps, bool) or not isinstance(steps, int | np.integer)):
            raise ValueError(f"inference_steps must be an integer in 1..{MAX_STEPS}, got {steps!r}")
        if steps is not None and not 1 <= steps <= MAX_STEPS:
            raise ValueError(f"inference_steps must be in 1..{MAX_STEPS}, got {steps!r}")
        for name in ("dynamic_scale", "motion_scale", "smooth_motion", "align_mouth"):
            lo, hi = CONTROL_RANGES[name]
            v = getattr(self, name)
            if (
                isinstance(v, bool)
                or not isinstance(v, int | float | np.floating | np.integer)
                or not math.isfinite(v)
            ):
                raise ValueError(f"{name} must be a number in {lo:g}..{hi:g}, got {v!r}")
            if not lo <= v <= hi:
                raise ValueError(f"{name} must be in {lo:g}..{hi:g}, got {v!r}")
        seed_lo, seed_hi = CONTROL_RANGES["seed"]
        if (
            isinstance(self.seed, bool)
            or not isinstance(self.seed, int | np.integer)
            or not seed_lo <= self.seed <= seed_hi
        ):
            raise ValueError(f"seed must be an integer in {seed_lo}..{seed_hi}, got {self.seed!r}")
        return self


# --------------------------------------------------------------------------------------------------
# Backends: numpy in, numpy out, thread-safe.


class _TorchBackend:
    name = "torch"

    def __init__(self, net: Any) -> None:
        import torch

        self._torch = torch
        self.net = net.eval()

    def encode_audio(self, windows: np.ndarray) -> np.ndarray:
        with self._torch.no_grad():
            return self.net.encode_audio(self._torch.from_numpy(windows)).numpy()

    def velocity(
        self, x: np.ndarray, t: np.ndarray, ctx: np.ndarray, mask: np.ndarray, audio: np.ndarray
    ) -> np.ndarray:
        th = self._torch
        with th.no_grad():
            v = self.net(
                th.from_numpy(x),
                th.from_numpy(t),
                th.from_numpy(ctx),
                th.from_numpy(mask),
                th.from_numpy(audio),
            )
        return v.numpy()


class _OrtBackend:
    def __init__(self, folder: Path, providers: list[str] | None = None, precision: str = "auto") -> None:
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.intra_op_num_threads = 1  # one thread per call: sessions scale by the executor, not by threads
        opts.inter_op_num_threads = 1
        opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        opts.log_severity_level = 3
        available = ort.get_available_providers()
        if providers is None:
            providers = [p for p in ("CUDAExecutionProvider", "CPUExecutionProvider") if p in available]
        self.providers = providers
        self.audio = ort.InferenceSession(str(folder / ONNX_AUDIO), opts, providers=providers)
        if precision == "auto":
            # int8 matmuls pay on CPU; CUDA has no fast kernels for the dynamically quantized graph.
            # The providers the session really got: onnxruntime-gpu on a host without a usable GPU
            # lists CUDA as available but runs on CPU.
            on_cpu = self.audio.get_providers() == ["CPUExecutionProvider"]
            precision = "int8" if on_cpu and (folder / ONNX_DENOISER_INT8).is_file() else "fp32"
        self.precision = precision
        self.name = "onnx-int8" if precision == "int8" else "onnx"
        denoiser = folder / (ONNX_DENOISER_INT8 if precision == "int8" else ONNX_DENOISER)
        if not denoiser.is_file():
            raise FileNotFoundError(f"precision={precision!r} but {folder} has no {denoiser.name}")
        self.denoiser = ort.InferenceSession(str(denoiser), opts, providers=providers)

    def encode_audio(self, windows: np.ndarray) -> np.ndarray:
        return self.audio.run(None, {"windows": windows})[0]

    def velocity(
        self, x: np.ndarray, t: np.ndarray, ctx: np.ndarray, mask: np.ndarray, audio: np.ndarray
    ) -> np.ndarray:
        return self.denoiser.run(None, {"x": x, "t": t, "ctx": ctx, "mask": mask, "audio": audio})[0]


class MotionModel:
    """The motion model's weights, shared by every session; inference is thread-safe."""

    def __init__(self, net: Any, backend: Any, path: Path | None = None) -> None:
        from realtime.model import MotionConfig

        self.net = net
        self.config: MotionConfig = net.config
        self.backend = backend
        self.path = path
        self.default_steps: int = int(self.config.default_steps)
        self.lookahead_ms: float = float(self.config.lookahead_ms)
        buf = {k: v.detach().cpu().numpy().astype(np.float32) for k, v in net.named_buffers()}
        self.motion_mean: np.ndarray = buf["motion_mean"]
        self.motion_std: np.ndarray = buf["motion_std"]
        self.null_audio: np.ndarray = net.null_audio.detach().cpu().numpy().astype(np.float32)
        self._warm = threading.Lock()
        # What every stream's context starts as (see _Core): the rest pose, normalised, over the
        # embedding of digital silence. Computed once here, not for every session and file block.
        self.rest_frame = ((neutral() - self.motion_mean) / self.motion_std).astype(np.float32)
        silent = np.full((1, self.config.audio_frames, N_MELS), SILENT_FEATURE, np.float32)
        self.silent_audio = np.asarray(self.encode_audio(silent), np.float32)[0]

    @classmethod
    def load(
        cls, path: str | Path = "models/motion", backend: str = "auto", precision: str = "auto"
    ) -> MotionModel:
        """Load ``config.json`` + ``motion.pt`` (and the ONNX files for the onnx backend).

        ``precision`` picks the onnx denoiser: ``int8`` weights, ``fp32``, or ``auto`` (int8 when
        onnxruntime runs on CPU only and the file exists). The torch backend is always float.
        """
        import torch

        from realtime.model import MotionConfig, MotionDenoiser

        if backend not in MODEL_BACKENDS:
            raise ValueError(f"backend must be 'auto', 'onnx' or 'torch', got {backend!r}")
        if precision not in MODEL_PRECISIONS:
            raise ValueError(f"precision must be one of {', '.join(MODEL_PRECISIONS)}, got {precision!r}")
        folder = Path(path)
        if not (folder / CONFIG).is_file() or not (folder / WEIGHTS).is_file():
            raise FileNotFoundError(
                f"no motion model in {folder} (expected {CONFIG} and {WEIGHTS}; run 'avatar train')"
            )
        meta = json.loads((folder / CONFIG).read_text())
        net = MotionDenoiser(MotionConfig.from_dict(meta["config"]))
        net.load_state_dict(torch.load(folder / WEIGHTS, map_location="cpu", weights_only=True))
        net.eval()
        has_onnx = (folder / ONNX_AUDIO).is_file() and (folder / ONNX_DENOISER).is_file()
        if backend == "onnx" and not has_onnx:
            raise FileNotFoundError(f"backend='onnx' but {folder} has no {ONNX_AUDIO}/{ONNX_DENOISER}")
        use_onnx = backend == "onnx" or (backend == "auto" and has_onnx and _has_onnxruntime())
        if not use_onnx:
            # torch's intra-op thread pool spins: with several threads per call on a shared CPU a
            # 1 ms window takes 100 ms. Sessions run in parallel on the executor instead.
            torch.set_num_threads(1)
        impl: Any = _OrtBackend(folder, precision=precision) if use_onnx else _TorchBackend(net)
        return cls(net, impl, folder)

    @classmethod
    def from_module(cls, net: Any) -> MotionModel:
        """Wrap an in-memory :class:`~realtime.model.MotionDenoiser` (training, tests)."""
        return cls(net, _TorchBackend(net))

    @property
    def backend_name(self) -> str:
        return str(self.backend.name)

    def warmup(self) -> None:
        """Run one streaming chunk so first-call allocations happen before the first session."""
        with self._warm:
            stream = MotionStream(self, fps=25)
            stream.push(np.zeros(SAMPLE_RATE // 5, np.float32))

    # -- inference ---------------------------------------------------------------------------------
    def encode_audio(self, windows: np.ndarray) -> np.ndarray:
        """(n, audio_frames, n_mels) mel windows -> (n, hidden) audio embeddings (batched)."""
        if len(windows) == 0:
            return np.zeros((0, self.config.hidden), np.float32)
        outs = [
            self.backend.encode_audio(np.ascontiguousarray(windows[i : i + 4096], np.float32))
            for i in range(0, len(windows), 4096)
        ]
        return np.concatenate(outs).astype(np.float32)

    def sample_window(
        self,
        ctx: np.ndarray,
        audio: np.ndarray,
        noise: np.ndarray,
        steps: int,
        dynamic_scale: float,
        guidance_scale: float | None = None,
    ) -> np.ndarray:
        """Generate the new frames of one window, all normalised.

        ctx: (c, C) known frames; audio: (c + n, H) embeddings of context and new frames;
        noise: (n, C) initial noise of the new frames -> (n, C). ``guidance_scale``: the guidance
        weight at dynamic_scale 1 (default: the model's whole-file ``guidance_scale``).
        """
        c, n = len(ctx), len(noise)
        x0 = np.concatenate([np.zeros_like(ctx), noise])[None].astype(np.float32)
        ctx_full = np.concatenate([ctx, np.zeros_like(noise)])[None].astype(np.float32)
        mask = np.zeros((1, c + n, 1), np.float32)
        mask[:, :c] = 1.0
        audio = audio[None].astype(np.float32)
        scale = self.config.guidance_scale if guidance_scale is None else guidance_scale
        weight = float(dynamic_scale) * float(scale)
        guided = abs(weight - 1.0) > 1e-6
        if guided:
            null = np.broadcast_to(self.null_audio, audio.shape)
            audio = np.concatenate([audio, null]).astype(np.float32)
            ctx_full = np.concatenate([ctx_full, ctx_full])
            mask = np.concatenate([mask, mask])
        backend = self.backend

        def velocity(x: np.ndarray, t: float, guide: bool = guided) -> np.ndarray:
            if guide:
                xx = np.concatenate([x, x])
                v = backend.velocity(xx, np.full(2, t, np.float32), ctx_full, mask, audio)
                cond, null_v = v[:1], v[1:]
                out = cond.copy()
                out[..., MOUTH] = null_v[..., MOUTH] + weight * (cond[..., MOUTH] - null_v[..., MOUTH])
                return out
            return backend.velocity(x, np.full(1, t, np.float32), ctx_full[:1], mask[:1], audio[:1])

        ts = linear_ts(steps)
        if not self.config.mouth_first_estimate:
            return np.asarray(sample_euler(velocity, x0, ts)[0, c:], np.float32)
        # The first call's clean estimate x0 + (1 - t0) v0 is the mouth's output; the remaining
        # steps (none for steps=1, where the two coincide) refine the stochastic channels.
        # Guidance acts on the mouth channels only, and only this call's mouth is kept: the later
        # calls run unguided, at half the cost (one batch row instead of two).
        v0 = velocity(x0, float(ts[0]))
        mouth = x0[..., MOUTH] + (1.0 - float(ts[0])) * v0[..., MOUTH]
        x = sample_euler(
            lambda x, t: velocity(x, t, guide=False), x0 + (float(ts[1]) - float(ts[0])) * v0, ts[1:]
        )
        x = np.array(x, np.float32)
        x[..., MOUTH] = mouth
        return np.asarray(x[0, c:], np.float32)


def _has_onnxruntime() -> bool:
    try:
        import onnxruntime  # noqa: F401
    except ImportError:
        return False
    return True


# --------------------------------------------------------------------------------------------------
# Per-stream state shared by streaming and whole-file generation.


class _Core:
    """Window state: context frames, their audio embeddings, the pose anchor; one per stream."""

    def __init__(self, model: MotionModel, fps: int, seed: int, *, stream: bool = False) -> None:
        self.model = model
        self.fps = fps
        self.seed = seed
        cfg = model.config
        self.guidance = cfg.stream_guidance_scale if stream else cfg.guidance_scale
        c = model.config.context_frames
        self.ctx: deque[np.ndarray] = deque(maxlen=c)  # normalised, anchored frames
        self.ctx_audio: deque[np.ndarray] = deque(maxlen=c)
        # Start from a full context of rest frames over silence, as after a pause. With an empty
        # context the first streamed windows are single frames, unlike any training window, and the
        # first-step mouth estimate settled on an open funnel that the context then kept for as long
        # as the silence lasted (measured: mouthFunnel 0.33 through 6 s of streamed silence).
        self.ctx.extend([model.rest_frame] * c)
        self.ctx_audio.extend([model.silent_audio] * c)
        self.anchor = np.zeros(len(POSE))
        self.anchor_alpha = 1.0 - math.exp(-1.0 / (fps * ANCHOR_S))
        self.blinks = BlinkTrack(seed, fps) if model.config.blink_process else None
        self.head = HeadTrack(seed, fps) if model.config.head_process else None
        self.quiet = 10**9  # frames since the last speech frame: the stream starts in silence
        self.rest_after = MOUTH_REST_AFTER_S * fps
        self.release = 1.0 / (MOUTH_RELEASE_S * fps)
        self.mouth_rest = neutral()[MOUTH]
        # idle windows need every channel the network would still show to come from elsewhere
        self.idle_after = (
            IDLE_AFTER_S * fps if self.blinks is not None and self.head is not None else math.inf
        )
        self.idle_frames = 0  # frames made without the denoiser

    def mouth_gain(self, speech: bool) -> float:
        """1 in speech and shortly after it, then decaying to 0 (mouth at rest) in silence."""
        self.quiet = 0 if speech else self.quiet + 1
        return math.exp(-max(0.0, self.quiet - self.rest_after) * self.release)

    def noise(self, first: int, n: int) -> np.ndarray:
        """Initial noise of frames first..first+n-1: a function of (seed, frame index) only."""
        z = np.stack(
            [np.random.default_rng([self.seed, first + i]).standard_normal(N_CHANNELS) for i in range(n)]
        )
        z[:, MOUTH] *= self.model.config.mouth_temperature
        return z.astype(np.float32)

    def generate(
        self, first: int, audio: np.ndarray, levels: np.ndarray, steps: int, dynamic_scale: float
    ) -> np.ndarray:
        """Frames first..first+len(audio)-1 from their embeddings and :func:`speech_levels` -> (n, C) motion.

        Denormalised. With the blink process, the blink channels are replaced after the frame is
        kept as context: the network sees its own blinks, so its other channels do not change.
        The head process likewise (its nods follow the levels).
        """
        speech = levels > SPEECH_REL
        m = self.model
        n = len(audio)
        if self.quiet >= self.idle_after and not speech.any():
            return self._idle(first, audio, levels, speech)
        ctx = np.array(self.ctx, np.float32).reshape(-1, N_CHANNELS)
        ctx_a = np.array(self.ctx_audio, np.float32).reshape(-1, audio.shape[1])
        z = m.sample_window(
            ctx, np.concatenate([ctx_a, audio]), self.noise(first, n), steps, dynamic_scale, self.guidance
        )
        raw = z * m.motion_std + m.motion_mean
        out = np.empty_like(raw)
        for i in range(n):  # anchor + clip frame by frame: what is fed back must stay in range
            frame = raw[i].astype(np.float64)
            self.anchor += self.anchor_alpha * (frame[POSE] - self.anchor)
            frame[POSE] -= self.anchor
            # In silence the first-step mouth follows the context: after speech it could hold an
            # open mouth for as long as the silence lasted (up to 0.6 with 6 of 12
            # seeds). Releasing it here also puts the closed mouth into the context, so it stays.
            gain = self.mouth_gain(bool(speech[i]))
            frame[MOUTH] = self.mouth_rest + gain * (frame[MOUTH] - self.mouth_rest)
            frame = clip_motion(frame)
            out[i] = frame
            self.ctx.append(((frame - m.motion_mean) / m.motion_std).astype(np.float32))
            self.ctx_audio.append(audio[i])
        return self._processes(out, first, speech, levels)

    def _idle(self, first: int, audio: np.ndarray, levels: np.ndarray, speech: np.ndarray) -> np.ndarray:
        """A window deep in a pause: the last context frame held, mouth at rest, no denoiser call.

        What the network would add here is a mouth the gain discards and brows that hold still.
        The held frame goes into the context, as the network's own would, so the first window of
        the next word starts from a still, closed face, like the start of a stream.
        """
        m = self.model
        held = self.ctx[-1]
        frame = (held * m.motion_std + m.motion_mean).astype(np.float64)
        frame[MOUTH] = self.mouth_rest
        frame = clip_motion(frame)
        out = np.repeat(frame[None].astype(np.float32), len(audio), axis=0)
        for i in range(len(audio)):
            self.mouth_gain(False)
            self.ctx.append(held)
            self.ctx_audio.append(audio[i])
        self.idle_frames += len(audio)
        return self._processes(out, first, speech, levels)

    def _processes(self, out: np.ndarray, first: int, speech: np.ndarray, levels: np.ndarray) -> np.ndarray:
        """Blinks and head from their processes, after the network's frames were kept as context."""
        if self.blinks is not None:
            out[:, BLINKS] = self.blinks.values(first, speech)
        if self.head is not None:
            out[:, POSE] = self.head.values(speech, levels)
        return out


class _Post:
    """Controls applied to generated frames, causally: align_mouth, motion_scale, smooth_motion."""

    def __init__(self, fps: int, controls: MotionControls) -> None:
        self.fps = fps
        self.shift = controls.align_mouth * fps / 1000.0  # in frames; positive = show later
        self.hold = max(0, math.ceil(-self.shift - 1e-9))  # frames held back for negative alignment
        self.back = max(0, math.ceil(self.shift)) + 1
        self.scale = float(controls.motion_scale)
        tau = controls.smooth_motion * SMOOTH_TAU_S
        self.alpha = 1.0 if tau <= 0 else 1.0 - math.exp(-1.0 / (fps * tau))
        self.raw: deque[np.ndarray] = deque(maxlen=self.back + self.hold + 2)
        self.raw_first = 0  # index of self.raw[0]
        self.n_raw = 0
        self.n_out = 0
        self.state: np.ndarray | None = None

    def reset_index(self, index: int) -> None:
        """Drop held frames; the next raw frame has index ``index`` (history kept for continuity)."""
        self.n_raw = self.n_out = index
        self.raw_first = index - len(self.raw)

    def push(self, frames: np.ndarray) -> np.ndarray:
        out = []
        for f in frames:
            self.raw.append(f)
            self.n_raw += 1
            self.raw_first = self.n_raw - len(self.raw)
            while self.n_out + self.hold < self.n_raw:
                out.append(self._emit(self.n_out))
                self.n_out += 1
        return np.array(out, np.float32).reshape(-1, N_CHANNELS)

    def _at(self, i: int) -> np.ndarray:
        j = min(max(i - self.raw_first, 0), len(self.raw) - 1)
        return self.raw[j]

    def _emit(self, n: int) -> np.ndarray:
        frame = self._at(n).astype(np.float64).copy()
        if self.shift != 0.0:
            pos = n - self.shift
            lo = math.floor(pos)
            w = pos - lo
            frame[MOUTH] = (1.0 - w) * self._at(lo)[MOUTH] + w * self._at(lo + 1)[MOUTH]
        if self.scale != 1.0:
            frame[EXPRESSIVE] *= self.scale
        if self.alpha < 1.0:
            self.state = frame if self.state is None else self.state + self.alpha * (frame - self.state)
            frame = self.state.copy()
        return clip_motion(frame)


class MotionStream:
    """One session's streaming generator: push audio, get final motion frames."""

    def __init__(
        self,
        model: MotionModel,
        fps: int = 25,
        controls: MotionControls = MotionControls(),  # noqa: B008 - frozen dataclass
        *,
        chunk_frames: int | None = None,
    ) -> None:
        if (
            isinstance(fps, bool)
            or not isinstance(fps, int | np.integer)
            or not FPS_RANGE[0] <= fps <= FPS_RANGE[1]
        ):
            raise ValueError(f"fps must be an integer in {FPS_RANGE[0]}..{FPS_RANGE[1]}, got {fps!r}")
        if chunk_frames is None:
            chunk_frames = min(int(model.config.stream_chunk_frames), max(1, int(0.08 * fps)))
        if not isinstance(chunk_frames, int) or not 1 <= chunk_frames <= max(1, int(0.08 * fps)):
            raise ValueError(
                f"chunk_frames must be 1..{max(1, int(0.08 * fps))} (<= 80 ms), got {chunk_frames!r}"
            )
        self.model = model
        self.fps = int(fps)
        self.chunk_frames = chunk_frames
        self.controls = controls.validated()
        self.steps = int(self.controls.inference_steps or model.default_steps)
        self._level = LevelState()
        self._core = _Core(model, self.fps, int(self.controls.seed), stream=True)
        self._post = _Post(self.fps, self.controls)
        self.frames_emitted = 0
        self._speech: dict[int, bool] = {}
        self._resampler: StreamResampler | None = None
        self._new_segment(0)

    @property
    def idle_frames(self) -> int:
        """Frames made deep in pauses without the denoiser (see ``IDLE_AFTER_S``)."""
        return self._core.idle_frames

    @property
    def latency_ms(self) -> float:
        """Worst-case algorithmic delay from a sample's arrival to the frame showing it."""
        return (
            self.chunk_frames * 1000.0 / self.fps
            + self.model.lookahead_ms
            + self._post.hold * 1000.0 / self.fps
        )

    def _new_segment(self, first_frame: int) -> None:
        self._fe = FeatureExtractor(self._level)
        self._seg_first = first_frame  # frame index shown at the segment's first sample
        self._next = first_frame  # next frame to generate
        self._mel = np.zeros((0, N_MELS), np.float32)
        self._rel = np.zeros(0, np.float32)
        self._mel_base = 0  # segment mel index of self._mel[0]
        self._samples = 0  # 16 kHz samples of this segment

    def _ingest(self, x16: np.ndarray) -> None:
        if x16.size == 0:
            return
        self._samples += x16.size
        mel, rel = self._fe.push(x16)
        if len(mel):
            self._mel = np.concatenate([self._mel, mel])
            self._rel = np.concatenate([self._rel, rel])

    def push(self, pcm: np.ndarray, sample_rate: int = SAMPLE_RATE) -> list[MotionFrame]:
        """Audio in (any length, any rate; NaN/inf become 0) -> frames that became final."""
        x = np.asarray(pcm)
        if x.dtype.kind not in "fiu":
            raise ValueError(f"pcm must be numeric, got dtype {x.dtype}")
        if x.dtype.kind in "iu":  # integer PCM: scale to -1..1
            x = x.astype(np.float64) / float(np.iinfo(x.dtype).max)
        if isinstance(sample_rate, bool) or not isinstance(sample_rate, int | np.integer):
            raise ValueError(f"sample_rate must be an integer, got {sample_rate!r}")
        x = sanitize(x)  # mono float64, NaN/inf -> 0, clipped to +-4
        if sample_rate != SAMPLE_RATE:
            if self._resampler is None or self._resampler.rate != sample_rate:
                self._resampler = StreamResampler(int(sample_rate))
            x = self._resampler.push(x)
        self._ingest(x)
        return self._run(final=False)

    def samples_until_frame(self) -> int:
        """16 kHz samples a :meth:`push` needs before it returns a frame: one with fewer returns none.

        A caller that pays per call (a live session's executor hand-off) can hold smaller pieces of
        audio back without delaying any frame. 0 while a resampler holds samples (not exact then).
        """
        if self._resampler is not None:
            return 0
        post, cf = self._post, self.chunk_frames
        frames = max(1, post.n_out + post.hold + 1 - post.n_raw)  # a negative align_mouth holds some back
        last = self._next + cf * -(-frames // cf) - 1 - self._seg_first  # the last frame to generate
        need = (last_mel_index(last, self.fps, int(self.model.lookahead_ms)) + 1) * HOP
        return max(0, need - self._samples)

    def _ready_frames(self) -> int:
        """How many frames from self._next have all their audio."""
        n_mel = self._mel_base + len(self._mel)
        la = int(self.model.lookahead_ms)
        # largest frame index f (relative to segment) with last_mel_index(f) < n_mel
        f_rel = ((n_mel + 1) * 10 * self.fps - la * self.fps) // 1000
        while last_mel_index(f_rel, self.fps, la) >= n_mel:
            f_rel -= 1
        while last_mel_index(f_rel + 1, self.fps, la) < n_mel:
            f_rel += 1
        return max(0, self._seg_first + f_rel + 1 - self._next)

    def _run(self, final: bool, limit: int | None = None) -> list[MotionFrame]:
        out: list[MotionFrame] = []
        cf = self.chunk_frames
        while True:
            ready = self._ready_frames()
            if limit is not None:
                ready = min(ready, limit - self._next)
            n = cf if ready >= cf else (ready if final else 0)
            if n <= 0:
                break
            out.extend(self._chunk(n))
        return out

    def _chunk(self, n: int) -> list[MotionFrame]:
        cfg = self.model.config
        rel_frames = np.arange(self._next, self._next + n) - self._seg_first
        last = (rel_frames * 1000 + cfg.lookahead_ms * self.fps) // (10 * self.fps) - 1
        windows = frame_windows_offset(self._mel, self._mel_base, last, cfg.audio_frames)
        audio = self.model.encode_audio(windows)
        levels = speech_levels(self._rel, self._mel_base, last)
        speech = levels > SPEECH_REL
        raw = self._core.generate(self._next, audio, levels, self.steps, float(self.controls.dynamic_scale))
        for i, flag in enumerate(speech):
            self._speech[self._next + i] = bool(flag)
        self._next += n
        keep_from = max(0, int(last.min()) - cfg.audio_frames + 1 - self._mel_base)
        if keep_from > 0:  # later windows never look further back than this one
            self._mel = self._mel[keep_from:]
            self._rel = self._rel[keep_from:]
            self._mel_base += keep_from
        outs = self._post.push(raw)
        frames = []
        for values in outs:
            idx = self.frames_emitted
            frames.append(MotionFrame(idx, values, self._speech.pop(idx, False)))
            self.frames_emitted += 1
        return frames

    def flush(self) -> list[MotionFrame]:
        """End of input: pad the lookahead with silence and emit every frame of the audio so far.

        Afterwards the stream continues like after :meth:`reset`.
        """
        if self._resampler is not None:
            self._ingest(self._resampler.flush())
            self._resampler = None
        # the frames whose time lies before the end of the audio: ceil(samples * fps / sr)
        n_target = self._seg_first + -(-self._samples * self.fps // SAMPLE_RATE)
        limit = n_target + self._post.hold  # negative align_mouth needs a few frames past the end
        out = self._run(final=False, limit=limit)
        pad = int(math.ceil((self.model.lookahead_ms / 1000.0 + 2.0 / self.fps) * SAMPLE_RATE)) + HOP
        for _ in range(1000):
            if self._next >= limit:
                break
            mel, rel = self._fe.push(np.zeros(pad))  # silence: not counted as input samples
            self._mel = np.concatenate([self._mel, mel])
            self._rel = np.concatenate([self._rel, rel])
            out.extend(self._run(final=True, limit=limit))
        self._restart()
        return out

    def _restart(self) -> None:
        """Continue after the frames emitted so far: new audio segment, held frames dropped."""
        self._post.reset_index(self.frames_emitted)
        self._new_segment(self.frames_emitted)
        self._speech.clear()

    def reset(self) -> None:
        """New utterance: forget the audio context (motion continues smoothly, index continues)."""
        self._resampler = None
        self._restart()

    def clear(self) -> None:
        """Interruption: drop audio whose frames were not emitted yet."""
        self._resampler = None
        self._restart()


def speech_levels(rel: np.ndarray, base: int, last: np.ndarray) -> np.ndarray:
    """Per frame, the loudest mel frame within about +-30 ms of its time, against the speech level.

    ``rel``: mel-frame energies relative to the running speech level (natural-log power), ``rel[0]``
    is mel index ``base``; ``last``: each frame's last mel index. -inf where there is none yet.
    Streams and whole files share it, so their speech flags (and the blinks at pauses and the nods
    that follow them) agree.
    """
    out = np.full(len(last), -np.inf)
    for i, mel_last in enumerate(np.asarray(last)):
        a, b = int(mel_last) - 8 - base, int(mel_last) - 1 - base
        seg = rel[max(a, 0) : max(b, 0)]
        if seg.size:
            out[i] = float(seg.max())
    return out


def frame_windows_offset(feats: np.ndarray, base: int, last: np.ndarray, k: int) -> np.ndarray:
    """Like :func:`realtime.features.frame_windows` over a buffer whose first row is mel index ``base``."""
    from realtime.features import SILENT_FEATURE

    idx = np.asarray(last)[:, None] - np.arange(k - 1, -1, -1)[None, :] - base
    padded = np.concatenate([np.full((k, N_MELS), SILENT_FEATURE, np.float32), feats.astype(np.float32)])
    return padded[np.clip(idx + k, 0, len(padded) - 1)]


def generate_motion(
    model: MotionModel,
    pcm: np.ndarray,
    sample_rate: int,
    fps: int = 25,
    controls: MotionControls = MotionControls(),  # noqa: B008 - frozen dataclass
    progress: Callable[[float], None] | None = None,
) -> np.ndarray:
    """Whole file -> (ceil(duration * fps), N_CHANNELS) float32, much faster than real time.

    Audio embeddings for all frames are computed in one batch; windows of ``max_new_frames`` new
    frames (plus the context) are then sampled one after another.
    """
    if (
        isinstance(fps, bool)
        or not isinstance(fps, int | np.integer)
        or not FPS_RANGE[0] <= fps <= FPS_RANGE[1]
    ):
        raise ValueError(f"fps must be an integer in {FPS_RANGE[0]}..{FPS_RANGE[1]}, got {fps!r}")
    controls = controls.validated()
    x = np.asarray(pcm)
    if x.dtype.kind not in "fiu":
        raise ValueError(f"pcm must be numeric, got dtype {x.dtype}")
    if x.dtype.kind in "iu":
        x = x.astype(np.float64) / float(np.iinfo(x.dtype).max)
    cfg = model.config
    x16 = resample(x, sample_rate)
    n_frames = -(-x16.size * fps // SAMPLE_RATE)
    if n_frames == 0:
        return np.zeros((0, N_CHANNELS), np.float32)
    frames = np.arange(n_frames)
    # silence after the end covers the lookahead of the last frames, as MotionStream.flush does
    need = (last_mel_index(n_frames - 1, fps, cfg.lookahead_ms) + 1) * HOP
    feats, rel = FeatureExtractor().push(np.concatenate([x16, np.zeros(max(0, need - x16.size))]))
    audio = model.encode_audio(frame_windows(feats, frames, fps, cfg.lookahead_ms, cfg.audio_frames))
    levels = speech_levels(rel, 0, np.array([last_mel_index(int(f), fps, cfg.lookahead_ms) for f in frames]))
    steps = int(controls.inference_steps or model.default_steps)
    core = _Core(model, fps, int(controls.seed))
    post = _Post(fps, controls)
    chunk = cfg.max_new_frames
    out = []
    for start in range(0, n_frames, chunk):
        sl = slice(start, start + chunk)
        raw = core.generate(start, audio[sl], levels[sl], steps, float(controls.dynamic_scale))
        out.append(post.push(raw))
        if progress is not None:
            progress(min(1.0, (start + chunk) / n_frames))
    # frames held back by a negative align_mouth: repeat the last raw frame to release them
    while post.n_out < n_frames:
        out.append(post.push(post.raw[-1][None]))
    return np.concatenate(out)[:n_frames].astype(np.float32)


def stream_motion(
    model: MotionModel,
    pcm: np.ndarray,
    sample_rate: int,
    fps: int = 25,
    controls: MotionControls = MotionControls(),  # noqa: B008 - frozen dataclass
    push_ms: float = 10.0,
) -> np.ndarray:
    """Whole file through :class:`MotionStream` in ``push_ms`` pushes, as a live session hears it.

    Same shape as :func:`generate_motion`, so evaluations can score what a live viewer sees.
    """
    stream = MotionStream(model, fps, controls)
    x = np.asarray(pcm)
    step = max(1, int(round(sample_rate * push_ms / 1000.0)))
    frames = [f for i in range(0, len(x), step) for f in stream.push(x[i : i + step], sample_rate)]
    frames += stream.flush()
    n_frames = -(-len(x) * fps // sample_rate)
    out = np.array([f.values for f in frames], np.float32).reshape(-1, N_CHANNELS)
    return out[:n_frames]


def with_controls(controls: MotionControls, **changes: Any) -> MotionControls:
    """A validated copy of ``controls`` with some fields changed."""
    return replace(controls, **changes).validated()
