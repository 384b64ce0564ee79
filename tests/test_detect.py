"""Detection on real faces (the astronaut) and composed images."""

from __future__ import annotations

import importlib.util

import cv2
import numpy as np
import pytest

from conftest import ASTRONAUT_FACE, three_faces
from core.boxes import iou, reaches_edge
from core.detect import detect_faces, get_detector


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
    """Our detector (NumPy stages on LiteRT, or the package's stages on one tensor) gives mtcnn 1.0's own
    detections, in its JSON layout."""
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

    from core.mtcnn_lite import OUTPUT_WIDTHS, LiteNet, convert

    keras_pnet = MTCNN(device="CPU:0").stages[0].model
    lite = LiteNet(convert(keras_pnet, None), OUTPUT_WIDTHS["pnet"])
    lite.max_shapes = 2
    rng = np.random.default_rng(0)
    for h, w in ((12, 12), (100, 151), (217, 386), (100, 151)):
        x = rng.uniform(-1, 1, (1, h, w, 3)).astype(np.float32)
        ours, theirs = lite(x), keras_pnet(x)
        assert [o.shape for o in ours] == [tuple(t.shape) for t in theirs]
        for o, t in zip(ours, theirs):
            assert isinstance(o, np.ndarray)
            np.testing.assert_allclose(o, np.asarray(t), atol=1e-4)
    assert list(lite._interpreters) == [(1, 217, 386, 3), (1, 100, 151, 3)]


def test_lite_rnet_and_onet_match_keras_for_any_number_of_patches():
    """RNet and ONet on LiteRT: the Keras outputs for 1 to 300 patches, in Keras's order (ONet: regression,
    landmarks, probability); patch counts share a few padded batch sizes."""
    pytest.importorskip("ai_edge_litert")
    from mtcnn import MTCNN

    from core.mtcnn_lite import OUTPUT_WIDTHS, LiteNet, convert

    assert [LiteNet.bucket(n) for n in (1, 2, 3, 8, 9, 33, 256, 257, 600)] == [1, 2, 4, 8, 16, 64, 256, 512, 768]
    stages = MTCNN(device="CPU:0").stages
    rng = np.random.default_rng(1)
    for stage, net, patch in ((stages[1], "rnet", 24), (stages[2], "onet", 48)):
        lite = LiteNet(convert(stage.model, patch), OUTPUT_WIDTHS[net], patch=patch)
        for n in (1, 5, 37, 300):
            x = rng.uniform(-1, 1, (n, patch, patch, 3)).astype(np.float32)
            ours, theirs = lite(x), stage.model(x)
            assert [o.shape for o in ours] == [tuple(t.shape) for t in theirs]
            for o, t in zip(ours, theirs):
                np.testing.assert_allclose(o, np.asarray(t), atol=1e-4)
        assert sorted(s[0] for s in lite._interpreters) == [1, 8, 64, 512]


def test_lite_nets_are_converted_once_and_cached(tmp_path, monkeypatch):
    """Each network's flatbuffer is stored under its cache name; the next load reads it without converting
    (and without TensorFlow); a corrupt file is converted again. The name carries mtcnn's weights and the
    versions."""
    pytest.importorskip("ai_edge_litert")
    from core import mtcnn_lite

    monkeypatch.setenv("AGEGENDER_CACHE_DIR", str(tmp_path))
    name = mtcnn_lite.cache_name("pnet")
    assert name.startswith("mtcnn-1.0.0-pnet-") and name.endswith(".tflite")
    assert mtcnn_lite.tensorflow_version() in name
    first = mtcnn_lite.load_nets()
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(mtcnn_lite.cache_name(n) for n in mtcnn_lite.NETS)
    conversions = []
    convert = mtcnn_lite.convert
    monkeypatch.setattr(mtcnn_lite, "convert", lambda *a: conversions.append(1) or convert(*a))
    cached = mtcnn_lite.load_nets()
    assert conversions == []
    assert all(cached[n].flatbuffer == first[n].flatbuffer for n in mtcnn_lite.NETS)
    (tmp_path / name).write_bytes(b"not a flatbuffer")
    again = mtcnn_lite.load_nets()
    assert conversions == [1] and (tmp_path / name).read_bytes() == again["pnet"].flatbuffer
    x = np.random.default_rng(0).uniform(-1, 1, (1, 40, 50, 3)).astype(np.float32)
    for o, t in zip(again["pnet"](x), first["pnet"](x)):
        np.testing.assert_allclose(o, t, atol=1e-6)


def test_detector_without_litert_runs_the_package_in_tensorflow(astronaut, monkeypatch):
    """AGEGENDER_LITERT=0 (and platforms without LiteRT wheels) run the package's own stages with
    TensorFlow: the same face."""
    from core.detect import LiteStages, PackageStages

    lite_face = detect_faces(astronaut)[0]
    has_litert = importlib.util.find_spec("ai_edge_litert") is not None
    assert isinstance(get_detector(), LiteStages if has_litert else PackageStages)
    monkeypatch.setenv("AGEGENDER_LITERT", "0")
    get_detector.cache_clear()
    try:
        assert isinstance(get_detector(), PackageStages)
        faces = detect_faces(astronaut)
    finally:
        get_detector.cache_clear()
    assert len(faces) == 1
    np.testing.assert_allclose(faces[0].box, lite_face.box, atol=1.0)
    assert abs(faces[0].confidence - lite_face.confidence) < 1e-3


def test_detector_falls_back_to_tensorflow_when_litert_fails(astronaut, monkeypatch):
    """A LiteRT conversion failure is a warning, not a broken detector."""
    pytest.importorskip("ai_edge_litert")
    from core import mtcnn_lite
    from core.detect import PackageStages

    def broken(*_args, **_kwargs):
        raise RuntimeError("converter exploded")

    monkeypatch.setattr(mtcnn_lite, "load_nets", broken)
    get_detector.cache_clear()
    try:
        with pytest.warns(RuntimeWarning, match="converter exploded"):
            assert isinstance(get_detector(), PackageStages)
        assert len(detect_faces(astronaut)) == 1
    finally:
        get_detector.cache_clear()


# --- Recall on close-ups and faces cut by the frame ------------------------------------------------------

def _inside(face, image: np.ndarray) -> bool:
    x, y, w, h = face.box
    return x >= 0 and y >= 0 and x + w <= image.shape[1] + 1e-6 and y + h <= image.shape[0] + 1e-6


def _close_up(astronaut: np.ndarray, face_fraction: float, out: int) -> np.ndarray:
    """A square around the astronaut's face, the face box ``face_fraction`` of its side, resized to ``out``."""
    x, y, w, h = ASTRONAUT_FACE
    side = h / face_fraction
    x0, y0 = int(x + w / 2 - side / 2), int(y + h / 2 - side / 2)
    crop = astronaut[max(0, y0):y0 + int(side), max(0, x0):x0 + int(side)]
    return cv2.resize(crop, (out, out), interpolation=cv2.INTER_CUBIC if out > side else cv2.INTER_AREA)


@pytest.mark.parametrize("fraction,out", [(0.7, 800), (0.9, 800), (1.1, 800)])
def test_close_up_filling_the_frame_is_found(astronaut, fraction, out):
    image = _close_up(astronaut, fraction, out)
    faces = detect_faces(image)
    assert len(faces) == 1 and _inside(faces[0], image)
    assert faces[0].box[3] >= 0.6 * out  # the big face, not a part of it


def test_chip_like_crop_cut_by_the_frame_is_found(astronaut):
    """A UTKFace-like chip: 200 x 200, the face filling it, forehead and chin cut by the frame."""
    chip = _close_up(astronaut, 1.1, 200)
    faces = detect_faces(chip)
    assert len(faces) == 1 and _inside(faces[0], chip) and faces[0].box[3] >= 150


CUTS = ("left", "right", "top", "bottom", "top-left", "top-right", "bottom-left", "bottom-right")


def _cut(image: np.ndarray, box, where: str, visible: float) -> tuple[np.ndarray, tuple]:
    """``image`` cut so that ``visible`` of ``box``'s area stays inside, at one edge (the other axis whole) or
    at a corner (cut equally on both axes); the image and the box clipped to it."""
    x, y, w, h = box
    keep = visible ** 0.5 if "-" in where else visible
    left = int(round(x + (1 - keep) * w)) if "left" in where else 0
    right = int(round(x + keep * w)) if "right" in where else image.shape[1]
    top = int(round(y + (1 - keep) * h)) if "top" in where else 0
    bottom = int(round(y + keep * h)) if "bottom" in where else image.shape[0]
    cut = np.ascontiguousarray(image[top:bottom, left:right])
    x0, y0 = max(x - left, 0), max(y - top, 0)
    x1, y1 = min(x + w - left, cut.shape[1]), min(y + h - top, cut.shape[0])
    return cut, (x0, y0, x1 - x0, y1 - y0)


@pytest.mark.parametrize("where", CUTS)
def test_face_cut_at_every_border_and_corner_is_found(astronaut, where):
    """60 % of the face's box inside the frame, at each border and corner: one face, on the face, its box
    inside the image and marked as cut by the frame."""
    image, visible_box = _cut(astronaut, ASTRONAUT_FACE, where, 0.6)
    faces = detect_faces(image)
    assert len(faces) == 1 and _inside(faces[0], image)
    assert iou(faces[0].box, visible_box) > 0.4 and faces[0].cut_by_frame


@pytest.mark.parametrize("where", ["right", "bottom-right", "top-left"])
def test_the_selfie_takers_large_face_cut_by_the_frame_is_found(astronaut, where):
    """A face about 45 % of the frame's height, 60 % of it inside, as the photographer's own in a group selfie."""
    k = 0.45 * 600 / ASTRONAUT_FACE[3]
    big = cv2.resize(astronaut, None, fx=k, fy=k, interpolation=cv2.INTER_CUBIC)
    box = tuple(v * k for v in ASTRONAUT_FACE)
    x, y = int(box[0] + box[2] / 2 - 400), int(box[1] + box[3] / 2 - 300)  # an 800 x 600 frame around the face
    frame = big[max(0, y):y + 600, max(0, x):x + 800]
    image, visible_box = _cut(frame, (box[0] - max(0, x), box[1] - max(0, y), box[2], box[3]), where, 0.6)
    faces = detect_faces(image)
    assert len(faces) == 1 and _inside(faces[0], image)
    assert iou(faces[0].box, visible_box) > 0.4 and faces[0].cut_by_frame


def test_cut_by_frame_is_true_exactly_for_boxes_that_reach_the_border(astronaut):

    cut, _ = _cut(astronaut, ASTRONAUT_FACE, "left", 0.75)
    inside = three_faces(astronaut)
    for image, expected in ((astronaut, [False]), (inside, [False] * 3), (cut, [True])):
        faces = detect_faces(image)
        assert [f.cut_by_frame for f in faces] == expected
        assert all(f.cut_by_frame == reaches_edge(f.box, image.shape[1], image.shape[0]) for f in faces)
    assert reaches_edge((0, 10, 5, 5), 100, 100) and reaches_edge((90, 10, 9.5, 5), 100, 100)
    assert not reaches_edge((2, 2, 96, 96), 100, 100)


def test_textures_and_a_cat_have_no_face():
    from skimage import data

    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, (480, 640, 3), dtype=np.uint8), np.full((200, 200, 3), 128, np.uint8)]
    for name in ("brick", "grass", "gravel", "coffee", "chelsea"):
        image = getattr(data, name)()
        images.append(np.ascontiguousarray(np.stack([image] * 3, -1) if image.ndim == 2 else image[..., :3]))
    cat = data.chelsea()  # and the cat's face cut by the frame, where the border pass mirrors it whole
    images += [np.ascontiguousarray(cat[:, 160:]), np.ascontiguousarray(cat[:, :240]), np.ascontiguousarray(cat[80:])]
    for image in images:
        assert detect_faces(image) == []


def test_large_or_cut_faces_need_the_relaxed_threshold_only():
    from core.detect import relaxed_threshold

    assert relaxed_threshold(0.95) == pytest.approx(0.80)
    assert relaxed_threshold(0.99) == pytest.approx(0.96)
    assert relaxed_threshold(0.6) == 0.5 and relaxed_threshold(0.3) == 0.3  # never above the user's own


def test_the_threshold_still_decides(astronaut):
    """A close-up that MTCNN scores below the user's threshold, relaxed, is not reported."""
    image = _close_up(astronaut, 0.9, 800)
    assert detect_faces(image, threshold=0.999999) == []
