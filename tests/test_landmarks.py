"""Face detection and the 468-point mesh (LiteRT) on the test portraits."""

from __future__ import annotations

import math

import cv2
import faces
import numpy as np
import pytest

from realtime.landmarks import FaceMesh, ModelsMissingError, eye_centers


@pytest.fixture(scope="module")
def mesh() -> FaceMesh:
    return FaceMesh()


@pytest.fixture(scope="module")
def reference(mesh):
    return mesh.faces(faces.astronaut())[0]


def test_astronaut_mesh(reference):
    lm = reference.landmarks
    assert lm.shape == (468, 3) and np.isfinite(lm).all()
    assert reference.presence > 0.9
    right, left = eye_centers(lm)
    # subject's right eye is on the image left; mouth below the eyes, chin below the mouth
    assert right[0] < left[0]
    assert lm[13, 1] > max(right[1], left[1]) and lm[152, 1] > lm[14, 1]
    # the face sits in the upper middle of the astronaut photo
    x0, y0, x1, y1 = reference.box
    assert 150 < x0 < x1 < 300 and 50 < y0 < y1 < 200
    assert 35 < reference.eye_distance < 55


def test_rotated_face_follows_rotation(mesh, reference):
    rot = faces.rotated(20.0)
    got = mesh.faces(rot)
    assert len(got) == 1
    m = cv2.getRotationMatrix2D((224.0, 125.0), 20.0, 1.0)
    expected = reference.landmarks[:, :2] @ m[:, :2].T + m[:, 2]
    err = np.linalg.norm(got[0].landmarks[:, :2] - expected, axis=1)
    assert np.median(err) < 0.06 * reference.eye_distance
    right, left = eye_centers(got[0].landmarks)
    angle = math.degrees(math.atan2(left[1] - right[1], left[0] - right[0]))
    assert -26 < angle < -14  # cv2 turns counter-clockwise, so the eye line tilts up to the right


def test_small_face_is_found(mesh, reference):
    img = faces.small_face()
    got = mesh.faces(img)
    assert len(got) == 1
    # the small face is the astronaut scaled by 0.45 and placed at (1024 // 3, 1024 - 230 - 128)
    s = round(512 * 0.45) / 512
    off = np.array([1024 // 3, 1024 - round(512 * 0.45) - 128])
    expected = reference.landmarks[:, :2] * s + off
    err = np.linalg.norm(got[0].landmarks[:, :2] - expected, axis=1)
    assert np.median(err) < 0.1 * reference.eye_distance * s


def test_no_face(mesh):
    assert mesh.detect(faces.no_face()) == []


def test_two_faces_largest_first(mesh):
    found = mesh.faces(faces.two_faces())
    assert len(found) == 2
    assert found[0].detection.area > found[1].detection.area
    assert found[0].box[0] < 512 < found[1].box[0]


def test_missing_models_give_a_clear_error(tmp_path):
    with pytest.raises(ModelsMissingError, match="fetch_models"):
        FaceMesh(tmp_path)
