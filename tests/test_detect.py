"""Detection on real faces (the astronaut) and composed images."""

from __future__ import annotations

import importlib.util

import cv2
import numpy as np
import pytest

from conftest import ASTRONAUT_FACE, three_faces
from core.detect import detect_faces, get_detector


def iou(a, b) -> float:
    ax, ay, aw, ah = a
    bx, by, bw, bh = b
    ix = max(0.0, min(ax + aw, bx + bw) - max(ax, bx))
    iy = max(0.0, min(ay + ah, by + bh) - max(ay, by))
    inter = ix * iy
    return inter / (aw * ah + bw * bh - inter)


def test_astronaut_has_one_face_on_the_face(astronaut):
    faces = detect_faces(astronaut)
    assert len(faces) == 1
    assert iou(faces[0].box, ASTRONAUT_FACE) > 0.7
    assert faces[0].confidence > 0.95
    assert set(faces[0].landmarks) == {"left_eye", "right_eye", "nose", "mouth_left", "mouth_right"}


def test_three_faces_largest_first(astronaut):
    faces = detect_faces(three_faces(astronaut))
    assert len(faces) == 3
    areas = [f.area for f in faces]
    assert areas == sorted(areas, reverse=True)


def test_blank_and_tiny_images_have_no_face():
    assert detect_faces(np.zeros((300, 300, 3), np.uint8)) == []
    assert detect_faces(np.full((300, 300, 3), 255, np.uint8)) == []
    assert detect_faces(np.zeros((1, 1, 3), np.uint8)) == []


def test_min_face_size_and_large_images(astronaut):
    assert detect_faces(astronaut, min_face_size=150) == []
    big = cv2.resize(astronaut, None, fx=4, fy=4, interpolation=cv2.INTER_CUBIC)  # 2048 px: downscaled
    faces = detect_faces(big, min_face_size=80)
    assert len(faces) == 1
    box = tuple(v / 4 for v in faces[0].box)
    assert iou(box, ASTRONAUT_FACE) > 0.7


def test_detector_built_once():
    assert get_detector() is get_detector()


def test_detector_matches_stock_mtcnn(astronaut):
    """Our single-tensor driver of the three stages gives mtcnn 1.0's own detections."""
    from mtcnn import MTCNN

    from core.detect import _run_mtcnn

    stock = MTCNN(device="CPU:0")
    for rgb in (astronaut, three_faces(astronaut), cv2.resize(astronaut, (300, 170))):
        ours = _run_mtcnn(rgb, min_face_size=20, threshold_onet=0.8)
        theirs = stock.detect_faces(rgb, min_face_size=20, threshold_onet=0.8)
        assert len(ours) == len(theirs) > 0
        key = lambda d: tuple(d["box"])  # noqa: E731
        for a, b in zip(sorted(ours, key=key), sorted(theirs, key=key)):
            np.testing.assert_allclose(a["box"], b["box"], atol=1.0)
            assert abs(a["confidence"] - b["confidence"]) < 1e-3
            for name in a["keypoints"]:
                np.testing.assert_allclose(a["keypoints"][name], b["keypoints"][name], atol=1.0)


def test_detector_works_under_a_mixed_bfloat16_policy(astronaut):
    """Training sets a global mixed_bfloat16 policy and then detects faces on its chips (``--crop aligned``):
    MTCNN must still be built in float32 and find the same face."""
    import keras

    before = detect_faces(astronaut)[0]
    previous = keras.mixed_precision.global_policy()
    get_detector.cache_clear()
    keras.mixed_precision.set_global_policy("mixed_bfloat16")
    try:
        faces = detect_faces(astronaut)
        assert keras.mixed_precision.global_policy().name == "mixed_bfloat16"  # the caller's policy is kept
    finally:
        keras.mixed_precision.set_global_policy(previous)
        get_detector.cache_clear()
    assert len(faces) == 1
    np.testing.assert_allclose(faces[0].box, before.box, atol=1.0)


def test_lite_pnet_matches_the_keras_pnet():
    """PNet converted to LiteRT gives the Keras network's outputs, in its order (regression, probability),
    for any pyramid shape; one interpreter per shape, least recently used dropped."""
    pytest.importorskip("ai_edge_litert")
    from mtcnn import MTCNN

    from core.detect import LitePNet

    keras_pnet = MTCNN(device="CPU:0").stages[0].model
    lite = LitePNet(keras_pnet)
    lite.max_shapes = 2
    rng = np.random.default_rng(0)
    for h, w in ((12, 12), (100, 151), (217, 386), (100, 151)):
        x = rng.uniform(-1, 1, (1, h, w, 3)).astype(np.float32)
        ours, theirs = lite(x), keras_pnet(x)
        assert [tuple(o.shape) for o in ours] == [tuple(t.shape) for t in theirs]
        for o, t in zip(ours, theirs):
            np.testing.assert_allclose(o.numpy(), np.asarray(t), atol=1e-4)
    assert list(lite._interpreters) == [(1, 217, 386, 3), (1, 100, 151, 3)]


def test_detector_without_litert_runs_pnet_in_tensorflow(astronaut, monkeypatch):
    """AGEGENDER_LITERT=0 (and platforms without LiteRT wheels) run PNet with TensorFlow: same face."""
    from core.detect import LitePNet

    lite_face = detect_faces(astronaut)[0]
    assert isinstance(get_detector().stages[0]._model, LitePNet) == (importlib.util.find_spec("ai_edge_litert")
                                                                    is not None)
    monkeypatch.setenv("AGEGENDER_LITERT", "0")
    get_detector.cache_clear()
    try:
        assert not isinstance(get_detector().stages[0]._model, LitePNet)
        faces = detect_faces(astronaut)
    finally:
        get_detector.cache_clear()
    assert len(faces) == 1
    np.testing.assert_allclose(faces[0].box, lite_face.box, atol=1.0)
    assert abs(faces[0].confidence - lite_face.confidence) < 1e-3


def test_detector_falls_back_to_tensorflow_when_litert_fails(astronaut, monkeypatch):
    """A LiteRT conversion failure is a warning, not a broken detector."""
    pytest.importorskip("ai_edge_litert")
    import core.detect as detect

    def broken(_model):
        raise RuntimeError("converter exploded")

    monkeypatch.setattr(detect, "LitePNet", broken)
    get_detector.cache_clear()
    try:
        with pytest.warns(RuntimeWarning, match="converter exploded"):
            get_detector()
        assert len(detect_faces(astronaut)) == 1
    finally:
        get_detector.cache_clear()
