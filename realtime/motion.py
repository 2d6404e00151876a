"""The motion contract between the generator and the renderer.

A motion frame is one float32 vector per video frame. Face channels use ARKit
blendshape names and ranges (0..1); head pose is in degrees. Keeping ARKit
names means the same stream can drive 3D avatars (VRM, Live Link, three.js).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType

import numpy as np

MOUTH_CHANNELS: tuple[str, ...] = (
    "jawOpen",
    "mouthClose",
    "mouthFunnel",
    "mouthPucker",
    "mouthSmileLeft",
    "mouthSmileRight",
    "mouthStretchLeft",
    "mouthStretchRight",
    "mouthUpperUpLeft",
    "mouthUpperUpRight",
    "mouthLowerDownLeft",
    "mouthLowerDownRight",
    "mouthPressLeft",
    "mouthPressRight",
)
EYE_BROW_CHANNELS: tuple[str, ...] = (
    "eyeBlinkLeft",
    "eyeBlinkRight",
    "browInnerUp",
    "browOuterUpLeft",
    "browOuterUpRight",
)
FACE_CHANNELS: tuple[str, ...] = MOUTH_CHANNELS + EYE_BROW_CHANNELS
POSE_CHANNELS: tuple[str, ...] = ("headPitch", "headYaw", "headRoll")
CHANNELS: tuple[str, ...] = FACE_CHANNELS + POSE_CHANNELS
N_CHANNELS = len(CHANNELS)
CHANNEL_INDEX: dict[str, int] = {name: i for i, name in enumerate(CHANNELS)}

# Head pose is clipped to what a 2D warp of one photo can show convincingly.
MAX_POSE_DEG = 12.0

# The motion controls, with the seed API's names, and their allowed ranges (inclusive). The one
# definition that the generator, the live session parameters, the offline config and the OpenAPI
# description all check against.
CONTROL_RANGES: Mapping[str, tuple[float, float]] = MappingProxyType(
    {
        "inference_steps": (1, 8),
        "dynamic_scale": (0.0, 2.0),
        "motion_scale": (0.0, 2.0),
        "smooth_motion": (0.0, 1.0),
        "align_mouth": (-200.0, 200.0),  # ms
        "seed": (0, 2**32 - 1),
    }
)


def idx(name: str) -> int:
    """Index of a channel by its ARKit name."""
    return CHANNEL_INDEX[name]


def neutral() -> np.ndarray:
    """The rest pose: mouth closed, eyes open, head straight."""
    return np.zeros(N_CHANNELS, dtype=np.float32)


def clip_motion(values: np.ndarray) -> np.ndarray:
    """Clip face channels to 0..1 and pose to +-MAX_POSE_DEG; NaN becomes rest."""
    out = np.nan_to_num(np.asarray(values, dtype=np.float32), nan=0.0, posinf=0.0, neginf=0.0)
    n_face = len(FACE_CHANNELS)
    out[..., :n_face] = np.clip(out[..., :n_face], 0.0, 1.0)
    out[..., n_face:] = np.clip(out[..., n_face:], -MAX_POSE_DEG, MAX_POSE_DEG)
    return out


@dataclass(frozen=True, slots=True)
class MotionFrame:
    """Motion for video frame ``index``, which shows audio time ``index / fps``."""

    index: int
    values: np.ndarray  # float32, shape (N_CHANNELS,), order of CHANNELS
    speech: bool = False  # VAD/generator's view: was this frame speech?

    def __getitem__(self, name: str) -> float:
        return float(self.values[CHANNEL_INDEX[name]])

    def to_dict(self) -> dict[str, float]:
        """ARKit-named channels, rounded for compact JSON on the data channel."""
        return {name: round(float(v), 4) for name, v in zip(CHANNELS, self.values, strict=True)}
