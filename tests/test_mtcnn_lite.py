"""MTCNN's stages in NumPy (core.mtcnn_lite) against the mtcnn package's own, step by step and whole."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from conftest import three_faces
from core import mtcnn_lite
from core import pnet_canvas as canvas

pytest.importorskip("ai_edge_litert")

ROOT = Path(__file__).resolve().parent.parent


def random_rows(rng: np.random.Generator, n: int, *, side: float = 200.0) -> np.ndarray:
    """Boxes in mtcnn's row layout [image 0, x1, y1, x2, y2, confidence], overlapping often, with tied
    confidences and a few degenerate (zero-area) boxes."""
    x1 = rng.uniform(0, side, n)
    y1 = rng.uniform(0, side, n)
    w = rng.uniform(5, 60, n)
    h = rng.uniform(5, 60, n)
    w[::17] = 0.0
    conf = np.round(rng.uniform(0.5, 1.0, n), 2)  # rounded: many ties
    return np.stack([np.zeros(n), x1, y1, x1 + w, y1 + h, conf], axis=1)


def test_scale_pyramid_is_the_packages():
    from mtcnn.utils.images import build_scale_pyramid

    for h, w in ((12, 12), (240, 427), (720, 1280), (1280, 563), (200, 155)):
        for min_face in (12.0, 20.0, 14.7):
            np.testing.assert_array_equal(mtcnn_lite.scale_pyramid(h, w, min_face),
                                          build_scale_pyramid(w, h, min_face_size=min_face, scale_factor=0.709))


@pytest.mark.parametrize("method", ["union", "min"])
@pytest.mark.parametrize("sort", [True, False])
def test_suppression_is_the_packages_including_ties_and_chunks(method, sort):
    """Same rows kept, in the same order, as ``smart_nms_from_bboxes``, with the overlap matrix computed
    whole or a few rows at a time."""
    from mtcnn.utils.bboxes import smart_nms_from_bboxes

    rng = np.random.default_rng(3)
    for n in (0, 1, 2, 40, 300):
        rows = random_rows(rng, n)
        theirs = smart_nms_from_bboxes(rows.copy(), threshold=0.5, method=method, initial_sort=sort)
        for chunk in (1024, 7):
            ours = mtcnn_lite.suppress(rows.copy(), 0.5, method, sort=sort, chunk=chunk)
            np.testing.assert_array_equal(ours, theirs)


def test_square_and_refine_are_the_packages():
    from mtcnn.utils.bboxes import adjust_bboxes, resize_to_square

    rng = np.random.default_rng(4)
    rows = random_rows(rng, 50)
    np.testing.assert_array_equal(mtcnn_lite.to_square(rows), resize_to_square(rows))
    offsets = rng.normal(0, 0.1, (50, 4))
    np.testing.assert_array_equal(mtcnn_lite.refine(rows, offsets), adjust_bboxes(rows, offsets))


def test_patches_are_tensorflows_crop_and_resize():
    """Bilinear patches equal ``extract_patches`` (tf.image.crop_and_resize) for boxes inside, across and
    wholly outside the image, square and not."""
    from mtcnn.utils.images import extract_patches

    rng = np.random.default_rng(5)
    image = rng.uniform(-1, 1, (1, 83, 121, 3)).astype(np.float32)
    rows = random_rows(rng, 60, side=120.0)
    rows[:5, 1:5] = [[-30, -20, 20, 40], [100, 70, 160, 120], [-50, -50, -10, -10], [0, 0, 120, 82],
                     [10.5, 3.25, 11.5, 4.25]]
    for size in (24, 48):
        theirs = np.asarray(extract_patches(image, rows, expected_size=(size, size)))
        np.testing.assert_allclose(mtcnn_lite.crop_and_resize(image[0], rows, size), theirs, atol=2e-5)


def test_pyramid_levels_are_tensorflows_area_resize():
    from mtcnn.utils.images import scale_images

    rng = np.random.default_rng(6)
    image = rng.uniform(-1, 1, (1, 240, 427, 3)).astype(np.float32)
    for scale in mtcnn_lite.scale_pyramid(240, 427, 20.0)[:6]:
        theirs = np.asarray(scale_images(image, scale))[0]
        sh, sw = theirs.shape[:2]
        assert (sh, sw) == tuple((np.asarray([240, 427]) * scale).astype(int))
        ours = cv2.resize(image[0], (sw, sh), interpolation=cv2.INTER_AREA)
        np.testing.assert_allclose(ours, theirs, atol=1e-4)


def package_rows(rgb: np.ndarray, **params) -> np.ndarray:
    """The package's three stages on one image (networks in Keras): its raw rows."""
    import tensorflow as tf

    from core.mtcnn_lite import new_mtcnn

    image = tf.convert_to_tensor(((rgb.astype(np.float32) - 127.5) / 128.0)[None])
    rows = None
    for stage in new_mtcnn().stages:
        rows = stage(bboxes_batch=rows, images_normalized=image, images_oshapes=np.asarray([rgb.shape]), **params)
    return np.asarray(rows, np.float64)


def test_whole_detection_is_the_packages(astronaut):
    """All three stages: the package's rows (boxes, confidences, landmarks) to within the LiteRT networks'
    rounding, on one face, three faces and a small image."""
    nets = mtcnn_lite.load_nets()
    for rgb in (astronaut, three_faces(astronaut), cv2.resize(astronaut, (300, 170))):
        ours = mtcnn_lite.detect(rgb, nets, min_face_size=20, threshold_onet=0.8)
        theirs = package_rows(rgb, min_face_size=20, threshold_onet=0.8)
        assert ours.shape == theirs.shape and len(ours) > 0
        order = lambda r: r[np.lexsort((r[:, 2], r[:, 1]))]  # noqa: E731 - near-tied confidences may swap
        np.testing.assert_allclose(order(ours), order(theirs), atol=0.02)


def test_no_face_gives_empty_rows():
    nets = mtcnn_lite.load_nets()
    for rgb in (np.zeros((200, 200, 3), np.uint8), np.full((50, 80, 3), 255, np.uint8)):
        assert mtcnn_lite.detect(rgb, nets).shape == (0, 16)


def test_detection_imports_no_tensorflow_once_the_networks_are_cached(astronaut, tmp_path):
    """The point of the module: a new process that detects a face (through core.detect, as the app, the CLI
    and the API do) never imports TensorFlow when the flatbuffers are in the cache."""
    mtcnn_lite.load_nets()  # fills this session's cache folder (converting, with TensorFlow, if empty)
    np.save(tmp_path / "face.npy", astronaut)
    script = (
        "import sys, numpy as np\n"
        "from core.detect import detect_faces\n"
        f"faces = detect_faces(np.load({str(tmp_path / 'face.npy')!r}))\n"
        "print(len(faces), 'tensorflow' in sys.modules, 'keras' in sys.modules, 'mtcnn' in sys.modules)\n"
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, cwd=ROOT,
                         timeout=300, check=True).stdout.split()
    assert out[-4:] == ["1", "False", "False", "False"]


def random_levels(rng: np.random.Generator, n: int) -> list[tuple[int, int]]:
    """Pyramid level sizes: odd and even, tiny (12 px), wider and taller than a canvas."""
    return [(int(h), int(w)) for h, w in rng.integers(12, 700, (n, 2))] + [(12, 12), (13, 600), (257, 12)]


def test_tiles_cover_every_level_once_without_overlap_on_few_shapes():
    """Every output cell of every level comes from exactly one tile; tiles lie inside their canvas, at even
    offsets, never on one another; canvases are SIDE wide and a multiple of STEP high."""
    rng = np.random.default_rng(8)
    for _ in range(20):
        levels = random_levels(rng, int(rng.integers(1, 12)))
        covered = [np.zeros((canvas.output_size(h), canvas.output_size(w)), int) for h, w in levels]
        for sheet in canvas.pack(levels):
            assert sheet.height % canvas.STEP == 0 and 0 < sheet.height <= canvas.SIDE
            used = np.zeros((sheet.height, canvas.SIDE), int)
            for t in sheet.tiles:
                assert t.y % 2 == 0 and t.x % 2 == 0 and t.rows[0] % 2 == 0 and t.cols[0] % 2 == 0
                used[t.y:t.y + t.height, t.x:t.x + t.width] += 1
                (r0, r1), (c0, c1) = canvas.output_span(*t.rows), canvas.output_span(*t.cols)
                covered[t.level][r0:r1, c0:c1] += 1
            assert used.max() == 1 and used.sum() == sum(t.height * t.width for t in sheet.tiles)
        assert all((c == 1).all() for c in covered)


def test_canvases_give_pnet_maps_of_each_level_alone_bit_for_bit():
    """PNet's maps from the packed canvases equal PNet run on each level by itself (no mask), exactly: odd
    sizes, levels cut into several tiles, 12 px levels."""
    nets = mtcnn_lite.load_nets()
    rng = np.random.default_rng(9)
    levels = [rng.uniform(-1, 1, (h, w, 3)).astype(np.float32) for h, w in random_levels(rng, 5)]
    for level, (regression, probability) in zip(levels, mtcnn_lite.pnet_maps(levels, nets["pnet"]), strict=True):
        alone = nets["pnet"](level[None])
        np.testing.assert_array_equal(regression, alone[0][0])
        np.testing.assert_array_equal(probability, alone[1][0])


def test_a_patch_gives_the_same_outputs_at_every_batch_size():
    """RNet's and ONet's outputs for a patch do not depend on how many patches share its call (1, 3 or 8,
    padded to 1, 4 or 8): so small batches, which are much faster, change no detection."""
    nets = mtcnn_lite.load_nets()
    rng = np.random.default_rng(12)
    for name in ("rnet", "onet"):
        net = nets[name]
        x = rng.uniform(-1, 1, (8, net.patch, net.patch, 3)).astype(np.float32)
        alone = net(x[:1])
        for n in (3, 8):
            for a, b in zip(alone, net(x[:n]), strict=True):
                np.testing.assert_array_equal(a[0], b[0])


def test_rnet_and_onet_run_a_few_bounded_batches():
    """Hundreds of patches run in batches of at most MAX_BATCH, with the outputs of one call."""
    nets = mtcnn_lite.load_nets()
    rng = np.random.default_rng(10)
    for name in ("rnet", "onet"):
        net = nets[name]
        whole = mtcnn_lite.LiteNet(net.flatbuffer, net.widths, patch=net.patch)
        x = rng.uniform(-1, 1, (300, net.patch, net.patch, 3)).astype(np.float32)
        for ours, theirs in zip(net(x), whole(x), strict=True):
            np.testing.assert_allclose(ours, theirs, atol=1e-6)
        assert max(shape[0] for shape in net._interpreters) <= mtcnn_lite.MAX_BATCH[name]


def test_detection_keeps_a_bounded_set_of_shapes_whatever_the_photo_sizes(astronaut, monkeypatch):
    """100 photos of random sizes (40 to 1,600 px a side) through the detector: PNet asks for at most
    SIDE / STEP input shapes, RNet and ONet for their few batch buckets, and no interpreter is dropped."""
    from core.detect import detect_faces, get_detector

    requested: dict[int, set[tuple[int, ...]]] = {}
    real = mtcnn_lite.LiteNet._interpreter

    def recording(self, shape):
        requested.setdefault(id(self), set()).add(shape)
        return real(self, shape)

    monkeypatch.setattr(mtcnn_lite.LiteNet, "_interpreter", recording)
    rng = np.random.default_rng(11)
    for w, h in rng.integers(40, 1600, (100, 2)):
        detect_faces(cv2.resize(astronaut, (int(w), int(h)), interpolation=cv2.INTER_AREA))
    nets = get_detector().nets
    counts = {name: len(requested.get(id(net), ())) for name, net in nets.items()}
    assert 0 < counts["pnet"] <= canvas.SIDE // canvas.STEP
    assert counts["rnet"] <= 9 and counts["onet"] <= 7  # 1 to 256 and 1 to 64 patches, powers of two
    assert all(len(net._interpreters) >= counts[name] for name, net in nets.items())  # none dropped
