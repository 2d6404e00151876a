"""RGB frames -> I420 (YUV 4:2:0) planes, the format both VP8 (live) and H.264 (offline) encode.

OpenCV's conversion is several times faster than libswscale's for this, and the renderer's
contract (only its ``roi`` changes between frames) lets :class:`I420Converter` convert just the
animated region. Framework-free: used by the live session and the offline writer alike.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

import av
import cv2
import numpy as np

log = logging.getLogger(__name__)


def rgb_to_i420(rgb: np.ndarray) -> np.ndarray:
    """RGB uint8 (H, W, 3) -> I420 planes (BT.601 limited range, what H.264 players expect)."""
    return cv2.cvtColor(rgb, cv2.COLOR_RGB2YUV_I420)


class I420Converter:
    """RGB frames of one renderer -> I420, converting only the renderer's animated region.

    Outside ``renderer.roi`` every frame equals ``renderer.background`` (the renderer's
    contract), so that part is converted once. The region is widened to even
    coordinates, where 4:2:0 chroma blocks are whole, so the result is bit-identical to
    converting the full frame. The first frame of every chunk is checked against the
    contract; a renderer without ``roi``/``background``, or one that breaks it, gets
    full-frame conversion. :meth:`region` takes just the region (``render_region``), so
    no whole RGB frame need exist at all.
    """

    def __init__(self, renderer: Any) -> None:
        roi, background = getattr(renderer, "roi", None), getattr(renderer, "background", None)
        self.box: tuple[int, int, int, int] | None = None
        self._roi: tuple[int, ...] | None = None if roi is None else tuple(int(v) for v in roi)
        if roi is None or background is None:
            return
        height, width = background.shape[:2]
        x0, y0, x1, y1 = (int(v) for v in roi)
        x0, y0 = max(0, x0 - x0 % 2), max(0, y0 - y0 % 2)
        x1, y1 = min(width, x1 + x1 % 2), min(height, y1 + y1 % 2)
        if x1 <= x0 or y1 <= y0 or width % 2 or height % 2:
            return
        self.box = (x0, y0, x1, y1)
        self._background = background
        self._base = rgb_to_i420(np.ascontiguousarray(background))
        self._lock = threading.Lock()

    def _outside_matches(self, rgb: np.ndarray) -> bool:
        assert self.box is not None
        x0, y0, x1, y1 = self.box
        probe = rgb.copy()
        probe[y0:y1, x0:x1] = self._background[y0:y1, x0:x1]
        return np.array_equal(probe, self._background)

    def __call__(self, rgb: np.ndarray, check: bool = False) -> np.ndarray:
        box = self.box
        if box is not None and check and not self._outside_matches(rgb):
            log.warning("renderer draws outside its roi; converting whole frames")
            with self._lock:
                self.box = box = None
        if box is None:
            return rgb_to_i420(rgb)
        x0, y0, x1, y1 = box
        return self._compose(np.ascontiguousarray(rgb[y0:y1, x0:x1]))

    def region(self, warped: np.ndarray | None) -> np.ndarray:
        """I420 of the frame that is the background with ``warped`` at the renderer's roi.

        ``warped`` is what ``renderer.render_region`` returns (None: the photo itself): the
        same planes as converting that whole frame, without ever building it. Needs a
        usable ``box``.
        """
        if self.box is None or self._roi is None:
            raise ValueError("this renderer has no animated region to convert")
        if warped is None:
            return self._base.copy()
        rx0, ry0, rx1, ry1 = self._roi
        x0, y0, x1, y1 = self.box
        if (x0, y0, x1, y1) == (rx0, ry0, rx1, ry1):
            return self._compose(np.ascontiguousarray(warped))
        sub = self._background[y0:y1, x0:x1].copy()  # the roi widened to even coordinates
        sub[ry0 - y0 : ry1 - y0, rx0 - x0 : rx1 - x0] = warped
        return self._compose(sub)

    def _compose(self, sub_rgb: np.ndarray) -> np.ndarray:
        """The base planes with the box's converted pixels (``sub_rgb``, contiguous) pasted in."""
        assert self.box is not None
        x0, y0, x1, y1 = self.box
        height, width = self._background.shape[:2]
        out = self._base.copy()
        sub = cv2.cvtColor(sub_rgb, cv2.COLOR_RGB2YUV_I420)
        h, w = y1 - y0, x1 - x0
        out[y0:y1, x0:x1] = sub[:h]
        # Chroma planes, as flat views: U then V, each (height/2, width/2), after the luma.
        flat, sflat = out.reshape(-1), sub.reshape(-1)
        plane, splane = (height // 2) * (width // 2), (h // 2) * (w // 2)
        for k in range(2):
            dst = flat[height * width + k * plane : height * width + (k + 1) * plane].reshape(
                height // 2, width // 2
            )
            src = sflat[h * w + k * splane : h * w + (k + 1) * splane].reshape(h // 2, w // 2)
            dst[y0 // 2 : y1 // 2, x0 // 2 : x1 // 2] = src
        return out


def i420_frame(yuv: np.ndarray) -> av.VideoFrame:
    """A ``yuv420p`` video frame of I420 planes ((H * 3 // 2, W) uint8), without a copy where safe.

    PyAV's zero-copy wrapper gets the height wrong unless it is a multiple of 4 (a 334-high
    frame comes out 332 high), so other heights are copied. The frame keeps a reference to
    ``yuv``: do not write to the array afterwards.
    """
    if (yuv.shape[0] * 2 // 3) % 4 == 0:
        return av.VideoFrame.from_numpy_buffer(np.ascontiguousarray(yuv), format="yuv420p")
    return av.VideoFrame.from_ndarray(yuv, format="yuv420p")
