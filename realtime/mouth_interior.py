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

TEETH_RGB = np.array([242.0, 238.0, 228.0], np.float32)


def _smooth(e0, e1, x: np.ndarray) -> np.ndarray:
    """Hermite step from 0 at ``e0`` to 1 at ``e1`` (edges may be arrays)."""
    t = np.clip((x - e0) / np.maximum(np.asarray(e1) - e0, 1e-6), 0.0, 1.0)
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
    if not np.isfinite(thick).all():
        return
    h, w = img.shape[:2]
    if info.get("seam", 0.0) > 0.0:
        _seam(img, origin, upper, lower, thick, info)
    if thick.max() < 0.6:
        return
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
    # cavity: dark red-brown, darkest under the upper lip and towards the corners
    # half the photo's own lip tone, half a canonical dark red: never blue or grey whatever the light
    light = float(np.clip(info["skin_rgb"].mean() / 190.0, 0.6, 1.1))
    deep = (
        0.5 * lip * np.array([0.30, 0.15, 0.11], np.float32)
        + 0.5 * light * np.array([78.0, 26.0, 17.0])
        + 3.0
    )
    shade = (0.65 + 0.35 * t) * (1.0 - 0.35 * _smooth(0.5, 1.0, s))
    col = deep[None, None, :] * shade[..., None]
    # tongue: a soft mound rising from the lower lip at the centre
    # (kept darker than the lips, so the lip line stays readable - also for landmark models)
    tongue = _smooth(0.6, 1.0, t) * (1 - _smooth(0.15, 0.6, s)) * _smooth(0.08 * e, 0.25 * e, gap) * 0.7
    col = (
        col * (1 - tongue[..., None])
        + (0.5 * lip * np.array([0.55, 0.3, 0.24]) + 0.5 * light * np.array([150.0, 66.0, 56.0]))[
            None, None, :
        ]
        * tongue[..., None]
    )
    if info.get("teeth", True):
        # upper teeth under the upper lip, lower teeth just above the lower lip (fainter)
        band = np.clip(0.095 * e / gap, 0.0, 0.7)
        teeth = 1 - _smooth(0.55, 1.0, t / np.maximum(band, 1e-3))
        teeth *= (1 - _smooth(0.4, 0.8, s)) * _smooth(0.015 * e, 0.06 * e, gap) * 0.9
        low_band = np.clip(0.04 * e / gap, 0.0, 0.2)
        low = _smooth(1 - low_band, 1 - 0.4 * low_band, t) * (1 - _smooth(0.3, 0.6, s)) * 0.45
        low *= _smooth(0.1 * e, 0.25 * e, gap)
        teeth = np.maximum(teeth, low)
        # brightness follows the photo's lighting; a faint ripple hints at separate teeth
        ripple = 1.0 - 0.07 * (0.5 + 0.5 * np.cos(2 * np.pi * (lx - xc) / (0.11 * e))) * (s > 0.12)
        under_lip = 0.8 + 0.2 * _smooth(0.0, 0.35, t / np.maximum(band, 1e-3))  # shadow of the upper lip
        tshade = (light * (1.0 - 0.2 * s**2) * ripple * under_lip)[..., None]
        col = col * (1 - teeth[..., None]) + (TEETH_RGB * tshade) * teeth[..., None]
    # thin openings fade in rather than pop
    alpha = alpha * _smooth(0.3, 1.8, gap)
    col = _match_saturation(col, info["skin_rgb"])
    region = img[by0:by1, bx0:bx1].astype(np.float32)
    out = region * (1 - alpha[..., None]) + col * alpha[..., None]
    img[by0:by1, bx0:bx1] = np.clip(out + 0.5, 0, 255).astype(np.uint8)


def _seam(
    img: np.ndarray,
    origin: tuple[int, int],
    upper: np.ndarray,
    lower: np.ndarray,
    thick: np.ndarray,
    info: dict,
) -> None:
    """A soft dark line where the lips meet, so a shut open-mouth photo shows no teeth in the seam."""
    strength = 0.5 * float(info["seam"]) * float(1 - _smooth(1.0, 3.0, np.array(np.median(thick))))
    if strength <= 0:
        return  # the lips are apart: no seam to draw
    h, w = img.shape[:2]
    mid = (upper + lower) / 2 - np.asarray(origin, np.float32)
    x0, y0 = np.floor(mid.min(0)).astype(int) - 2
    x1, y1 = np.ceil(mid.max(0)).astype(int) + 3
    x0, y0, x1, y1 = max(x0, 0), max(y0, 0), min(x1, w), min(y1, h)
    if x1 <= x0 or y1 <= y0:
        return
    mask = np.zeros((y1 - y0, x1 - x0), np.uint8)
    pts = np.round((mid - [x0, y0]) * 8).astype(np.int32)
    thickness = max(1, int(round(info["eye_distance"] / 40)))
    cv2.polylines(mask, [pts], False, 255, thickness=thickness, lineType=cv2.LINE_AA, shift=3)
    a = cv2.GaussianBlur(mask, (3, 3), 0).astype(np.float32)[..., None] * (strength / 255.0)
    col = _match_saturation(info["lip_rgb"] * 0.5, info["skin_rgb"])
    region = img[y0:y1, x0:x1].astype(np.float32)
    img[y0:y1, x0:x1] = np.clip(region * (1 - a) + col * a + 0.5, 0, 255).astype(np.uint8)


def _match_saturation(col: np.ndarray, skin_rgb: np.ndarray) -> np.ndarray:
    """Pull painted colours towards grey as much as the photo is grey (a black-and-white photo gets no red)."""
    skin = np.asarray(skin_rgb, np.float32)
    sat = float((skin.max() - skin.min()) / max(float(skin.max()), 1.0))
    k = float(np.clip(sat / 0.2, 0.0, 1.0))
    if k >= 1.0:
        return col
    lum = (col * np.array([0.299, 0.587, 0.114], np.float32)).sum(axis=-1, keepdims=True)
    return lum + k * (col - lum)
