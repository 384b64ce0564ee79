"""Face detection with MTCNN (``mtcnn`` 1.0), built once per process.

MTCNN's stages run in NumPy on its networks converted to LiteRT (:mod:`core.mtcnn_lite`, no TensorFlow), or as
the ``mtcnn`` package runs them where LiteRT is absent or off (:class:`PackageStages`); both give mtcnn's
detections. :func:`detect_faces` adds what the app needs on top: two passes, large and cut faces.

Large photos are downscaled before detection (longest side at most :data:`DETECT_MAX_SIDE`) and boxes are
mapped back to original pixels. ``min_face_size`` above 20 px is implemented by downscaling too: that is
faster, and it avoids an ``mtcnn`` 1.0.0 bug where its image pyramid shrinks below PNet's 12 px input and
the whole call silently returns no face.
"""

from __future__ import annotations

import threading
import warnings
from dataclasses import dataclass, field
from functools import lru_cache

import cv2
import numpy as np

from core import lite, mtcnn_lite  # NumPy and OpenCV only at import: nothing loads until get_detector()

#: Longest side of the image given to MTCNN; larger photos are downscaled for detection only.
DETECT_MAX_SIDE = 1280

#: Defaults used everywhere (library, CLI, API, app). Real faces in the sample photos score >= 0.965;
#: 0.95 drops a 0.949 false positive there.
DEFAULT_MIN_FACE_SIZE = 20
DEFAULT_THRESHOLD = 0.95

#: Names the detector and the way its landmarks are computed. Landmarks stored in the repository
#: (``train/splits/<dataset>/landmarks.npz``, see ``train.landmarks``) carry it, so files made by an older
#: detector are recognised as stale: bump it whenever detection changes what landmarks come out.
DETECTOR_VERSION = "mtcnn-1.0.0/two-pass-v2"

#: MTCNN's own smallest face at its default pyramid, in pixels of the image it sees.
_MTCNN_MIN_FACE = 20

#: The large-face pass (see :func:`detect_faces`): longest side of its image, and its black border as a
#: fraction of that side.
LARGE_PASS_SIDE = 160
LARGE_PASS_PAD = 0.25
#: A face this large (its side over the photo's shorter side), or with less than this share of its box
#: inside the frame, needs only :func:`relaxed_threshold`.
LARGE_FACE_FRACTION = 0.3
CUT_VISIBLE_FRACTION = 0.9
RELAX_FACTOR = 4.0

#: The five landmarks, in the order of MTCNN's output rows.
LANDMARK_NAMES = ("left_eye", "right_eye", "nose", "mouth_left", "mouth_right")

_lock = threading.Lock()


@dataclass(frozen=True)
class Detection:
    """One detected face, in original-image pixels. ``box`` is (x, y, width, height)."""

    box: tuple[float, float, float, float]
    confidence: float
    landmarks: dict[str, tuple[float, float]] = field(default_factory=dict)

    @property
    def area(self) -> float:
        return self.box[2] * self.box[3]

    def landmark_array(self) -> np.ndarray:
        """The five landmarks as a (5, 2) float array in :data:`LANDMARK_NAMES` order."""
        return np.array([self.landmarks[n] for n in LANDMARK_NAMES], dtype=np.float64)


class PackageStages:
    """MTCNN as the ``mtcnn`` package runs it: its stages (TensorFlow ops), its networks as ``tf.function``s.

    Used where LiteRT is absent or switched off (``AGEGENDER_LITERT=0``), or where converting the networks
    failed. mtcnn 1.0 calls its networks eagerly, once per pyramid level, which made them about 4x slower
    at 240p and 1.5x at 1080p (python -m bench); wrapped in ``tf.function`` they trace once per shape.
    """

    runtime = "tensorflow"  #: what runs the networks (``python -m bench`` prints it)

    def __init__(self) -> None:
        self.mtcnn = mtcnn_lite.new_mtcnn()  # imports TensorFlow first, one thread at a time
        import tensorflow as tf

        for stage in self.mtcnn.stages:
            # mtcnn 1.0.0 keeps each stage's network in ``_model``
            stage._model = tf.function(stage.model, reduce_retracing=True, autograph=False)

    def __call__(self, rgb: np.ndarray, *, min_face_size: float, threshold_onet: float) -> np.ndarray:
        """The three stages on one image, in :func:`core.mtcnn_lite.detect`'s row layout.

        As ``MTCNN.detect_faces`` for one image, except that the normalised image becomes a tensor once:
        ``detect_faces`` hands the stages a NumPy array, which TensorFlow copies into a new tensor for every
        pyramid level and every patch extraction (at 720p that cost more than PNet itself)."""
        import tensorflow as tf

        image = tf.convert_to_tensor(((rgb.astype(np.float32) - 127.5) / 128.0)[None])  # mtcnn's [-1, 1]
        params = {"min_face_size": min_face_size, "threshold_onet": threshold_onet}
        boxes = None
        try:
            for stage in self.mtcnn.stages:
                boxes = stage(bboxes_batch=boxes, images_normalized=image, images_oshapes=np.asarray([rgb.shape]),
                              **params)
                if len(boxes) == 0:
                    return np.empty((0, 16))
        except tf.errors.InvalidArgumentError:  # mtcnn's way of saying "no face" in some corner cases
            return np.empty((0, 16))
        return np.asarray(boxes, dtype=np.float64)


class LiteStages:
    """MTCNN's stages in NumPy/OpenCV on LiteRT networks (:mod:`core.mtcnn_lite`): no TensorFlow once the
    networks are converted (once per machine)."""

    runtime = "litert"  #: what runs the networks (``python -m bench`` prints it)

    def __init__(self) -> None:
        self.nets = mtcnn_lite.load_nets()

    def __call__(self, rgb: np.ndarray, *, min_face_size: float, threshold_onet: float) -> np.ndarray:
        return mtcnn_lite.detect(rgb, self.nets, min_face_size=min_face_size, threshold_onet=threshold_onet)


@lru_cache(maxsize=1)
def get_detector() -> LiteStages | PackageStages:
    """The process-wide MTCNN (weights ship inside the ``mtcnn`` package).

    Where :func:`core.lite.enabled`, its stages run in NumPy on LiteRT networks (:class:`LiteStages`), which
    needs no TensorFlow after the first start on a machine; otherwise, or where that fails, as the package
    runs them (:class:`PackageStages`).
    """
    if lite.enabled():
        try:
            return LiteStages()
        except Exception as error:  # a conversion or runtime failure must not stop detection: stay in TF
            warnings.warn(f"MTCNN could not run on LiteRT ({error}); it runs in TensorFlow instead (slower). "
                          "Set AGEGENDER_LITERT=0 to skip the attempt.", RuntimeWarning, stacklevel=2)
    return PackageStages()


def _run_mtcnn(rgb: np.ndarray, *, min_face_size: float, threshold_onet: float) -> list[dict]:
    """MTCNN on one RGB image; faces as ``mtcnn``'s JSON-style dicts (``box`` x, y, w, h and ``keypoints``,
    both rounded to whole pixels and the box clipped to the image, as ``MTCNN.detect_faces`` gives them),
    plus ``visible``: the share of the unclipped box inside the image."""
    rows = get_detector()(rgb, min_face_size=min_face_size, threshold_onet=threshold_onet)
    h, w = rgb.shape[:2]
    clipped = rows.copy()
    clipped[:, [1, 3]] = np.clip(clipped[:, [1, 3]], 0, w - 1)
    clipped[:, [2, 4]] = np.clip(clipped[:, [2, 4]], 0, h - 1)
    faces = []
    for raw, row in zip(rows, clipped, strict=True):
        box = np.asarray([row[1], row[2], row[3] - row[1], row[4] - row[2]]).round().astype(int)
        marks = row[6:16].round().astype(int)
        area = max(1e-6, (raw[3] - raw[1]) * (raw[4] - raw[2]))
        faces.append({
            "box": box.tolist(),
            "confidence": float(row[5]),
            "keypoints": {name: [int(marks[i]), int(marks[i + 5])] for i, name in enumerate(LANDMARK_NAMES)},
            "visible": float(np.clip((row[3] - row[1]) * (row[4] - row[2]) / area, 0.0, 1.0)),
        })
    return faces


def detect_faces(rgb: np.ndarray, *, min_face_size: int = DEFAULT_MIN_FACE_SIZE,
                 threshold: float = DEFAULT_THRESHOLD,
                 max_side: int = DETECT_MAX_SIDE) -> list[Detection]:
    """Detect every face in an RGB uint8 image; largest first.

    Two passes of MTCNN, merged by non-maximum suppression (see :func:`_merge`):

    1. the photo at its working size (longest side at most ``max_side``) finds faces of every size;
    2. a *large-face pass*: the photo reduced to :data:`LARGE_PASS_SIDE` px and framed by a black border
       of :data:`LARGE_PASS_PAD` of its side, so that PNet sees whole the faces that the frame cuts, and
       RNet/ONet see large faces from a less aliased image.

    MTCNN scores large faces and faces cut by the frame lower than it scores whole, medium-sized faces
    (UTKFace chips, All-Age-Faces crops and close-up portraits score 0.5-0.95 where small faces in
    group photos score 0.99+), while its false positives in photos are small. So the user's
    ``threshold`` applies as it is to small whole faces, and relaxed to :func:`relaxed_threshold` for a
    face whose side is at least :data:`LARGE_FACE_FRACTION` of the photo's shorter side or of which
    less than :data:`CUT_VISIBLE_FRACTION` lies inside the frame. ``python -m bench.detection``
    measures what this finds and costs.

    Args:
        rgb: H x W x 3 RGB uint8 image (see :func:`core.image.load_image`).
        min_face_size: smallest face side to report, in original pixels.
        threshold: minimum MTCNN confidence (its last stage, ONet) for a face to be reported.
        max_side: the image is downscaled so its longest side is at most this before detection.
    """
    h, w = rgb.shape[:2]
    scale = min(1.0, max_side / max(h, w))
    if min_face_size * scale > _MTCNN_MIN_FACE:
        scale = _MTCNN_MIN_FACE / min_face_size
    if min(h, w) * scale < 12:
        return []
    relaxed = relaxed_threshold(threshold)
    candidates = _detect_at(rgb, scale, pad=0.0, min_face_size=min_face_size, threshold=relaxed)
    large_scale = min(scale, LARGE_PASS_SIDE / max(h, w))
    # Faces that the large-face pass can see: at least 12 px (PNet's window) in its image.
    large_min = max(float(min_face_size), LARGE_FACE_FRACTION * min(h, w), 12.0 / large_scale)
    if large_min <= max(h, w):
        candidates += _detect_at(rgb, large_scale, pad=LARGE_PASS_PAD, min_face_size=large_min,
                                 threshold=relaxed)
    faces = []
    for face, visible in _merge(candidates):
        large = max(face.box[2], face.box[3]) >= LARGE_FACE_FRACTION * min(h, w)
        cut = visible < CUT_VISIBLE_FRACTION
        if face.confidence >= (relaxed if large or cut else threshold) and \
                max(face.box[2], face.box[3]) >= min_face_size:
            faces.append(face)
    faces.sort(key=lambda d: d.area, reverse=True)
    return faces


def relaxed_threshold(threshold: float) -> float:
    """The confidence a large or cut face needs: the distance to 1 widened :data:`RELAX_FACTOR` times
    (0.95 -> 0.80), never below 0.5 and never above ``threshold``."""
    return min(threshold, max(0.5, 1.0 - RELAX_FACTOR * (1.0 - threshold)))


def _detect_at(rgb: np.ndarray, scale: float, *, pad: float, min_face_size: float,
               threshold: float) -> list[tuple[Detection, float]]:
    """One MTCNN pass on ``rgb`` resized by ``scale`` and framed by a black border of ``pad`` x its longer
    side; detections in original pixels, clipped to the photo, with the fraction of each raw box that
    lies inside the photo."""
    h, w = rgb.shape[:2]
    small = rgb
    if scale < 1.0:
        size = (max(1, round(w * scale)), max(1, round(h * scale)))
        small = cv2.resize(rgb, size, interpolation=cv2.INTER_AREA)
    sh, sw = small.shape[:2]
    border = int(round(pad * max(sh, sw)))
    if border:
        small = cv2.copyMakeBorder(small, border, border, border, border, cv2.BORDER_CONSTANT, value=(0, 0, 0))
    sx, sy = w / sw, h / sh
    # At most MTCNN's own 20 px: mtcnn 1.0 sizes its pyramid as if for 20 px faces, so a larger minimum
    # shrinks its last levels below PNet's 12 px input and the call fails. Smaller faces are dropped below.
    mtcnn_min = max(12.0, min(float(_MTCNN_MIN_FACE), min_face_size * min(sw / w, sh / h)))
    with _lock:
        raw = _run_mtcnn(np.ascontiguousarray(small), min_face_size=mtcnn_min,
                         threshold_onet=min(threshold, 0.99))
    out = []
    for r in raw:
        x, y, bw, bh = (float(v) for v in r["box"])
        x0, y0, x1, y1 = (x - border) * sx, (y - border) * sy, (x + bw - border) * sx, (y + bh - border) * sy
        raw_area = max(1e-6, (x1 - x0) * (y1 - y0))
        cx0, cy0, cx1, cy1 = max(0.0, x0), max(0.0, y0), min(float(w), x1), min(float(h), y1)
        if cx1 - cx0 < 1 or cy1 - cy0 < 1 or max(x1 - x0, y1 - y0) < min_face_size:
            continue
        # The raw box's share inside the photo; with no border, mtcnn already clipped it (``visible``).
        visible = r["visible"] * (cx1 - cx0) * (cy1 - cy0) / raw_area
        marks = {n: (float(r["keypoints"][n][0] - border) * sx, float(r["keypoints"][n][1] - border) * sy)
                 for n in LANDMARK_NAMES}
        out.append((Detection(box=(cx0, cy0, cx1 - cx0, cy1 - cy0), confidence=float(r["confidence"]),
                              landmarks=marks), visible))
    return out


def _merge(candidates: list[tuple[Detection, float]], iou_limit: float = 0.4) -> list[tuple[Detection, float]]:
    """Non-maximum suppression across passes: of boxes overlapping by more than ``iou_limit`` (IoU), the
    most confident one stays."""
    kept: list[tuple[Detection, float]] = []
    for cand in sorted(candidates, key=lambda c: c[0].confidence, reverse=True):
        if all(_iou(cand[0].box, k[0].box) <= iou_limit for k in kept):
            kept.append(cand)
    return kept


def _iou(a: tuple[float, float, float, float], b: tuple[float, float, float, float]) -> float:
    ix = max(0.0, min(a[0] + a[2], b[0] + b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[1] + a[3], b[1] + b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = a[2] * a[3] + b[2] * b[3] - inter
    return inter / union if union > 0 else 0.0
