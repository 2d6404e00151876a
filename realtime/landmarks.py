"""Face detection and the 468-point face mesh, run with LiteRT (ai-edge-litert).

This re-implements the parts of MediaPipe's face-mesh graph that live outside the
models: SSD anchor decoding and weighted NMS for the BlazeFace detectors, and the
rotated face crop that the landmark model expects. Models come from
``scripts/fetch_models.py``; nothing is downloaded at run time.
"""

from __future__ import annotations

import math
import threading
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

MODEL_DIR = Path(__file__).resolve().parent.parent / "models" / "facemesh"
SHORT_RANGE = "face_detection_short_range.tflite"
FULL_RANGE = "face_detection_full_range_sparse.tflite"
LANDMARK = "face_landmark.tflite"

# Mesh indices used across the renderer and tests (MediaPipe canonical face mesh).
RIGHT_EYE_OUTER, RIGHT_EYE_INNER = 33, 133  # subject's right eye: image left for a frontal photo
LEFT_EYE_INNER, LEFT_EYE_OUTER = 362, 263
UPPER_INNER_LIP, LOWER_INNER_LIP = 13, 14
MOUTH_RIGHT, MOUTH_LEFT = 61, 291
FACE_OVAL = (
    10, 338, 297, 332, 284, 251, 389, 356, 454, 323, 361, 288, 397, 365, 379, 378, 400, 377,
    152, 148, 176, 149, 150, 136, 172, 58, 132, 93, 234, 127, 162, 21, 54, 103, 67, 109,
)  # fmt: skip


class ModelsMissingError(FileNotFoundError):
    """The face-mesh model files are not installed."""


@dataclass(frozen=True)
class Detection:
    """A detected face in image pixels: box (x0, y0, x1, y1), 6 keypoints (x, y) and a score."""

    box: np.ndarray
    keypoints: np.ndarray
    score: float

    @property
    def area(self) -> float:
        return float(max(0.0, self.box[2] - self.box[0]) * max(0.0, self.box[3] - self.box[1]))


@dataclass(frozen=True)
class Face:
    """One face: its detection, 468 landmarks (x, y in image pixels, z relative) and mesh confidence."""

    detection: Detection
    landmarks: np.ndarray  # (468, 3) float32
    presence: float

    @property
    def box(self) -> np.ndarray:
        """Tight landmark bounding box (x0, y0, x1, y1)."""
        xy = self.landmarks[:, :2]
        return np.concatenate([xy.min(axis=0), xy.max(axis=0)]).astype(np.float32)

    @property
    def eye_distance(self) -> float:
        """Distance between the eye centres, the face's scale unit."""
        return float(np.linalg.norm(eye_centers(self.landmarks)[1] - eye_centers(self.landmarks)[0]))


def eye_centers(landmarks: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Centres of the subject's right and left eye (image left/right for a frontal photo)."""
    right = (landmarks[RIGHT_EYE_OUTER, :2] + landmarks[RIGHT_EYE_INNER, :2]) / 2
    left = (landmarks[LEFT_EYE_OUTER, :2] + landmarks[LEFT_EYE_INNER, :2]) / 2
    return right.astype(np.float32), left.astype(np.float32)


def _ssd_anchors(input_size: int, strides: list[int], interpolated: bool) -> np.ndarray:
    """Anchor centres of MediaPipe's SsdAnchorsCalculator with fixed_anchor_size (w = h = 1)."""
    anchors: list[np.ndarray] = []
    i = 0
    while i < len(strides):
        stride = strides[i]
        per_cell = 0
        while i < len(strides) and strides[i] == stride:
            per_cell += 2 if interpolated else 1
            i += 1
        n = int(math.ceil(input_size / stride))
        ys, xs = np.meshgrid((np.arange(n) + 0.5) / n, (np.arange(n) + 0.5) / n, indexing="ij")
        centers = np.stack([xs.ravel(), ys.ravel()], axis=1)
        anchors.append(np.repeat(centers, per_cell, axis=0))
    return np.concatenate(anchors).astype(np.float32)


@dataclass(frozen=True)
class _DetectorSpec:
    file: str
    size: int
    strides: list[int]
    interpolated: bool
    min_score: float


_SPECS = (
    _DetectorSpec(SHORT_RANGE, 128, [8, 16, 16, 16], True, 0.5),
    _DetectorSpec(FULL_RANGE, 192, [4], False, 0.6),
)


def _iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    x0 = np.maximum(a[0], b[:, 0])
    y0 = np.maximum(a[1], b[:, 1])
    x1 = np.minimum(a[2], b[:, 2])
    y1 = np.minimum(a[3], b[:, 3])
    inter = np.clip(x1 - x0, 0, None) * np.clip(y1 - y0, 0, None)
    area_a = (a[2] - a[0]) * (a[3] - a[1])
    area_b = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    return inter / np.maximum(area_a + area_b - inter, 1e-9)


def _weighted_nms(boxes: np.ndarray, kps: np.ndarray, scores: np.ndarray, thresh: float = 0.3):
    """MediaPipe's weighted non-max suppression: overlapping boxes are averaged by score."""
    order = np.argsort(-scores)
    boxes, kps, scores = boxes[order], kps[order], scores[order]
    out = []
    remaining = np.ones(len(scores), dtype=bool)
    for i in range(len(scores)):
        if not remaining[i]:
            continue
        overlap = _iou(boxes[i], boxes) > thresh
        group = overlap & remaining
        remaining &= ~group
        w = scores[group][:, None]
        box = (boxes[group] * w).sum(0) / w.sum()
        kp = (kps[group] * w[:, :, None]).sum(0) / w.sum()
        out.append((box, kp, float(scores[i])))
    return out


class FaceMesh:
    """Face detector + landmark model. Thread-safe (one lock per instance)."""

    def __init__(self, model_dir: str | Path | None = None) -> None:
        from ai_edge_litert.interpreter import Interpreter

        root = Path(model_dir) if model_dir is not None else MODEL_DIR
        missing = [f for f in (SHORT_RANGE, FULL_RANGE, LANDMARK) if not (root / f).is_file()]
        if missing:
            raise ModelsMissingError(
                f"face-mesh models missing in {root}: {', '.join(missing)} (run scripts/fetch_models.py)"
            )
        self._lock = threading.Lock()
        self._detectors = []
        for spec in _SPECS:
            it = Interpreter(model_path=str(root / spec.file), num_threads=1)
            it.allocate_tensors()
            self._detectors.append((spec, it, _ssd_anchors(spec.size, spec.strides, spec.interpolated)))
        self._mesh = Interpreter(model_path=str(root / LANDMARK), num_threads=1)
        self._mesh.allocate_tensors()

    # -- detection ------------------------------------------------------------
    def _run_detector(self, spec: _DetectorSpec, it, anchors: np.ndarray, image: np.ndarray):
        h, w = image.shape[:2]
        scale = spec.size / max(h, w)
        nh, nw = max(1, round(h * scale)), max(1, round(w * scale))
        canvas = np.zeros((spec.size, spec.size, 3), np.float32)
        oy, ox = (spec.size - nh) // 2, (spec.size - nw) // 2
        interp = cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR
        canvas[oy : oy + nh, ox : ox + nw] = cv2.resize(image, (nw, nh), interpolation=interp)
        inp = canvas / 127.5 - 1.0
        inp_d, out_d = it.get_input_details()[0], it.get_output_details()
        it.set_tensor(inp_d["index"], inp[None])
        it.invoke()
        outs = {d["name"]: it.get_tensor(d["index"])[0] for d in out_d}
        reg, cls = sorted(outs.values(), key=lambda a: -a.shape[-1])
        scores = 1.0 / (1.0 + np.exp(-np.clip(cls[:, 0].astype(np.float64), -80, 80)))
        keep = scores >= spec.min_score
        if not keep.any():
            return []
        reg, scores, anc = reg[keep] / spec.size, scores[keep], anchors[keep]
        cxy = reg[:, :2] + anc
        wh = reg[:, 2:4]
        boxes = np.concatenate([cxy - wh / 2, cxy + wh / 2], axis=1)
        kps = reg[:, 4:16].reshape(-1, 6, 2) + anc[:, None, :]
        dets = []
        for box, kp, score in _weighted_nms(boxes, kps, scores):
            # letterbox coords (0..1 of the square canvas) -> image pixels
            to_px = np.array([spec.size / scale, spec.size / scale], np.float32)
            off = np.array([ox / scale, oy / scale], np.float32)
            b = np.concatenate([box[:2] * to_px - off, box[2:] * to_px - off]).astype(np.float32)
            dets.append(Detection(b, (kp * to_px - off).astype(np.float32), score))
        return dets

    def detect(self, image: np.ndarray) -> list[Detection]:
        """Faces in an RGB uint8 image, largest first.

        Small faces: the short-range model misses faces under about half its input, so
        we fall back to the full-range model, then to overlapping tiles (an upscale).
        """
        with self._lock:
            for spec, it, anchors in self._detectors:
                dets = self._run_detector(spec, it, anchors, image)
                if dets:
                    return sorted(dets, key=lambda d: -d.area)
            return sorted(self._detect_tiled(image), key=lambda d: -d.area)

    def _detect_tiled(self, image: np.ndarray) -> list[Detection]:
        spec, it, anchors = self._detectors[0]
        h, w = image.shape[:2]
        found: list[Detection] = []
        for tile in (max(h, w) // 2, max(h, w) // 4):
            if tile < 96:
                break
            step = tile // 2
            for y in range(0, max(1, h - step), step):
                for x in range(0, max(1, w - step), step):
                    crop = image[y : y + tile, x : x + tile]
                    for d in self._run_detector(spec, it, anchors, crop):
                        if d.score < 0.65:  # many tiles, many chances: ask for more confidence
                            continue
                        off = np.array([x, y], np.float32)
                        found.append(Detection(d.box + np.tile(off, 2), d.keypoints + off, d.score))
            if found:
                break
        if not found:
            return []
        boxes = np.stack([d.box for d in found])
        kps = np.stack([d.keypoints for d in found])
        scores = np.array([d.score for d in found])
        return [
            Detection(b.astype(np.float32), k.astype(np.float32), s)
            for b, k, s in _weighted_nms(boxes, kps, scores)
        ]

    # -- landmarks ------------------------------------------------------------
    def _mesh_from_roi(self, image: np.ndarray, center: np.ndarray, side: float, angle: float):
        size = 192
        c, s = math.cos(angle), math.sin(angle)
        # affine taking crop pixels -> image pixels (axes along the eye line), inverted for warpAffine
        ux, uy = np.array([c, s]) * side / size, np.array([-s, c]) * side / size
        origin = center - ux * size / 2 - uy * size / 2
        crop_to_img = np.array([[ux[0], uy[0], origin[0]], [ux[1], uy[1], origin[1]]], np.float64)
        img_to_crop = cv2.invertAffineTransform(crop_to_img)
        crop = cv2.warpAffine(image, img_to_crop, (size, size), flags=cv2.INTER_LINEAR, borderValue=(0, 0, 0))
        inp = crop.astype(np.float32)[None] / 255.0
        self._mesh.set_tensor(self._mesh.get_input_details()[0]["index"], inp)
        self._mesh.invoke()
        outs = [self._mesh.get_tensor(d["index"]).reshape(-1) for d in self._mesh.get_output_details()]
        raw, flag = (outs[0], outs[1]) if outs[0].size > outs[1].size else (outs[1], outs[0])
        pts = raw.reshape(468, 3).astype(np.float64)
        xy = pts[:, :2] @ crop_to_img[:, :2].T + crop_to_img[:, 2]
        z = pts[:, 2] * side / size
        presence = 1.0 / (1.0 + math.exp(-float(np.clip(flag[0], -100, 100))))
        return np.concatenate([xy, z[:, None]], axis=1).astype(np.float32), presence

    @staticmethod
    def _roi(points: np.ndarray, a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, float, float]:
        """Rotated square ROI as MediaPipe builds it: box of points, rotated by the eye line, x1.5."""
        angle = math.atan2(float(b[1] - a[1]), float(b[0] - a[0]))
        c, s = math.cos(angle), math.sin(angle)
        rot = np.array([[c, s], [-s, c]])  # image -> face-aligned
        local = points @ rot.T
        lo, hi = local.min(0), local.max(0)
        center = ((lo + hi) / 2) @ rot  # back to image
        side = float(max(hi - lo)) * 1.5
        return center.astype(np.float64), side, angle

    def landmarks(self, image: np.ndarray, detection: Detection, refine: int = 1) -> Face:
        """468 landmarks for one detection; ``refine`` re-crops from the mesh itself (as tracking does)."""
        kp = detection.keypoints
        box = detection.box
        corners = np.array([[box[0], box[1]], [box[2], box[3]], [box[0], box[3]], [box[2], box[1]]])
        # MediaPipe rotates the detection box itself, so it keeps the box size and only turns it
        angle = math.atan2(float(kp[1, 1] - kp[0, 1]), float(kp[1, 0] - kp[0, 0]))
        center = corners.mean(0)
        side = float(max(box[2] - box[0], box[3] - box[1])) * 1.5
        with self._lock:
            pts, presence = self._mesh_from_roi(image, center, side, angle)
            for _ in range(refine):
                center, side, angle = self._roi(pts[:, :2], pts[RIGHT_EYE_OUTER, :2], pts[LEFT_EYE_OUTER, :2])
                pts, presence = self._mesh_from_roi(image, center, side, angle)
        return Face(detection, pts, presence)

    def faces(self, image: np.ndarray, max_faces: int = 4) -> list[Face]:
        """Detect faces and fit the mesh to each, largest first."""
        return [self.landmarks(image, d) for d in self.detect(image)[:max_faces]]
