"""Test portraits built from skimage's public-domain astronaut (and coffee for "no face").

Each helper returns an RGB uint8 array; :func:`encode` turns one into file bytes.
The closed-mouth portrait is the astronaut rendered by our own renderer at rest,
so it depends on the renderer; the others are plain image edits.
"""

from __future__ import annotations

import io
from functools import cache

import cv2
import numpy as np


def astronaut() -> np.ndarray:
    """The 512x512 astronaut: a frontal face with an open-mouth smile."""
    from skimage import data

    return np.ascontiguousarray(data.astronaut())


@cache
def _closed_mouth() -> np.ndarray:
    from realtime.avatar import register_avatar
    from realtime.motion import neutral
    from realtime.renderer import PortraitRenderer

    bundle = register_avatar(encode(astronaut()))
    return PortraitRenderer(bundle, 512).render(neutral())


def closed_mouth() -> np.ndarray:
    """The astronaut with her mouth shut (rendered at rest)."""
    return _closed_mouth().copy()


def glasses(img: np.ndarray | None = None) -> np.ndarray:
    """Dark-rimmed glasses drawn over the eyes of the astronaut."""
    out = (astronaut() if img is None else img).copy()
    # eye centres of the astronaut (measured once with the face mesh)
    right, left = (204, 103), (247, 105)
    for cx, cy in (right, left):
        cv2.ellipse(out, (cx, cy), (17, 12), 0, 0, 360, (25, 20, 20), 3, cv2.LINE_AA)
    cv2.line(out, (right[0] + 17, right[1] - 2), (left[0] - 17, left[1] - 2), (25, 20, 20), 3, cv2.LINE_AA)
    cv2.line(out, (right[0] - 17, right[1]), (right[0] - 27, right[1] - 4), (25, 20, 20), 3, cv2.LINE_AA)
    cv2.line(out, (left[0] + 17, left[1]), (left[0] + 27, left[1] - 4), (25, 20, 20), 3, cv2.LINE_AA)
    return out


def rotated(degrees: float = 20.0) -> np.ndarray:
    """The astronaut turned in the image plane about her face."""
    img = astronaut()
    m = cv2.getRotationMatrix2D((224.0, 125.0), degrees, 1.0)
    return cv2.warpAffine(img, m, (512, 512), flags=cv2.INTER_CUBIC, borderMode=cv2.BORDER_REFLECT)


def small_face(canvas: int = 1024, scale: float = 0.45) -> np.ndarray:
    """The astronaut scaled down onto a larger plain canvas (a small face in a big image)."""
    img = astronaut()
    s = round(512 * scale)
    small = cv2.resize(img, (s, s), interpolation=cv2.INTER_AREA)
    out = np.full((canvas, canvas, 3), (200, 196, 190), np.uint8)
    y, x = canvas - s - canvas // 8, canvas // 3
    out[y : y + s, x : x + s] = small
    return out


def two_faces() -> np.ndarray:
    """Two astronauts side by side; the right one is smaller (so 'largest' is the left)."""
    a = astronaut()
    b = cv2.resize(a, (384, 384), interpolation=cv2.INTER_AREA)
    out = np.full((512, 1024, 3), 180, np.uint8)
    out[:, :512] = a
    out[64:448, 576:960] = b
    return out


def no_face() -> np.ndarray:
    """A cup of coffee: a real photo with no face in it."""
    from skimage import data

    return np.ascontiguousarray(data.coffee())


def encode(img: np.ndarray, fmt: str = "png", mode: str | None = None, **save) -> bytes:
    """Encode an RGB array as PNG/JPEG/WebP bytes, optionally converted to a PIL mode (L, CMYK, RGBA)."""
    from PIL import Image

    pil = Image.fromarray(img)
    if mode is not None:
        pil = pil.convert(mode)
    buf = io.BytesIO()
    pil.save(buf, format={"png": "PNG", "jpeg": "JPEG", "jpg": "JPEG", "webp": "WEBP"}[fmt], **save)
    return buf.getvalue()
