"""PortraitRenderer: an avatar bundle + one motion frame -> one RGB video frame.

Per frame, on one core, in about a millisecond at 512x512:

1. turn the motion vector into weights of the bundle's precomputed warp fields
   (lip gap, lids, brows, head pose, ...), see :func:`field_weights`;
2. blend the active fields on a coarse grid over the head region, compose the head
   pose with the face fields, upsample to a dense backward map (lips and lids come
   from full-resolution patches) and ``cv2.remap`` only that region;
3. paint the inside of the mouth where the lips part beyond the photo's own
   opening (``realtime.mouth_interior``);
4. paste into a copy of the resized photo. Fields fall smoothly to exactly zero
   inside the region, so there is no seam and everything else is pixel-identical.

The renderer is stateless per frame apart from a one-frame cache (a repeated motion
vector returns the same image without work), and safe to share between threads.
"""

from __future__ import annotations

import math
import threading

import cv2
import numpy as np

from realtime.avatar import AvatarBundle
from realtime.motion import CHANNELS, N_CHANNELS, clip_motion, idx
from realtime.mouth_interior import paint_mouth
from realtime.render_fields import FIELD_INDEX, FIELDS, POSE_REF_DEG, rasterize

BACKENDS = ("cpu", "torch")
_LINEAR_FIELDS = [(FIELD_INDEX[n], idx(n)) for n in FIELDS if n in CHANNELS and not n.startswith("head")]
_POSE_FIELDS = [(FIELD_INDEX[n], idx(n)) for n in ("headPitch", "headYaw", "headRoll")]


def field_weights(motion: np.ndarray, meta: dict) -> np.ndarray:
    """Weights of ``render_fields.FIELDS`` for one (clipped) motion vector.

    The lips' vertical gap is one number: jaw and lower-lip drop, reduced by
    ``mouthClose``. It is compared with the photo's own gap: below it the "close"
    field shuts the photo's mouth (so an open-mouth photo rests closed), above it
    the "open" field drops the jaw further.
    """
    m = motion
    w = np.zeros(len(FIELDS), np.float32)
    close = float(m[idx("mouthClose")])
    lower = 0.5 * float(m[idx("mouthLowerDownLeft")] + m[idx("mouthLowerDownRight")])
    gap = (meta["jaw_px"] * float(m[idx("jawOpen")]) + meta["lower_down_px"] * lower) * (1.0 - close)
    gap0 = float(meta["gap0"]) if meta.get("photo_open") else 0.0
    if gap >= gap0:
        w[FIELD_INDEX["open"]] = (gap - gap0) / meta["open_fit_px"]
    else:
        w[FIELD_INDEX["close"]] = min(1.0, (gap0 - gap) / max(gap0, 1e-6))
    for fi, ci in _LINEAR_FIELDS:
        w[fi] = m[ci]
    for fi, ci in _POSE_FIELDS:
        w[fi] = m[ci] / POSE_REF_DEG
    return w


class PortraitRenderer:
    """Animates one avatar bundle at an output size whose shorter side is ``min_resolution``."""

    def __init__(self, bundle: AvatarBundle, min_resolution: int = 512, backend: str = "cpu") -> None:
        if backend not in BACKENDS:
            raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
        if not isinstance(min_resolution, int | np.integer) or not 64 <= int(min_resolution) <= 4096:
            raise ValueError("min_resolution must be an integer in 64..4096")
        self.bundle = bundle
        self.backend = backend
        h_img, w_img = bundle.image.shape[:2]
        res = int(min_resolution) + int(min_resolution) % 2
        s = res / min(h_img, w_img)
        out_w = res if w_img <= h_img else 2 * round(w_img * s / 2)
        out_h = res if h_img < w_img else 2 * round(h_img * s / 2)
        self.size: tuple[int, int] = (out_w, out_h)
        sx, sy = out_w / w_img, out_h / h_img
        self._scale = (sx, sy)
        if (out_w, out_h) == (w_img, h_img):
            bg = bundle.image.copy()
        else:
            interp = cv2.INTER_AREA if s < 1 else cv2.INTER_CUBIC
            bg = cv2.resize(bundle.image, (out_w, out_h), interpolation=interp)
        self.background = np.ascontiguousarray(bg)
        self.background.setflags(write=False)

        meta = bundle.meta
        e_out = float(meta["eye_distance"]) * s
        r = int(np.clip(round(e_out / 12.0), 2, 8))  # grid cell in output pixels
        bx0, by0, bx1, by1 = (float(v) for v in bundle.roi)
        rx0 = max(0, int(math.floor(bx0 * sx)))
        ry0 = max(0, int(math.floor(by0 * sy)))
        gw = int(math.ceil((min(out_w, math.ceil(bx1 * sx)) - rx0) / r))
        gh = int(math.ceil((min(out_h, math.ceil(by1 * sy)) - ry0) / r))
        self._grid = (gh, gw, r)
        self._roi = (rx0, ry0, min(out_w, rx0 + gw * r), min(out_h, ry0 + gh * r))
        # resample the bundle's fields onto this renderer's grid (cell centres), in output pixels
        cx = rx0 + (np.arange(gw) + 0.5) * r - 0.5
        cy = ry0 + (np.arange(gh) + 0.5) * r - 0.5
        mx = ((cx + 0.5) / sx - 0.5 - bx0) / bundle.grid_step
        my = ((cy + 0.5) / sy - 0.5 - by0) / bundle.grid_step
        MX, MY = np.meshgrid(mx.astype(np.float32), my.astype(np.float32))
        fields = np.empty((len(FIELDS), gh, gw, 2), np.float32)
        for i in range(len(FIELDS)):
            f = bundle.fields[i].astype(np.float32)
            fields[i] = cv2.remap(f, MX, MY, cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT, borderValue=0)
        fields *= np.array([sx, sy], np.float32)
        fields[np.abs(fields) < 1e-3] = 0.0  # keep the still parts exactly still
        self._fields = np.ascontiguousarray(fields.reshape(len(FIELDS), -1))
        self._face_mask = np.array([0.0 if n.startswith("head") else 1.0 for n in FIELDS], np.float32)
        self._feather = float(r + 1)
        self._patches = self._detail_patches(fields)
        x0, y0, x1, y1 = self._roi
        bx, by = np.meshgrid(np.arange(x0, x1, dtype=np.float32), np.arange(y0, y1, dtype=np.float32))
        self._base = np.ascontiguousarray(np.dstack([bx, by]))  # (h, w, 2) absolute pixel coordinates
        gh, gw, r = self._grid
        cx, cy = np.meshgrid(np.arange(gw, dtype=np.float32), np.arange(gh, dtype=np.float32))
        self._cells = np.ascontiguousarray(np.dstack([cx, cy]))  # coarse cell indices
        # ROI pixel -> coarse cell coordinate (as cv2.resize samples), as remap maps over the whole ROI
        # (each frame samples a window of them)
        h, w = y1 - y0, x1 - x0
        cell_x = ((np.arange(w, dtype=np.float32) + 0.5) / r - 0.5)[None, :]
        cell_y = ((np.arange(h, dtype=np.float32) + 0.5) / r - 0.5)[:, None]
        self._pix_cells = (
            np.ascontiguousarray(np.broadcast_to(cell_x, (h, w))),
            np.ascontiguousarray(np.broadcast_to(cell_y, (h, w))),
        )
        # per detail patch, rows of interleaved (x, y) constants as long as the ROI is wide, so the
        # per-pixel composition runs on (rows, 2 * width) arrays: numpy's inner loops stay long
        self._patch_rows = [
            (
                np.tile(np.array([x0 + px0, y0 + py0], np.float32), w),  # patch origin in the frame
                np.tile(np.array([px1 - px0 - 0.5, py1 - py0 - 0.5], np.float32), w),  # far edges
                np.flatnonzero(np.any(pf, axis=1)),  # fields that move anything in the patch
            )
            for py0, py1, px0, px1, pf, *_ in self._patches
        ]
        # mesh vertices of the mouth's split lines, for the painted interior
        up = np.array(meta["split_upper"])
        lo = np.array(meta["split_lower"])
        sc = np.array([sx, sy], np.float32)
        self._split_pts = ((bundle.vertices[up] + 0.5) * sc - 0.5, (bundle.vertices[lo] + 0.5) * sc - 0.5)
        self._split_disp = (bundle.vertex_disp[:, up] * sc, bundle.vertex_disp[:, lo] * sc)
        self._mouth = {
            "angle": float(meta["angle"]),
            "eye_distance": e_out,
            "lip_rgb": np.array(meta["lip_rgb"], np.float32),
            "skin_rgb": np.array(meta["skin_rgb"], np.float32),
            "teeth": not meta.get("photo_open", False),
            "seam": 0.0,  # per frame: how shut an open-mouth photo's lips are
        }
        self._lock = threading.Lock()
        self._last: tuple[bytes, np.ndarray | None] | None = None
        self._torch = _TorchWarp(self.background) if backend == "torch" else None

    def _detail_patches(self, coarse: np.ndarray) -> list[tuple]:
        """Full-resolution fields where the warp is sharp (lips, lids); a coarse grid would smear them.

        Mesh fields are rasterised per output pixel (pose fields stay on the coarse
        grid). Returns (y0, y1, x0, x1, fields, feather alpha) in ROI coordinates.
        """
        b = self.bundle
        sx, sy = self._scale
        sc = np.array([sx, sy])
        verts = (b.vertices.astype(np.float64) + 0.5) * sc - 0.5
        disp = b.vertex_disp.astype(np.float64) * sc
        gh, gw, r = self._grid
        rx0, ry0, rx1, ry1 = self._roi
        out = []
        for box in b.meta.get("patches", []):
            px0 = int(np.clip(math.floor(box[0] * sx), rx0, rx1))
            py0 = int(np.clip(math.floor(box[1] * sy), ry0, ry1))
            px1 = int(np.clip(math.ceil(box[2] * sx) + 1, rx0, rx1))
            py1 = int(np.clip(math.ceil(box[3] * sy) + 1, ry0, ry1))
            ph, pw = py1 - py0, px1 - px0
            if ph <= 0 or pw <= 0:
                continue
            f = np.zeros((len(FIELDS), ph, pw, 2), np.float32)
            for i, name in enumerate(FIELDS):
                if name.startswith("head"):
                    continue  # pose is smooth: the coarse grid carries it
                if self._touches(verts, verts + disp[i], (px0, py0, px1, py1)):
                    f[i] = rasterize(b.triangles, verts + disp[i], -disp[i], (px0, py0), 1.0, (ph, pw))
            f[np.abs(f) < 1e-3] = 0.0
            # fields that are sharp here (differ from their coarse version): while none of them
            # is active the patch adds nothing, and it is skipped
            gx = ((np.arange(px0, px1) - rx0 + 0.5) / r - 0.5).astype(np.float32)
            gy = ((np.arange(py0, py1) - ry0 + 0.5) / r - 0.5).astype(np.float32)
            GX, GY = np.meshgrid(gx, gy)
            sharp = []
            for i in range(len(FIELDS)):
                if np.any(f[i]):
                    c = cv2.remap(coarse[i], GX, GY, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
                    if np.abs(c - f[i]).max() > 0.25:
                        sharp.append(i)
            # feather: the patch blends into the coarse field over about a cell, so any small
            # difference between the two is spread out instead of showing as a seam
            ey = np.minimum(np.arange(ph) + 0.5, ph - np.arange(ph) - 0.5) / self._feather
            ex = np.minimum(np.arange(pw) + 0.5, pw - np.arange(pw) - 0.5) / self._feather
            alpha = np.clip(np.minimum(ey[:, None], ex[None, :]), 0.0, 1.0).astype(np.float32)
            f = np.ascontiguousarray(f.reshape(len(FIELDS), -1))
            out.append((py0 - ry0, py1 - ry0, px0 - rx0, px1 - rx0, f, alpha, np.array(sharp, np.int64)))
        return out

    def _touches(self, before: np.ndarray, after: np.ndarray, box: tuple[int, int, int, int]) -> bool:
        """Whether a moving triangle of the mesh overlaps ``box`` before or after the move."""
        tris = self.bundle.triangles
        moved = np.any(before[tris] != after[tris], axis=(1, 2))
        if not moved.any():
            return False
        pts = np.concatenate([before[tris[moved]], after[tris[moved]]], axis=1)  # (T, 6, 2)
        lo, hi = pts.min(axis=1), pts.max(axis=1)
        x0, y0, x1, y1 = box
        return bool(np.any((hi[:, 0] >= x0) & (lo[:, 0] <= x1) & (hi[:, 1] >= y0) & (lo[:, 1] <= y1)))

    @property
    def roi(self) -> tuple[int, int, int, int]:
        """The animated region (x0, y0, x1, y1) in output pixels; outside it frames equal the photo."""
        return self._roi

    def render(self, motion: np.ndarray) -> np.ndarray:
        """One frame, (H, W, 3) uint8 RGB, for a (N_CHANNELS,) motion vector (any values; NaN = rest).

        A ``MotionFrame`` is accepted too. The caller owns the returned array.
        """
        warped = self.render_region(motion)
        frame = self.background.copy()
        if warped is not None:
            x0, y0, x1, y1 = self._roi
            frame[y0:y1, x0:x1] = warped
        return frame

    def render_region(self, motion: np.ndarray) -> np.ndarray | None:
        """Only the animated region of :meth:`render`'s frame: (y1 - y0, x1 - x0, 3) uint8 at ``roi``.

        None when the frame equals the photo (rest pose). The array is read-only and may be
        returned again for the same motion. Callers that convert or encode just the region
        (offline I420) skip building, and then reading, a whole frame.
        """
        values = getattr(motion, "values", motion)  # MotionFrame or array
        m = np.asarray(values, dtype=np.float32).reshape(-1)
        if m.shape != (N_CHANNELS,):
            raise ValueError(f"motion must have {N_CHANNELS} values, got {m.shape[0]}")
        m = clip_motion(m)
        key = m.tobytes()
        with self._lock:
            last = self._last
        if last is not None and last[0] == key:
            return last[1]  # the same motion again (idle, a held frame): no warp work
        warped = self._warp(m)
        with self._lock:
            self._last = (key, warped)
        return warped

    def _warp(self, m: np.ndarray) -> np.ndarray | None:
        """The animated region for one clipped motion vector, or None when it equals the photo."""
        w = field_weights(m, self.bundle.meta)
        if not np.any(w):
            return None
        x0, y0, x1, y1 = self._roi
        coarse = self._coarse(w)  # shared by the warp and the mouth lines
        maps = self._maps(w, coarse)
        if self._torch is not None:
            warped = self._torch.warp(maps)
        else:
            m1, m2 = cv2.convertMaps(maps, None, cv2.CV_16SC2)
            warped = cv2.remap(self.background, m1, m2, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
        up, lo = self._mouth_lines(w, coarse[1])
        info = self._mouth
        if self.bundle.meta.get("photo_open"):
            # the seam line only where the photo's lips are (nearly) shut, never across visible teeth
            shut = float(w[FIELD_INDEX["close"]])
            info = {**info, "seam": float(np.clip((shut - 0.7) / 0.3, 0.0, 1.0)) ** 2}
        paint_mouth(warped, (x0, y0), up, lo, info)
        warped.setflags(write=False)
        return warped

    def _mouth_lines(self, w: np.ndarray, pose_c: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
        """Where the mouth's split lines land in the frame (output pixels).

        Face fields move them forward (exact per vertex); the head pose is then applied
        by inverting the *same* backward pose field the warp uses, so the painted mouth
        sits exactly on the warped lips (``pose_c``: that field on the coarse grid, None
        without pose).
        """
        w_face = w * self._face_mask
        active = np.nonzero(w_face)[0]
        weights = w_face[active].reshape(1, -1)
        # the product np.tensordot(weights, disp, axes=1) computes, without its Python overhead
        lines = [
            pts + np.dot(weights, disp[active].reshape(len(active), pts.size)).reshape(pts.shape)
            for pts, disp in zip(self._split_pts, self._split_disp, strict=True)
        ]
        if pose_c is None:
            return lines[0], lines[1]
        r = self._grid[2]
        x0, y0 = self._roi[:2]
        p = np.concatenate(lines).astype(np.float32)
        q = p.copy()
        for _ in range(4):  # fixed point of q + B(q) = p; B is smooth and small
            cells = ((q - [x0, y0] + 0.5) / r - 0.5).astype(np.float32)[None]
            b = cv2.remap(
                pose_c, cells[..., 0], cells[..., 1], cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE
            )
            q = p - b[0]
        n = len(lines[0])
        return q[:n], q[n:]

    @staticmethod
    def _blend(w: np.ndarray, fields: np.ndarray, live: np.ndarray | None = None) -> np.ndarray:
        """Sum of weighted fields over the non-zero weights (most are zero; BLAS would add thread overhead).

        ``live``: indices of the fields that are not all zero in ``fields`` (the others add nothing).
        """
        out = np.zeros(fields.shape[1], np.float32)
        for i in np.nonzero(w)[0] if live is None else live[w[live] != 0]:
            out += w[i] * fields[i]
        return out

    def _coarse(self, w: np.ndarray) -> tuple[np.ndarray | None, np.ndarray | None]:
        """The face and the pose parts of the warp on the coarse grid, (gh, gw, 2); None where all zero."""
        gh, gw, _ = self._grid
        w_face = w * self._face_mask
        w_pose = w - w_face
        face_c = self._blend(w_face, self._fields).reshape(gh, gw, 2) if np.any(w_face) else None
        pose_c = self._blend(w_pose, self._fields).reshape(gh, gw, 2) if np.any(w_pose) else None
        return face_c, pose_c

    def _maps(
        self, w: np.ndarray, coarse: tuple[np.ndarray | None, np.ndarray | None] | None = None
    ) -> np.ndarray:
        """Absolute source coordinates (h, w, 2) float32 for every ROI pixel.

        Face fields (lips, lids, brows) are sharp and defined on the still photo, so the
        head pose is *composed* with them (face after un-posing), not added: adding
        would slide the lip closure off the lips as the head moves. The smooth part is
        composed on the coarse grid; the sharp patches per pixel.
        """
        gh, gw, r = self._grid
        x0, y0, x1, y1 = self._roi
        h, w_ = y1 - y0, x1 - x0
        w_face = w * self._face_mask
        face_c, pose_c = self._coarse(w) if coarse is None else coarse
        has_face, has_pose = face_c is not None, pose_c is not None
        if not has_pose:
            total_c = face_c
        elif not has_face:
            total_c = pose_c
        else:
            at = self._cells + pose_c / r  # where each cell's content comes from, in cell units
            total_c = pose_c + cv2.remap(face_c, at, None, cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT)
        maps = cv2.resize(total_c, (gw * r, gh * r), interpolation=cv2.INTER_LINEAR)[:h, :w_]
        maps += self._base
        if not has_face:
            return maps
        reach = int(np.ceil(np.abs(pose_c).max() + 1)) if has_pose else 0
        for (py0, py1, px0, px1, pf, alpha, sharp), (origin, far, live) in zip(
            self._patches, self._patch_rows, strict=True
        ):
            if not np.any(w_face[sharp]):
                continue  # only fields that are smooth here are active: the coarse grid is exact enough
            fine = self._blend(w_face, pf, live).reshape(py1 - py0, px1 - px0, 2)
            if not has_pose:
                cur = maps[py0:py1, px0:px1]
                cur += alpha[..., None] * (self._base[py0:py1, px0:px1] + fine - cur)
                continue
            # output pixels whose un-posed position may fall in the patch
            qy0, qx0 = max(py0 - reach, 0), max(px0 - reach, 0)
            qy1, qx1 = min(py1 + reach, h), min(px1 + reach, w_)
            qh, qw2 = qy1 - qy0, 2 * (qx1 - qx0)
            cx, cy = (c[qy0:qy1, qx0:qx1] for c in self._pix_cells)
            pose = cv2.remap(pose_c, cx, cy, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
            src = self._base[qy0:qy1, qx0:qx1] + pose  # un-posed position (absolute)
            region = maps[qy0:qy1, qx0:qx1]
            face = region - src  # the coarse face part there
            at = (src.reshape(qh, qw2) - origin[:qw2]).reshape(src.shape)  # in patch coordinates
            # the fine field at the un-posed positions, blended in by the feather there
            got = face.copy()
            cv2.remap(fine, at, None, cv2.INTER_LINEAR, dst=got, borderMode=cv2.BORDER_TRANSPARENT)
            # distance to the patch's nearest edge: min over x and y of min(at + 0.5, far - at)
            flat = at.reshape(qh, qw2)
            edge = flat + 0.5
            np.minimum(edge, far[:qw2] - flat, out=edge)
            pairs = edge.reshape(-1, 2)
            a = np.clip(np.minimum(pairs[:, 0], pairs[:, 1]) * (1.0 / self._feather), 0.0, 1.0)
            blend = np.repeat(a, 2).reshape(src.shape) * (got - face)
            np.add(src + face, blend, out=region)
        return maps


class _TorchWarp:
    """The remap done with torch ``grid_sample``: on the GPU when there is one (tested on CPU for parity)."""

    def __init__(self, background: np.ndarray) -> None:
        import torch

        self.torch = torch
        self.device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        h, w = background.shape[:2]
        src = torch.from_numpy(background.astype(np.float32)).permute(2, 0, 1)[None].contiguous()
        self.src = src.to(self.device)
        self.scale = torch.tensor([2.0 / max(w - 1, 1), 2.0 / max(h - 1, 1)], device=self.device)

    def warp(self, maps: np.ndarray) -> np.ndarray:
        torch = self.torch
        with torch.no_grad():
            grid = torch.from_numpy(maps).to(self.device) * self.scale - 1.0
            out = torch.nn.functional.grid_sample(
                self.src, grid[None], mode="bilinear", padding_mode="border", align_corners=True
            )
            return out[0].permute(1, 2, 0).round().clamp(0, 255).to(torch.uint8).cpu().numpy().copy()
