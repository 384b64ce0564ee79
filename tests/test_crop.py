"""The crop: exact similarity fits, and the chip frame is reproduced from a photo."""

from __future__ import annotations

import math

import cv2
import numpy as np
import pytest

from core.crop import CHIP_TEMPLATE, crop_face, similarity_transform
from core.detect import detect_faces


def test_similarity_transform_recovers_a_known_transform():
    rng = np.random.default_rng(1)
    src = rng.uniform(0, 100, (5, 2))
    angle, scale, shift = math.radians(17), 1.7, np.array([12.0, -4.0])
    rot = scale * np.array([[math.cos(angle), -math.sin(angle)], [math.sin(angle), math.cos(angle)]])
    dst = src @ rot.T + shift
    m = similarity_transform(src, dst)
    assert np.allclose(m[:, :2], rot) and np.allclose(m[:, 2], shift)
    m2 = similarity_transform(src, dst, rotate=False)
    assert abs(m2[0, 1]) < 1e-12 and abs(m2[1, 0]) < 1e-12


def test_chip_input_is_a_plain_resize():
    chip = np.random.default_rng(0).integers(0, 255, (200, 200, 3), dtype=np.uint8)
    out = crop_face(chip, None, 100)
    expected = cv2.resize(chip, (100, 100), interpolation=cv2.INTER_AREA)
    assert out.shape == (100, 100, 3)
    assert np.abs(out.astype(int) - expected.astype(int)).max() <= 1


def test_template_landmarks_land_on_the_template(astronaut):
    face = detect_faces(astronaut)[0]
    m = similarity_transform(face.landmark_array(), CHIP_TEMPLATE * 128)
    mapped = np.c_[face.landmark_array(), np.ones(5)] @ m.T
    # five points, four degrees of freedom: the residual is small compared with the 128 px frame
    assert np.abs(mapped - CHIP_TEMPLATE * 128).max() < 8


def test_crop_reproduces_the_chip_frame_from_a_photo(astronaut_chip):
    """Put a chip into a bigger photo, rotated and scaled; detect + crop must give the chip back."""
    canvas = np.full((700, 900, 3), 90, np.uint8)
    m = cv2.getRotationMatrix2D((100, 100), 12, 1.6)
    m[:, 2] += (300, 180)
    cv2.warpAffine(astronaut_chip, m, (900, 700), dst=canvas, borderMode=cv2.BORDER_TRANSPARENT)
    faces = detect_faces(canvas)
    assert len(faces) == 1
    again = crop_face(canvas, faces[0].landmark_array(), 200)
    inner = (slice(30, 170), slice(30, 170))  # the face, away from the borders filled differently
    a = again[inner].astype(np.float64).ravel()
    b = astronaut_chip[inner].astype(np.float64).ravel()
    assert np.corrcoef(a, b)[0, 1] > 0.9
    assert np.abs(a - b).mean() < 20


def test_crop_at_image_border_fills_black(astronaut):
    landmarks = CHIP_TEMPLATE * 200 - 120  # a face mostly outside the image, top left
    out = crop_face(astronaut, landmarks, 64)
    assert out.shape == (64, 64, 3) and out[:5, :5].max() == 0


@pytest.mark.parametrize("zoom,size", [(1, 224), (1, 64), (4, 224), (4, 64)])
def test_a_face_cut_by_the_frame_is_cropped_as_on_a_black_canvas(astronaut, zoom, size):
    """As UTKFace chips are: where the photo ends the crop is black, and the same whether the crop enlarges
    the face or first reduces it (``zoom`` 4: a 430 px face)."""
    image = cv2.resize(astronaut, None, fx=zoom, fy=zoom, interpolation=cv2.INTER_CUBIC) if zoom > 1 else astronaut
    face = detect_faces(image)[0]
    cut = int(face.box[0] + 0.4 * face.box[2])  # the left 40 % of the face's box beyond the frame
    on_black = image.copy()
    on_black[:, :cut] = 0
    cropped = crop_face(np.ascontiguousarray(image[:, cut:]), face.landmark_array() - [cut, 0], size)
    assert np.abs(cropped.astype(int) - crop_face(on_black, face.landmark_array(), size).astype(int)).max() <= 1
    assert cropped[:, : size // 8].max() == 0  # the part of the chip beyond the frame
