"""PortraitRenderer: shapes, determinism, pixel identity outside the head, extreme inputs."""

from __future__ import annotations

import numpy as np
import pytest

from realtime.avatar import register_avatar
from realtime.motion import N_CHANNELS, idx, neutral
from realtime.renderer import PortraitRenderer

ASTRONAUT = "models/avatars/astronaut.png"


@pytest.fixture(scope="module")
def bundle():
    return register_avatar(ASTRONAUT)


@pytest.fixture(scope="module")
def renderer(bundle):
    return PortraitRenderer(bundle, 512)


def test_size_and_dtype(renderer):
    frame = renderer.render(neutral())
    assert renderer.size == (512, 512)
    assert frame.shape == (512, 512, 3) and frame.dtype == np.uint8


def test_same_motion_same_frame(renderer):
    m = neutral()
    m[idx("jawOpen")] = 0.6
    a = renderer.render(m)
    b = renderer.render(m.copy())
    assert np.array_equal(a, b)


def test_jaw_changes_mouth_only(renderer):
    m = neutral()
    rest = renderer.render(m)
    m[idx("jawOpen")] = 0.8
    open_ = renderer.render(m)
    assert np.abs(open_.astype(int) - rest).max() > 40
    x0, y0, x1, y1 = renderer.roi
    outside = np.ones(open_.shape[:2], bool)
    outside[y0:y1, x0:x1] = False
    assert np.array_equal(open_[outside], renderer.background[outside])


@pytest.mark.parametrize("value", [np.nan, np.inf, -np.inf, 1e9, -1e9])
def test_extreme_values(renderer, value):
    frame = renderer.render(np.full(N_CHANNELS, value, np.float32))
    assert frame.shape == (512, 512, 3)
