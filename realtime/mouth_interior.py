"""The inside of the mouth where the lips part beyond what the photo shows.

A closed-mouth photo has no teeth or cavity to reveal, so when the jaw drops we
paint them between the mouth's two split lines: a dark cavity (darker in the
middle and at the back), a hint of the upper teeth under the upper lip and of the
tongue at the bottom, coloured from the photo's own lips and skin. Edges are
anti-aliased; the lips themselves are warped photo pixels, so they overlap it.
"""

from __future__ import annotations

import math

import cv2
import numpy as np

TEETH_RGB = np.array([228.0, 222.0, 210.0], np.float32)


def _smooth(e0: float, e1: float, x: np.ndarray) -> np.ndarray:
    t = np.clip((x - e0) / max(e1 - e0, 1e-6), 0.0, 1.0)
    return t * t * (3 - 2 * t)


def paint_mouth(
    img: np.ndarray, origin: tuple[int, int], upper: np.ndarray, lower: np.ndarray, info: dict
) -> None:
    """Paint the cavity between ``upper`` and ``lower`` lip lines (output pixels) into ``img`` in place.

    ``img`` is the warped region whose top-left pixel is ``origin`` in the frame.
    """
    a = info["angle"]
    ex = np.array([math.cos(a), math.sin(a)], np.float32)
    ey = np.array([-ex[1], ex[0]], np.float32)
    up_l = np.stack([upper @ ex, upper @ ey], 1)
    lo_l = np.stack([lower @ ex, lower @ ey], 1)
    thick = lo_l[:, 1] - up_l[:, 1]
    if not np.isfinite(thick).all() or thick.max() < 0.6:
        return
    h, w = img.shape[:2]
    poly = np.concatenate([upper, lower[::-1]]) - np.asarray(origin, np.float32)
    bx0, by0 = np.floor(poly.min(0)).astype(int) - 2
    bx1, by1 = np.ceil(poly.max(0)).astype(int) + 3
    bx0, by0 = max(bx0, 0), max(by0, 0)
    bx1, by1 = min(bx1, w), min(by1, h)
    if bx1 <= bx0 or by1 <= by0:
        return
    bw, bh = bx1 - bx0, by1 - by0
    # anti-aliased coverage of the polygon at 1/8-pixel precision
    mask = np.zeros((bh, bw), np.uint8)
    pts = np.round((poly - [bx0, by0]) * 8).astype(np.int32)
    cv2.fillPoly(mask, [pts], 255, lineType=cv2.LINE_AA, shift=3)
    if not mask.any():
        return
    alpha = mask.astype(np.float32) / 255.0
    # mouth-local coordinates of each pixel: s along the mouth, t from upper (0) to lower (1) lip
    ys, xs = np.mgrid[by0:by1, bx0:bx1].astype(np.float32)
    xs += origin[0]
    ys += origin[1]
    lx = xs * ex[0] + ys * ex[1]
    ly = xs * ey[0] + ys * ey[1]
    order = np.argsort(up_l[:, 0])
    yu = np.interp(lx, up_l[order, 0], up_l[order, 1])
    order = np.argsort(lo_l[:, 0])
    yl = np.interp(lx, lo_l[order, 0], lo_l[order, 1])
    gap = np.maximum(yl - yu, 0.5)
    t = np.clip((ly - yu) / gap, 0.0, 1.0)
    xc = 0.5 * (up_l[:, 0].min() + up_l[:, 0].max())
    half = max(0.5 * (up_l[:, 0].max() - up_l[:, 0].min()), 1.0)
    s = np.abs(lx - xc) / half

    lip = info["lip_rgb"]
    e = info["eye_distance"]
    dark = lip * 0.16 + 4.0
    col = dark[None, None, :] * (0.75 + 0.6 * s**2)[..., None]
    # tongue: a soft reddish mound rising from the lower lip at the centre
    tongue = _smooth(0.55, 0.95, t) * (1 - _smooth(0.25, 0.75, s)) * _smooth(2.0, 6.0, gap) * 0.75
    col = col * (1 - tongue[..., None]) + (lip * 0.55)[None, None, :] * tongue[..., None]
    if info.get("teeth", True):
        # upper teeth: a band under the upper lip, as tall as the opening allows
        band = np.clip(0.09 * e / gap, 0.0, 0.45)
        teeth = 1 - _smooth(0.0, 1.0, (t - band * 0.6) / np.maximum(band * 0.4, 1e-3))
        teeth *= (1 - _smooth(0.45, 0.85, s)) * _smooth(1.5, 4.0, gap) * 0.85
        shade = (0.8 + 0.2 * (1 - s))[..., None]
        col = col * (1 - teeth[..., None]) + (TEETH_RGB * shade) * teeth[..., None]
    region = img[by0:by1, bx0:bx1].astype(np.float32)
    out = region * (1 - alpha[..., None]) + col * alpha[..., None]
    img[by0:by1, bx0:bx1] = np.clip(out + 0.5, 0, 255).astype(np.uint8)
