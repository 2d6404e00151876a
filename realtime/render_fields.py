"""What each motion control does to a face: mesh displacements and dense warp fields.

Registration-time geometry for the renderer. The mesh is the 468 face-mesh landmarks
plus a few extra vertices: a "split" line through the middle of the mouth (upper
and lower copies, so the lips can part), a ring of still anchors around the head and
the border of the animated region. Every field is a forward displacement of those
vertices at full strength; the dense *backward* field (what the renderer samples) is
the piecewise-linear interpolation of ``-displacement`` over the *deformed* mesh,
which is exact for parts that move as a block (the jaw, a lid) at any strength.

Units are pixels of the bundle image. "Left"/"right" are the subject's (ARKit), so
``mouthSmileLeft`` moves the corner on the image's right in a frontal photo.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy.spatial import Delaunay

from realtime.landmarks import FACE_OVAL, LEFT_EYE_INNER, LEFT_EYE_OUTER, RIGHT_EYE_INNER, RIGHT_EYE_OUTER

FIELDS: tuple[str, ...] = (
    "open",  # lower lip + jaw drop beyond the photo's own aperture (weight = drop / d_fit)
    "close",  # closes the photo's own aperture (weight 1 = lips meet)
    "mouthFunnel",
    "mouthPucker",
    "mouthSmileLeft",
    "mouthSmileRight",
    "mouthStretchLeft",
    "mouthStretchRight",
    "mouthUpperUpLeft",
    "mouthUpperUpRight",
    "mouthPressLeft",
    "mouthPressRight",
    "eyeBlinkLeft",
    "eyeBlinkRight",
    "browInnerUp",
    "browOuterUpLeft",
    "browOuterUpRight",
    "headPitch",  # per POSE_REF_DEG degrees
    "headYaw",
    "headRoll",
)
FIELD_INDEX = {name: i for i, name in enumerate(FIELDS)}
POSE_REF_DEG = 10.0

# Amplitudes in eye distances (E).
JAW_E = 0.42  # lip gap at jawOpen = 1
LOWER_DOWN_E = 0.10  # extra lip gap at mouthLowerDown = 1
OPEN_FIT_E = JAW_E + LOWER_DOWN_E

UPPER_INNER = (78, 191, 80, 81, 82, 13, 312, 311, 310, 415, 308)
LOWER_INNER = (78, 95, 88, 178, 87, 14, 317, 402, 318, 324, 308)
UPPER_OUTER = (61, 185, 40, 39, 37, 0, 267, 269, 270, 409, 291)
LOWER_OUTER = (61, 146, 91, 181, 84, 17, 314, 405, 321, 375, 291)
# Eyelids, outer corner to inner corner; the "ring" rows lie above the upper lid.
RIGHT_UPPER_LID = (246, 161, 160, 159, 158, 157, 173)
RIGHT_LOWER_LID = (7, 163, 144, 145, 153, 154, 155)
RIGHT_LID_RING1 = (247, 30, 29, 27, 28, 56, 190)
RIGHT_LID_RING2 = (113, 225, 224, 223, 222, 221, 189)
LEFT_UPPER_LID = (466, 388, 387, 386, 385, 384, 398)
LEFT_LOWER_LID = (249, 390, 373, 374, 380, 381, 382)
LEFT_LID_RING1 = (467, 260, 259, 257, 258, 286, 414)
LEFT_LID_RING2 = (342, 445, 444, 443, 442, 441, 413)
RIGHT_BROW_INNER, RIGHT_BROW_MID, RIGHT_BROW_OUTER = (107, 55, 66, 65), (105, 52), (70, 46, 63, 53)
LEFT_BROW_INNER, LEFT_BROW_MID, LEFT_BROW_OUTER = (336, 285, 296, 295), (334, 282), (300, 276, 293, 283)
NOSE_BOTTOM = 2


def _smoothstep(e0: float, e1: float, x: np.ndarray) -> np.ndarray:
    t = np.clip((np.asarray(x, np.float64) - e0) / max(e1 - e0, 1e-9), 0.0, 1.0)
    return t * t * (3 - 2 * t)


@dataclass
class Built:
    """Output of :func:`build`, stored in the AvatarBundle."""

    crop_box: np.ndarray
    roi: np.ndarray
    grid_step: float
    fields: np.ndarray
    vertices: np.ndarray
    vertex_disp: np.ndarray
    triangles: np.ndarray
    meta: dict


class _Frame:
    """Face-aligned coordinates: x along the eye line (subject's right -> left), y down."""

    def __init__(self, lm: np.ndarray) -> None:
        r = (lm[RIGHT_EYE_OUTER, :2] + lm[RIGHT_EYE_INNER, :2]) / 2
        left = (lm[LEFT_EYE_OUTER, :2] + lm[LEFT_EYE_INNER, :2]) / 2
        self.eye_distance = float(np.linalg.norm(left - r))
        self.ex = (left - r) / max(self.eye_distance, 1e-6)
        self.ey = np.array([-self.ex[1], self.ex[0]])
        self.origin = lm[list(FACE_OVAL), :2].mean(axis=0)
        self.angle = math.atan2(float(self.ex[1]), float(self.ex[0]))

    def local(self, p: np.ndarray) -> np.ndarray:
        d = np.asarray(p, np.float64)[..., :2] - self.origin
        return np.stack([d @ self.ex, d @ self.ey], axis=-1)

    def to_image(self, v: np.ndarray) -> np.ndarray:
        """Local *vectors* (dx, dy) to image vectors."""
        v = np.asarray(v, np.float64)
        return v[..., :1] * self.ex + v[..., 1:2] * self.ey

    def to_image_points(self, q: np.ndarray) -> np.ndarray:
        return self.to_image(q) + self.origin


def _curve(xs: np.ndarray, ys: np.ndarray):
    order = np.argsort(xs)
    xs, ys = xs[order], ys[order]
    return lambda x: np.interp(x, xs, ys)


def build(image: np.ndarray, landmarks: np.ndarray, *, expand_ratio: float = 0.15) -> Built:
    """Mesh, per-field vertex displacements and dense backward fields for one face."""
    h_img, w_img = image.shape[:2]
    lm = landmarks.astype(np.float64)
    fr = _Frame(lm)
    E = fr.eye_distance
    L = fr.local(lm)  # (468, 2)
    oval = L[list(FACE_OVAL)]
    w_half = float(oval[:, 0].max() - oval[:, 0].min()) / 2
    h_half = float(oval[:, 1].max() - oval[:, 1].min()) / 2

    # -- mouth geometry: inner-lip curves y_upper(x), y_lower(x) in local coords
    up_in, lo_in = L[list(UPPER_INNER)], L[list(LOWER_INNER)]
    y_up = _curve(up_in[:, 0], up_in[:, 1])
    y_lo = _curve(lo_in[:, 0], lo_in[:, 1])
    gap = lambda x: np.maximum(y_lo(x) - y_up(x), 0.0)  # noqa: E731
    x_mouth = (L[61, 0] + L[291, 0]) / 2
    half_w = max((L[291, 0] - L[61, 0]) / 2, 0.2 * E)
    gap0 = float(gap(np.array([L[13, 0]]))[0])

    # -- extra vertices: split line through the mouth (upper and lower copies)
    split_x = np.linspace(up_in[0, 0], up_in[-1, 0], 13)[1:-1]
    photo_open = gap0 > 0.06 * E and _gap_is_open(image, fr, split_x, y_up(split_x), y_lo(split_x))
    mid = _teeth_edge(image, fr, split_x, y_up(split_x), y_lo(split_x)) if photo_open else None
    if mid is None:
        mid = (y_up(split_x) + y_lo(split_x)) / 2
    eps = 0.25
    split_up = np.stack([split_x, mid - eps], 1)
    split_lo = np.stack([split_x, mid + eps], 1)
    # "trim" rows just inside each lip: when an open photo's mouth shuts they meet too, so
    # the seam shows lip, not the teeth that bilinear sampling at the lip edge would pick up
    trim = 0.03 * E
    trim_up = np.stack([split_x, y_up(split_x) - trim], 1)
    trim_lo = np.stack([split_x, y_lo(split_x) + trim], 1)
    # ring of still anchors around the head; farther below the chin so the jaw has room
    ring_scale = np.where(oval[:, 1] > L[NOSE_BOTTOM, 1], 2.0, 1.35 + expand_ratio)
    ring = oval * ring_scale[:, None]
    # pose mask: ellipse around the face, smooth falloff to zero
    # (wide enough that hair turns with the head; the falloff lands on background)
    s_in = 1.5 + expand_ratio
    s_out = s_in + 0.7
    ax, ay = w_half * 1.0, h_half * 1.0
    t = np.linspace(0, 2 * np.pi, 48, endpoint=False)
    ell = np.stack([np.cos(t) * ax * s_out, np.sin(t) * ay * s_out], 1)
    outer_pts = fr.to_image_points(np.concatenate([ell, ring * 1.08], 0))
    # animated region: everything that can move, plus a margin; clipped to the image
    step = max(1.0, E / 14.0)
    lo_xy = np.floor(outer_pts.min(0) - 2 * step)
    hi_xy = np.ceil(outer_pts.max(0) + 2 * step)
    x0, y0 = int(max(0, lo_xy[0])), int(max(0, lo_xy[1]))
    x1, y1 = int(min(w_img, hi_xy[0])), int(min(h_img, hi_xy[1]))
    roi = np.array([x0, y0, x1, y1], np.int32)
    border = _border_points(x0, y0, x1, y1, step * 3)

    n_lm = 468
    vertices = np.concatenate(
        [
            lm[:, :2],
            fr.to_image_points(split_up),
            fr.to_image_points(split_lo),
            fr.to_image_points(trim_up),
            fr.to_image_points(trim_lo),
            fr.to_image_points(ring),
            border,
        ]
    )
    n_split = len(split_x)
    i_su = np.arange(n_lm, n_lm + n_split)
    i_sl = np.arange(n_lm + n_split, n_lm + 2 * n_split)
    n_ring = len(ring)
    i_tu = np.arange(n_lm + 2 * n_split, n_lm + 3 * n_split)
    i_tl = np.arange(n_lm + 3 * n_split, n_lm + 4 * n_split)
    n_face = n_lm + 4 * n_split  # vertices that may move
    VL = fr.local(vertices[:n_face])  # local coords of movable vertices
    x, y = VL[:, 0], VL[:, 1]
    u = (x - x_mouth) / half_w

    disp = np.zeros((len(FIELDS), len(vertices), 2))  # local (dx, dy), converted at the end

    def set_field(name: str, d_local: np.ndarray) -> None:
        disp[FIELD_INDEX[name], :n_face] = d_local

    # soft: a hard cut here would tear the cheek where it crosses the nose line
    below_nose = _smoothstep(L[NOSE_BOTTOM, 1] - 0.1 * E, L[NOSE_BOTTOM, 1] + 0.2 * E, y)
    lat = np.clip(1.1 - 0.6 * (x / max(w_half, 1e-6)) ** 2, 0.15, 1.0)

    # -- open: lower lip + jaw move down (upper lip lifts a little)
    d_fit = OPEN_FIT_E * E
    h_ramp = E * (0.03 + 0.45 * np.clip((np.abs(u) - 0.45) / 0.7, 0, 1))
    below = y - y_lo(x)
    below[i_sl] = 0.0  # the lower split line moves exactly like the lower lip beside it
    # the lower lip opens as a lens (full at the centre, nothing at the corners); further
    # below, the jaw moves as a block, so the weight rises to the jaw's with depth
    lens = np.clip(1 - np.abs(u) ** 2, 0, 1) ** 0.6
    w_low = np.where(below >= -0.01, np.maximum(lens, _smoothstep(0.05 * E, 0.6 * E, below)) * lat, 0.0)
    w_low[i_su] = 0.0
    above = y_up(x) - y
    w_up = np.where(above >= -0.01, 1 - _smoothstep(0, 0.35 * E, above), 0.0) * (
        1 - _smoothstep(0.6, 1.3, np.abs(u))
    )
    w_up[i_su] = 0.0  # upper teeth stay with the skull
    w_up[i_sl] = 0.0
    d = np.zeros((n_face, 2))
    d[:, 1] = d_fit * w_low - 0.08 * d_fit * w_up * below_nose
    set_field("open", d)

    # -- close: the photo's own lip gap shuts. Per column this is a monotonic 1-D map (no
    # folds): the band between the two trim rows collapses onto the meeting line, the upper
    # lip above it comes down (fading upwards), the lower lip below comes up and the chin
    # follows as a block.
    k = 0.97
    g = gap(x) * (np.abs(u) <= 1.05)
    tr = trim * _smoothstep(0.0, 0.05 * E, g)
    top = y_up(x) - tr
    bot = y_lo(x) + tr
    meet_y = y_up(x) + k * 0.25 * g
    upper = (meet_y - top) * (1 - _smoothstep(0, 0.2 * E, top - y))
    near = 1 - _smoothstep(0, 0.25 * E, y - bot)
    jaw = -k * 0.75 * gap0 * lat * _smoothstep(0, 1, (y - bot + 0.03 * E) / h_ramp)
    lower = near * (meet_y + 0.02 * g - bot) + (1 - near) * jaw
    band = meet_y + 0.02 * g * np.clip((y - top) / np.maximum(bot - top, 1e-6), 0, 1) - y
    d = np.zeros((n_face, 2))
    d[:, 1] = np.where(y <= top, upper, np.where(y >= bot, lower, band))
    set_field("close", d)

    # -- linear mouth controls: handles with Gaussian falloff
    def falloff(center: np.ndarray, sigma: float) -> np.ndarray:
        return np.exp(-((VL - center) ** 2).sum(1) / (2 * sigma**2)) * below_nose

    c_r, c_l = L[61], L[291]
    lips_up = np.where((above >= -0.01) & (above < 0.3 * E), 1 - _smoothstep(0, 0.3 * E, above), 0.0)
    lips_lo = np.where((below >= -0.01) & (below < 0.3 * E), 1 - _smoothstep(0, 0.3 * E, below), 0.0)
    lips_up *= 1 - _smoothstep(0.8, 1.3, np.abs(u))
    lips_lo *= 1 - _smoothstep(0.8, 1.3, np.abs(u))
    lips_up[i_su], lips_lo[i_su] = 1 - _smoothstep(0.8, 1.3, np.abs(u[i_su])), 0
    lips_lo[i_sl], lips_up[i_sl] = 1 - _smoothstep(0.8, 1.3, np.abs(u[i_sl])), 0
    if photo_open:
        lips_up[i_su] = 0.0  # the upper split is the teeth edge: it stays when the upper lip lifts

    # pucker and funnel gather the whole mouth towards its centre (a horizontal squeeze that
    # fades into the cheeks), so the lip line keeps its shape instead of kinking at the corners
    y_mid = (y_up(x) + y_lo(x)) / 2
    squeeze = np.exp(-((y - y_mid) ** 2) / (2 * (0.3 * E) ** 2)) * np.exp(
        -(np.maximum(np.abs(u) - 1.0, 0.0) ** 2) / (2 * 0.45**2)
    )
    gather = np.zeros((n_face, 2))
    gather[:, 0] = -(x - x_mouth) * squeeze * below_nose
    d = gather * 0.22
    d[:, 1] += (-0.03 * lips_up + 0.05 * lips_lo) * E
    set_field("mouthFunnel", d)
    d = gather * 0.38
    d[:, 1] += (-0.012 * lips_up + 0.012 * lips_lo) * E
    set_field("mouthPucker", d)
    y_out_up = _curve(L[list(UPPER_OUTER), 0], L[list(UPPER_OUTER), 1])(x)
    y_out_lo = _curve(L[list(LOWER_OUTER), 0], L[list(LOWER_OUTER), 1])(x)
    in_mouth = 1 - _smoothstep(0.85, 1.2, np.abs(u))

    def press_profile(depth: np.ndarray, lip: np.ndarray) -> np.ndarray:
        """0 at the mouth line, 1 at the outer lip line (``lip`` deep), fading beyond it."""
        lip = np.maximum(lip, 0.02 * E)
        inside = np.clip(depth / lip, 0.0, 1.0)
        outside = np.exp(-((np.maximum(depth - lip, 0.0) / (0.12 * E)) ** 2))
        return np.where(depth < 0, 0.0, np.where(depth <= lip, inside, outside)) * in_mouth

    press_up = press_profile(above, y_up(x) - y_out_up)
    press_lo = press_profile(below, y_out_lo - y_lo(x))
    for side, corner, sgn in (("Left", c_l, 1.0), ("Right", c_r, -1.0)):
        g = falloff(corner, 0.3 * E)[:, None]
        set_field(f"mouthSmile{side}", g * np.array([sgn * 0.11, -0.09]) * E)
        set_field(f"mouthStretch{side}", g * np.array([sgn * 0.12, 0.03]) * E)
        half = _smoothstep(-0.4, 0.4, sgn * u)[:, None]
        d = np.zeros((n_face, 2))
        d[:, 1] = -0.08 * E * lips_up
        set_field(f"mouthUpperUp{side}", d * half)
        # press: both lips roll in (thinner): the outer lip line moves towards the mouth line,
        # the lip between follows proportionally and the skin outside follows with a falloff
        d = np.zeros((n_face, 2))
        d[:, 1] = 0.025 * E * (press_up - press_lo)
        set_field(f"mouthPress{side}", d * half)

    # -- eyes: upper lid meets the lower lid; the skin above follows partly
    for side, upper, lower, ring1, ring2 in (
        ("Left", LEFT_UPPER_LID, LEFT_LOWER_LID, LEFT_LID_RING1, LEFT_LID_RING2),
        ("Right", RIGHT_UPPER_LID, RIGHT_LOWER_LID, RIGHT_LID_RING1, RIGHT_LID_RING2),
    ):
        d = np.zeros((n_face, 2))
        for iu, il, r1, r2 in zip(upper, lower, ring1, ring2, strict=True):
            g = L[il] - L[iu]
            g[1] = max(g[1], 0.02 * E)
            d[iu] = 0.83 * g
            d[il] = -0.15 * g
            d[r1] = 0.8 * 0.83 * g
            d[r2] = 0.45 * 0.83 * g
        set_field(f"eyeBlink{side}", d)

    # -- brows: the brow rises; below it the lift fades to nothing at the upper lid (so the
    # skin between stretches evenly, no streaks), above it it fades into the forehead
    def brow_weights(upper_lid, brow_pts, inner_idx, outer_idx) -> tuple[np.ndarray, np.ndarray]:
        lid_x, lid_y = L[list(upper_lid), 0], L[list(upper_lid), 1]
        brow_x, brow_y = L[list(brow_pts), 0], L[list(brow_pts), 1]
        y_lid = _curve(lid_x, lid_y)(x)
        y_brow = _curve(brow_x, brow_y)(x)
        span = np.maximum(y_lid - y_brow, 0.05 * E)
        below = np.clip((y_lid - y) / span, 0.0, 1.0)  # 0 at the lid, 1 at the brow
        # the lashes and lid crease (lowest third) stay with the lid; the rest stretches evenly
        v = np.where(y < y_brow, np.exp(-(((y_brow - y) / (0.5 * E)) ** 2)), _smoothstep(0.3, 1.0, below))
        v = np.where(y > y_lid, 0.0, v)
        xi, xo = L[inner_idx, 0], L[outer_idx, 0]
        t = (x - xi) / (xo - xi)  # 0 at the inner end of the brow, 1 at the outer end
        inner = np.where(
            t < 0,
            np.exp(-((t / 0.35) ** 2)),
            np.where(t > 1, 0.4 * np.exp(-(((t - 1) / 0.3) ** 2)), 1 - 0.6 * t),
        )
        outer = np.where(t < 0, 0.0, np.where(t > 1, 0.8 * np.exp(-(((t - 1) / 0.4) ** 2)), 0.2 + 0.6 * t))
        return v * inner, v * outer

    lids = np.zeros(n_face, bool)
    lids[list(RIGHT_UPPER_LID + RIGHT_LOWER_LID + LEFT_UPPER_LID + LEFT_LOWER_LID)] = True
    r_in, r_out = brow_weights(RIGHT_UPPER_LID, RIGHT_BROW_INNER + RIGHT_BROW_MID + RIGHT_BROW_OUTER, 107, 70)
    l_in, l_out = brow_weights(LEFT_UPPER_LID, LEFT_BROW_INNER + LEFT_BROW_MID + LEFT_BROW_OUTER, 336, 300)
    # each side owns its half of the face (split at the nose bridge)
    x_mid = (L[RIGHT_EYE_INNER, 0] + L[LEFT_EYE_INNER, 0]) / 2
    right_side = _smoothstep(-0.15 * E, 0.15 * E, x_mid - x)
    left_side = 1 - right_side
    lift = 0.13 * E
    for name, w in (
        ("browInnerUp", r_in * right_side + l_in * left_side),
        ("browOuterUpLeft", l_out * left_side),
        ("browOuterUpRight", r_out * right_side),
    ):
        d = np.zeros((n_face, 2))
        d[:, 1] = -lift * w * ~lids
        set_field(name, d)

    # local -> image vectors
    disp = fr.to_image(disp)

    # -- dense backward fields on the grid
    gw = int(math.ceil((x1 - x0) / step)) + 1
    gh = int(math.ceil((y1 - y0) / step)) + 1
    gx = x0 + np.arange(gw) * step
    gy = y0 + np.arange(gh) * step
    GX, GY = np.meshgrid(gx, gy)
    grid = np.stack([GX.ravel(), GY.ravel()], 1)
    fields = np.zeros((len(FIELDS), gh, gw, 2), np.float32)
    tris = Delaunay(vertices).simplices
    for fi, name in enumerate(FIELDS):
        if name.startswith("head"):
            continue
        dv = disp[fi]
        fields[fi] = rasterize(tris, vertices + dv, -dv, (x0, y0), step, (gh, gw))

    # -- head pose: smooth analytic fields (mask x rigid motion + nose parallax)
    z = lm[:, 2]
    z_ring = float(np.median(z[list(FACE_OVAL)]))
    depth = np.clip((z_ring - z) / E, 0, None)
    depth_v = np.zeros(len(vertices))
    depth_v[:n_lm] = depth
    depth_v[i_su] = depth[13]
    depth_v[i_sl] = depth[14]
    depth_v[i_tu] = depth[13]
    depth_v[i_tl] = depth[14]
    par_grid = rasterize(tris, vertices, depth_v[:, None], (x0, y0), step, (gh, gw))[..., 0].astype(
        np.float32
    )
    th = math.radians(POSE_REF_DEG)
    pivot = fr.origin + fr.ey * 1.0 * h_half  # about the chin: less sweep at the top of the hair

    def pose_forward(pts: np.ndarray, par: np.ndarray) -> dict[str, np.ndarray]:
        q = fr.local(pts)
        mask = 1 - _smoothstep(s_in, s_out, np.sqrt((q[:, 0] / ax) ** 2 + (q[:, 1] / ay) ** 2))
        # fade out at the image border: a head cut by the frame must not pull in pixels from outside it
        edge = np.minimum.reduce([pts[:, 0], pts[:, 1], w_img - 1 - pts[:, 0], h_img - 1 - pts[:, 1]])
        fade = _smoothstep(0.0, 0.6 * E, edge)
        mask = mask * fade
        par = par * fade
        zero = np.zeros_like(mask)
        rel = pts - pivot
        return {
            "headYaw": fr.to_image(np.stack([th * E * (0.7 * mask + 1.2 * par), zero], 1)),
            "headPitch": fr.to_image(np.stack([zero, th * E * (0.5 * mask + 1.0 * par)], 1)),
            "headRoll": th * mask[:, None] * np.stack([-rel[:, 1], rel[:, 0]], 1),
        }

    def par_at(pts: np.ndarray) -> np.ndarray:
        import cv2

        g = ((pts - [x0, y0]) / step).astype(np.float32)
        return cv2.remap(par_grid, g[:, :1], g[:, 1:], cv2.INTER_LINEAR, borderValue=0.0)[:, 0]

    # backward field = inverse of the forward one, by two fixed-point steps (the fields are smooth)
    for name, fwd in pose_forward(grid, par_grid.ravel()).items():
        back = -fwd
        for _ in range(2):
            src = grid + back
            back = -pose_forward(src, par_at(src))[name]
        fields[FIELD_INDEX[name]] = back.reshape(gh, gw, 2)
    for name, fwd in pose_forward(vertices, depth_v).items():
        disp[FIELD_INDEX[name]] = fwd

    # the warp must be exactly still outside the moving region (pixel identity there)
    fields[np.abs(fields) < 1e-3] = 0.0

    face_box = np.concatenate([lm[:, :2].min(0), lm[:, :2].max(0)])
    fw, fh = face_box[2] - face_box[0], face_box[3] - face_box[1]
    crop_box = face_box + np.array([-fw, -fh, fw, fh]) * expand_ratio
    crop_box = np.clip(crop_box, 0, [w_img, h_img, w_img, h_img]).astype(np.float32)

    colors = _mouth_colors(image, lm)
    meta = {
        "eye_distance": E,
        "angle": fr.angle,
        "origin": fr.origin.tolist(),
        "gap0": gap0,
        "jaw_px": JAW_E * E,
        "lower_down_px": LOWER_DOWN_E * E,
        "open_fit_px": d_fit,
        "split_upper": [int(UPPER_INNER[0])] + i_su.tolist() + [int(UPPER_INNER[-1])],
        "split_lower": [int(LOWER_INNER[0])] + i_sl.tolist() + [int(LOWER_INNER[-1])],
        "photo_open": bool(photo_open),
        "patches": _patches(vertices, disp, E),
        "n_ring": n_ring,
        **colors,
    }
    return Built(
        crop_box=crop_box,
        roi=roi,
        grid_step=float(step),
        fields=fields.astype(np.float16),
        vertices=vertices.astype(np.float32),
        vertex_disp=disp.astype(np.float32),
        triangles=tris.astype(np.int32),
        meta=meta,
    )


def _sample_gap(image: np.ndarray, fr: _Frame, xs: np.ndarray, yu: np.ndarray, yl: np.ndarray, n: int = 24):
    """RGB samples (len(xs), n, 3) down each column of the lip gap, and their local y."""
    import cv2

    t = np.linspace(0.0, 1.0, n)
    ly = yu[:, None] + (yl - yu)[:, None] * t[None, :]
    pts = fr.to_image_points(np.stack([np.broadcast_to(xs[:, None], ly.shape), ly], -1))
    rgb = cv2.remap(image, pts[..., 0].astype(np.float32), pts[..., 1].astype(np.float32), cv2.INTER_LINEAR)
    return rgb.astype(np.float64), ly


def _gap_is_open(image: np.ndarray, fr: _Frame, xs: np.ndarray, yu: np.ndarray, yl: np.ndarray) -> bool:
    """Whether the inner-lip gap shows teeth or a dark cavity (an open mouth), not just lip."""
    rgb, _ = _sample_gap(image, fr, xs, yu, yl)
    inner = rgb[2:-2, 3:-3].reshape(-1, 3)  # away from the corners and the lip edges
    lum = inner @ np.array([0.299, 0.587, 0.114])
    sat = inner.max(-1) - inner.min(-1)
    edge = np.concatenate([rgb[2:-2, 0], rgb[2:-2, -1]]) @ np.array([0.299, 0.587, 0.114])
    ref = float(np.median(edge))  # lip tissue at the gap's top and bottom
    teeth = (lum > ref * 1.12) & (sat < 0.45 * lum)
    dark = lum < 0.55 * ref
    return bool((teeth | dark).mean() > 0.3)


def _otsu(values: np.ndarray) -> float:
    """Otsu's threshold of a 1-D sample."""
    hist, edges = np.histogram(values, bins=64)
    p = hist / max(hist.sum(), 1)
    centers = (edges[:-1] + edges[1:]) / 2
    w0 = np.cumsum(p)
    m0 = np.cumsum(p * centers)
    mt = m0[-1]
    between = (mt * w0 - m0) ** 2 / np.maximum(w0 * (1 - w0), 1e-12)
    return float(centers[int(np.argmax(between))])


def _teeth_edge(image: np.ndarray, fr: _Frame, xs: np.ndarray, yu: np.ndarray, yl: np.ndarray):
    """Where the upper teeth end in each column of an open mouth (the jaw opens below them).

    Scans each column of the lip gap from the top: the first bright run is the upper
    teeth. Columns without teeth split in the middle. None if no teeth are visible.
    """
    n = 24
    rgb, ly = _sample_gap(image, fr, xs, yu, yl, n)
    lum = rgb @ np.array([0.299, 0.587, 0.114])
    sat = rgb.max(-1) - rgb.min(-1)
    # teeth: bright and unsaturated; the threshold splits the gap's luminances in two (Otsu)
    thr = _otsu(lum[1:-1].ravel())
    bright = (lum > thr) & (sat < 0.5 * lum)
    if bright[1:-1].sum() < 0.15 * bright[1:-1].size:
        return None
    out = (yu + yl) / 2
    for k in range(len(xs)):
        # the longest bright run in the column is the upper teeth; the jaw opens below it
        best, start, run_best = None, None, 0
        for i in range(n + 1):
            on = i < n and bool(bright[k, i])
            if on and start is None:
                start = i
            if not on and start is not None:
                if i - start > run_best:
                    best, run_best = i - 1, i - start
                start = None
        if best is not None and run_best >= 3:
            out[k] = ly[k, best] + 0.5 * (ly[k, 1] - ly[k, 0])
    # the teeth edge is smooth: a median of three then a light blur removes single-column misses
    padded = np.concatenate([out[:1], out, out[-1:]])
    med = np.median(np.stack([padded[:-2], padded[1:-1], padded[2:]]), axis=0)
    padded = np.concatenate([med[:1], med, med[-1:]])
    out = 0.25 * padded[:-2] + 0.5 * padded[1:-1] + 0.25 * padded[2:]
    return np.clip(out, yu + 0.5, np.maximum(yl - 0.5, yu + 0.5))


def _patches(vertices: np.ndarray, disp: np.ndarray, E: float) -> list[list[float]]:
    """Boxes (x0, y0, x1, y1) where fields change sharply (lips, lids): rendered at full resolution."""
    out = []
    groups = (
        (UPPER_OUTER + LOWER_OUTER + UPPER_INNER + LOWER_INNER, 0.25),
        (RIGHT_UPPER_LID + RIGHT_LOWER_LID + RIGHT_LID_RING1, 0.12),
        (LEFT_UPPER_LID + LEFT_LOWER_LID + LEFT_LID_RING1, 0.12),
    )
    for idxs, margin in groups:
        pts = vertices[list(idxs)]
        moved = (pts[None] + disp[:, list(idxs)]).reshape(-1, 2)
        allp = np.concatenate([pts, moved])
        lo = allp.min(0) - margin * E
        hi = allp.max(0) + margin * E
        out.append([float(lo[0]), float(lo[1]), float(hi[0]), float(hi[1])])
    return out


def _border_points(x0: int, y0: int, x1: int, y1: int, spacing: float) -> np.ndarray:
    nx = max(2, int((x1 - x0) / spacing) + 1)
    ny = max(2, int((y1 - y0) / spacing) + 1)
    xs = np.linspace(x0 - 1, x1 + 1, nx)
    ys = np.linspace(y0 - 1, y1 + 1, ny)
    top = np.stack([xs, np.full(nx, y0 - 1.0)], 1)
    bot = np.stack([xs, np.full(nx, y1 + 1.0)], 1)
    lef = np.stack([np.full(ny, x0 - 1.0), ys], 1)
    rig = np.stack([np.full(ny, x1 + 1.0), ys], 1)
    return np.concatenate([top, bot, lef[1:-1], rig[1:-1]])


def rasterize(
    tris: np.ndarray, verts: np.ndarray, values: np.ndarray, origin: tuple[float, float], step: float, shape
) -> np.ndarray:
    """Piecewise-linear interpolation of per-vertex ``values`` over triangles ``tris`` at ``verts``.

    Evaluated on the grid ``origin + (j, i) * step`` of ``shape`` (gh, gw); points in
    no triangle get 0. Fixed topology (not a fresh Delaunay) keeps the lips' triangles
    semantic: the ones between the lips stretch when the mouth opens.
    """
    gh, gw = shape
    vals = values.reshape(len(values), -1)
    out = np.zeros((gh, gw, vals.shape[1]), np.float64)
    moving = np.any(vals[tris] != 0, axis=(1, 2))
    if not moving.any():
        return out
    t = tris[moving]
    P = (verts[t] - np.asarray(origin)) / step  # (T, 3, 2) in grid units
    lo = np.clip(np.ceil(P.min(1) - 1e-9), 0, [gw - 1, gh - 1]).astype(np.int64)
    hi = np.clip(np.floor(P.max(1) + 1e-9), -1, [gw - 1, gh - 1]).astype(np.int64)
    nx = np.maximum(hi[:, 0] - lo[:, 0] + 1, 0)
    ny = np.maximum(hi[:, 1] - lo[:, 1] + 1, 0)
    counts = nx * ny
    total = int(counts.sum())
    if total == 0:
        return out
    ti = np.repeat(np.arange(len(t)), counts)
    k = np.arange(total) - np.repeat(np.cumsum(counts) - counts, counts)
    ix = lo[ti, 0] + k % nx[ti]
    iy = lo[ti, 1] + k // nx[ti]
    p0, p1, p2 = P[ti, 0], P[ti, 1], P[ti, 2]
    v0, v1 = p1 - p0, p2 - p0
    v2 = np.stack([ix, iy], 1) - p0
    den = v0[:, 0] * v1[:, 1] - v1[:, 0] * v0[:, 1]
    ok = np.abs(den) > 1e-12
    den = np.where(ok, den, 1.0)
    b1 = (v2[:, 0] * v1[:, 1] - v1[:, 0] * v2[:, 1]) / den
    b2 = (v0[:, 0] * v2[:, 1] - v2[:, 0] * v0[:, 1]) / den
    b0 = 1 - b1 - b2
    inside = ok & (b0 >= -1e-7) & (b1 >= -1e-7) & (b2 >= -1e-7)
    V = vals[t]  # (T, 3, C)
    val = b0[:, None] * V[ti, 0] + b1[:, None] * V[ti, 1] + b2[:, None] * V[ti, 2]
    out[iy[inside], ix[inside]] = val[inside]
    return out


def _mouth_colors(image: np.ndarray, lm: np.ndarray) -> dict:
    """Lip and skin colours sampled from the photo, to shade a synthesised mouth interior."""
    h, w = image.shape[:2]

    def sample(idx: tuple[int, ...]) -> list[float]:
        pts = np.clip(np.round(lm[list(idx), :2]).astype(int), 0, [w - 1, h - 1])
        return np.median(image[pts[:, 1], pts[:, 0]].astype(np.float64), axis=0).tolist()

    lip = sample(LOWER_OUTER[2:-2] + (17, 84, 314, 16, 15, 85, 315))
    skin = sample((50, 280, 101, 330, 205, 425, 36, 266))
    return {"lip_rgb": lip, "skin_rgb": skin}
