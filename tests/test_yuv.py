"""I420 frames: the zero-copy wrapper only where PyAV gets the geometry right."""

from __future__ import annotations

import numpy as np
import pytest

from realtime.yuv import i420_frame, rgb_to_i420


@pytest.mark.parametrize(("height", "width"), [(512, 512), (334, 256), (336, 250), (1026, 768)])
def test_i420_frame_keeps_every_plane(height: int, width: int) -> None:
    rng = np.random.default_rng(height + width)
    yuv = rgb_to_i420(rng.integers(0, 256, (height, width, 3), np.uint8))
    frame = i420_frame(yuv)
    assert (frame.height, frame.width, frame.format.name) == (height, width, "yuv420p")
    np.testing.assert_array_equal(frame.to_ndarray(format="yuv420p"), yuv)
