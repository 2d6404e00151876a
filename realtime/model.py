"""The motion denoiser: a small 1-D conv network over a window of motion frames.

One window holds ``c`` known frames (the last emitted frames, kept as context) followed by the
frames to generate. Per frame the network sees:

* the noisy motion ``x_t`` (or, where ``mask`` is 1, the known clean frame), and the mask;
* an audio embedding of the 16 mel frames (160 ms) that end ``lookahead_ms`` after the frame's
  time (:meth:`MotionDenoiser.encode_audio`, computed once per frame and cached by the streamer),
  or the learned null-audio embedding (classifier-free guidance);
* the flow time ``t`` (0 = noise, 1 = data) through FiLM in every block.

It predicts the flow-matching velocity ``x_1 - x_0`` in normalised motion units (per-channel
mean/std of the training targets, stored as buffers). Time is non-causal *inside* the window, but
the window never extends past the newest frame, so a frame's prediction only uses audio up to
its own lookahead and that of the frames generated with it.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields

import torch
from torch import nn

from realtime.features import N_MELS
from realtime.motion import N_CHANNELS

# MotionConfig fields that only steer inference (set after training, e.g. from validation figures)
INFERENCE_FIELDS = frozenset(
    {
        "default_steps",
        "stream_chunk_frames",
        "guidance_scale",
        "stream_guidance_scale",
        "mouth_temperature",
        "mouth_first_estimate",
        "blink_process",
        "head_process",
    }
)


@dataclass(frozen=True)
class MotionConfig:
    """Architecture and streaming constants; saved with the weights."""

    n_channels: int = N_CHANNELS
    n_mels: int = N_MELS
    audio_frames: int = 16  # mel frames per motion frame (160 ms ending at t + lookahead)
    lookahead_ms: int = 60
    hidden: int = 160
    audio_hidden: int = 256
    n_layers: int = 6
    kernel: int = 5
    context_frames: int = 8  # known frames kept in the streaming window
    max_new_frames: int = 32  # frames generated per window offline (training covers 1..this)
    # 3 steps scored at least as well as 4 on every held-out figure (docs/bench/eval.md) at 85% of the cost
    default_steps: int = 3
    stream_chunk_frames: int = 1  # frames per streaming chunk (MotionStream's default)
    # Classifier-free guidance weight on the mouth at dynamic_scale = 1 (weight = dynamic_scale x this).
    # Chosen on validation data after training (see the model card); 1.0 = no guidance pass.
    guidance_scale: float = 1.0
    # The same for streams (MotionStream, live sessions). A streamed frame is sampled without the
    # later frames' audio, so its conditional mean is less sure and the mouth opens less (val,
    # vowel frames: 0.30 against the targets' 0.40); guidance restores the amplitude, and with it
    # the contrast (see the model card). Whole files are unaffected by guidance on val.
    stream_guidance_scale: float = 1.0
    # Initial-noise scale of the mouth channels. The mouth targets are a deterministic function of
    # the phones, so sampling them at full temperature only adds jitter (measured: ROC AUC of
    # vowel-vs-p/b/m aperture on real speech 0.88 at 1.0 vs 0.91-0.92 at 0..0.5, 4 steps).
    mouth_temperature: float = 0.3
    # The mouth channels take the clean-motion estimate of the sampler's first velocity call
    # (x_0 + v(x_0, 0): the audio-conditioned mean), the later steps refine only the other channels.
    # The mouth is a deterministic function of the phones, so its mean is the best prediction; the
    # later steps, fed near-noiseless mouth channels, shallowed closures (measured on val, 3 steps:
    # p/b/m closure hits 0.898 -> 0.953, AUC 0.969 -> 0.987; docs/bench/eval.md). Blinks, brows
    # and head pose are stochastic and still need every step.
    mouth_first_estimate: bool = True
    # Blinks come from the targets' own stochastic blink process, run causally per stream
    # (realtime.targets.BlinkTrack), not from the sampler: few-step sampling averages the rare,
    # randomly timed blinks away (1.3 blinks/min at 3 steps vs 17 in the targets). The network's
    # blink channels still feed its context, so every other channel is unchanged.
    blink_process: bool = True
    # Head pose comes from the targets' own head model and its nods, run causally
    # (realtime.targets.HeadTrack), not from the sampler; the network's head still feeds its
    # context. For weights whose streamed head motion is too small (a rollout fine-tune's: 0.21 deg
    # std streamed, docs/bench/eval.md).
    head_process: bool = False

    def to_dict(self) -> dict:
        return asdict(self)

    def architecture(self) -> dict:
        """The fields the weights depend on: sampler and streaming settings are left out, since they
        may change after training (``--init`` from older weights must still be allowed)."""
        return {k: v for k, v in asdict(self).items() if k not in INFERENCE_FIELDS}

    @classmethod
    def from_dict(cls, data: dict) -> MotionConfig:
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})


def timestep_embedding(t: torch.Tensor, dim: int) -> torch.Tensor:
    """Sinusoidal embedding of flow time t in 0..1 -> (B, dim)."""
    half = dim // 2
    freqs = torch.exp(-math.log(1000.0) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
    args = (t.float()[:, None] * 1000.0) * freqs[None, :]
    return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)


class Block(nn.Module):
    """Pre-norm residual block: FiLM(t) -> conv over time -> GELU -> pointwise."""

    def __init__(self, hidden: int, kernel: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(hidden, elementwise_affine=False)
        self.film = nn.Linear(hidden, 2 * hidden)
        self.conv = nn.Conv1d(hidden, hidden, kernel, padding=kernel // 2)
        self.act = nn.GELU()
        self.out = nn.Linear(hidden, hidden)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def time_conv(self, y: torch.Tensor) -> torch.Tensor:
        """The convolution over time, (B, T, H) -> (B, T, H) (the ONNX export swaps in a matmul form)."""
        return self.conv(y.transpose(1, 2)).transpose(1, 2)

    def modulation(self, temb: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """FiLM of the flow time: (1 + scale, shift), each (B, 1, H)."""
        scale, shift = self.film(temb)[:, None, :].chunk(2, dim=-1)
        return 1.0 + scale, shift

    def forward(self, h: torch.Tensor, gain: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
        y = self.norm(h) * gain + shift
        return h + self.out(self.act(self.time_conv(y)))


class MotionDenoiser(nn.Module):
    """Velocity predictor v(x_t, t | audio, context) over a window of motion frames."""

    def __init__(self, config: MotionConfig) -> None:
        super().__init__()
        self.config = config
        c, h = config, config.hidden
        self.register_buffer("feat_mean", torch.zeros(c.n_mels))
        self.register_buffer("feat_std", torch.ones(c.n_mels))
        self.register_buffer("motion_mean", torch.zeros(c.n_channels))
        self.register_buffer("motion_std", torch.ones(c.n_channels))
        self.audio = nn.Sequential(
            nn.Linear(c.audio_frames * c.n_mels, c.audio_hidden),
            nn.GELU(),
            nn.Linear(c.audio_hidden, c.audio_hidden),
            nn.GELU(),
            nn.Linear(c.audio_hidden, h),
        )
        self.null_audio = nn.Parameter(torch.zeros(h))
        self.inp = nn.Linear(c.n_channels + 1, h)
        self.time = nn.Sequential(nn.Linear(64, h), nn.GELU(), nn.Linear(h, h))
        self.blocks = nn.ModuleList(Block(h, c.kernel) for _ in range(c.n_layers))
        self.norm = nn.LayerNorm(h)
        self.head = nn.Linear(h, c.n_channels)

    def encode_audio(self, windows: torch.Tensor) -> torch.Tensor:
        """Mel windows (..., audio_frames, n_mels) -> audio embeddings (..., hidden)."""
        z = (windows - self.feat_mean) / self.feat_std
        return self.audio(z.flatten(-2))

    def forward(
        self, x: torch.Tensor, t: torch.Tensor, ctx: torch.Tensor, mask: torch.Tensor, audio: torch.Tensor
    ) -> torch.Tensor:
        """x, ctx: (B, T, C) normalised motion; t: (B,); mask: (B, T, 1); audio: (B, T, H) -> v (B, T, C)."""
        x_in = x * (1.0 - mask) + ctx * mask
        h = self.inp(torch.cat([x_in, mask], dim=-1)) + audio
        temb = self.time(timestep_embedding(t, 64))
        for block, (gain, shift) in zip(self.blocks, self.modulations(temb), strict=True):
            h = block(h, gain, shift)
        return self.head(self.norm(h))

    def modulations(self, temb: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Every block's FiLM (the ONNX export computes them in one matmul)."""
        return [block.modulation(temb) for block in self.blocks]

    def normalize(self, motion: torch.Tensor) -> torch.Tensor:
        return (motion - self.motion_mean) / self.motion_std

    def denormalize(self, z: torch.Tensor) -> torch.Tensor:
        return z * self.motion_std + self.motion_mean


def count_parameters(model: nn.Module) -> int:
    """Number of trainable parameters."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
