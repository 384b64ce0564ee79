"""Face detection with MTCNN (``mtcnn`` 1.0), built once per process.

MTCNN's stages run in NumPy on its networks converted to LiteRT (:mod:`core.mtcnn_lite`, no TensorFlow), or as
the ``mtcnn`` package runs them where LiteRT is absent or off (:class:`PackageStages`); both give mtcnn's
detections. :func:`detect_faces` adds what the app needs on top: passes for large faces and for faces cut
by the frame, each face marked when its box reaches the image's edge.

Large photos are downscaled before detection (longest side at most :data:`DETECT_MAX_SIDE`) and boxes are
mapped back to original pixels. ``min_face_size`` above 20 px is implemented by downscaling too: that is
faster, and it avoids an ``mtcnn`` 1.0.0 bug where its image pyramid shrinks below PNet's 12 px input and
the whole call silently returns no face.
"""

from __future__ import annotations

import threading
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from functools import lru_cache

import cv2
import numpy as np

from core import lite, mtcnn_lite  # NumPy and OpenCV only at import: nothing loads until get_detector()
from core.boxes import cover, iou, reaches_edge

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

#: The border pass (see :func:`detect_faces`): longest side of its image, and its mirrored border as a
#: fraction of that side. 0 switches the pass off.
BORDER_PASS_SIDE = 160
BORDER_PASS_PAD = 0.2
#: A face of the border pass has at least this share of its box inside the frame (less: a mirror image).
BORDER_MIN_VISIBLE = 0.3
#: How :func:`_look_again` sees a face of the border pass: a square this many times its side, at most this
#: many pixels wide.
LOOK_AGAIN_SPAN = 2.4
LOOK_AGAIN_SIDE = 120

#: The five landmarks, in the order of MTCNN's output rows.
LANDMARK_NAMES = ("left_eye", "right_eye", "nose", "mouth_left", "mouth_right")

_lock = threading.Lock()


@dataclass(frozen=True)
class Detection:
    """One detected face, in original-image pixels. ``box`` is (x, y, width, height), inside the image;
    ``cut_by_frame``: the box reaches the image's edge (see :func:`reaches_edge`), so part of the face may
    lie beyond it. A landmark of such a face may lie outside the image: it is where the face's eye or mouth
    corner would be, which the crop needs (:func:`core.crop.crop_face` fills the rest black, as UTKFace
    chips are filled)."""

    box: tuple[float, float, float, float]
    confidence: float
    landmarks: dict[str, tuple[float, float]] = field(default_factory=dict)
    cut_by_frame: bool = False

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

    def __call__(self, rgb: np.ndarray, *, min_face_size: float, threshold_onet: float,
                 keep: Callable[[np.ndarray], np.ndarray] | None = None) -> np.ndarray:
        """The three stages on one image, in :func:`core.mtcnn_lite.detect`'s row layout (``keep`` is a hint
        that :class:`LiteStages` uses; here every proposal goes on).

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

    def __call__(self, rgb: np.ndarray, *, min_face_size: float, threshold_onet: float,
                 keep: Callable[[np.ndarray], np.ndarray] | None = None) -> np.ndarray:
        """:func:`core.mtcnn_lite.detect`; with ``keep`` (a test on rows, True for those to keep), RNet and ONet
        see only the proposals that pass it, which saves their time where few do (the border pass)."""
        if keep is None:
            return mtcnn_lite.detect(rgb, self.nets, min_face_size=min_face_size, threshold_onet=threshold_onet)
        image = (rgb.astype(np.float32) - 127.5) / 128.0  # as mtcnn_lite.detect
        rows = mtcnn_lite.stage_pnet(image, self.nets["pnet"], min_face_size)
        rows = rows[keep(rows)]
        if len(rows):
            rows = mtcnn_lite.stage_rnet(image, rows, self.nets["rnet"])
            rows = rows[keep(rows)]
        if len(rows):
            rows = mtcnn_lite.stage_onet(image, rows, self.nets["onet"], threshold_onet)
        return rows if len(rows) else np.empty((0, 16))


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


def _run_mtcnn(rgb: np.ndarray, *, min_face_size: float, threshold_onet: float,
               keep: Callable[[np.ndarray], np.ndarray] | None = None) -> list[dict]:
    """MTCNN on one RGB image; faces as ``mtcnn``'s JSON-style dicts (``box`` x, y, w, h and ``keypoints``,
    both rounded to whole pixels and the box clipped to the image, as ``MTCNN.detect_faces`` gives them),
    plus ``visible``: the share of the unclipped box inside the image. ``keep``: see :class:`LiteStages`."""
    kwargs = {} if keep is None else {"keep": keep}  # a stand-in detector (tests) need not take it
    rows = get_detector()(rgb, min_face_size=min_face_size, threshold_onet=threshold_onet, **kwargs)
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

    Two passes of MTCNN, merged by non-maximum suppression (see :func:`_merge`), then a third that only adds:

    1. the photo at its working size (longest side at most ``max_side``) finds faces of every size;
    2. a *large-face pass*: the photo reduced to :data:`LARGE_PASS_SIDE` px and framed by a black border
       of :data:`LARGE_PASS_PAD` of its side, so that PNet sees whole the faces that the frame cuts, and
       RNet/ONet see large faces from a less aliased image;
    3. a *border pass* (:func:`_border_faces`): the same small image framed by the photo mirrored at its
       edges (:data:`BORDER_PASS_PAD`), where a face cut by the frame looks whole again, and faces up to
       the padded image's size (larger than the frame) fit the pyramid. It keeps only faces that the frame
       cuts and that the first two passes did not find, each confirmed at its own scale by
       :func:`_look_again`. Faces of the first two passes are left exactly as they were (the landmarks
       stored for training, ``DETECTOR_VERSION``, stay valid).

    MTCNN scores large faces and faces cut by the frame lower than it scores whole, medium-sized faces
    (UTKFace chips, All-Age-Faces crops and close-up portraits score 0.5-0.95 where small faces in
    group photos score 0.99+), while its false positives in photos are small. So the user's
    ``threshold`` applies as it is to small whole faces, and relaxed to :func:`relaxed_threshold` for a
    face whose side is at least :data:`LARGE_FACE_FRACTION` of the photo's shorter side or of which
    less than :data:`CUT_VISIBLE_FRACTION` lies inside the frame; a face of the border pass needs the
    relaxed threshold as the mean of its two looks. ``python -m bench.detection`` measures what this finds
    and costs (``--border``: faces cut by the frame).

    Every face's box lies inside the image; ``cut_by_frame`` says whether it reaches the edge.

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
    shrunk: dict[float, np.ndarray] = {}  # the photo resized, by scale: the border pass shares the large pass's
    candidates = _detect_at(rgb, scale, pad=0.0, min_face_size=min_face_size, threshold=relaxed)
    large_scale = min(scale, LARGE_PASS_SIDE / max(h, w))
    # Faces that the large-face pass can see: at least 12 px (PNet's window) in its image.
    large_min = max(float(min_face_size), LARGE_FACE_FRACTION * min(h, w), 12.0 / large_scale)
    if large_min <= max(h, w):
        candidates += _detect_at(rgb, large_scale, pad=LARGE_PASS_PAD, min_face_size=large_min,
                                 threshold=relaxed, shrunk=shrunk)
    faces = []
    for face, visible in _merge(candidates):
        large = max(face.box[2], face.box[3]) >= LARGE_FACE_FRACTION * min(h, w)
        cut = visible < CUT_VISIBLE_FRACTION
        if face.confidence >= (relaxed if large or cut else threshold) and \
                max(face.box[2], face.box[3]) >= min_face_size:
            faces.append(face)
    if BORDER_PASS_SIDE:
        faces += _border_faces(rgb, scale, faces, min_face_size=min_face_size, threshold=threshold,
                               shrunk=shrunk)
    # within one pixel of the image MTCNN saw: boxes of the first pass end at its last pixel, not at the edge
    edge = max(1.0, 1.0 / scale)
    faces = [replace(f, cut_by_frame=reaches_edge(f.box, w, h, edge)) for f in faces]
    faces.sort(key=lambda d: d.area, reverse=True)
    return faces


def _border_faces(rgb: np.ndarray, scale: float, kept: list[Detection], *, min_face_size: float,
                  threshold: float, shrunk: dict[float, np.ndarray] | None = None) -> list[Detection]:
    """Faces cut by the frame that the first two passes missed (see :func:`detect_faces`): found in the photo
    reduced to :data:`BORDER_PASS_SIDE` px inside a mirrored border, found again by :func:`_look_again`;
    only faces that the frame cuts, with at least :data:`BORDER_MIN_VISIBLE` of their box inside, and that
    overlap no face found before, most confident first."""
    h, w = rgb.shape[:2]
    small_scale = min(scale, BORDER_PASS_SIDE / max(h, w))
    smallest = max(float(min_face_size), _MTCNN_MIN_FACE / small_scale)
    if smallest > max(h, w):
        return []
    needed = relaxed_threshold(threshold)
    # the mean of two confidences reaches ``needed`` only where the first is at least 2 * needed - 1
    found = _detect_at(rgb, small_scale, pad=BORDER_PASS_PAD, min_face_size=smallest,
                       threshold=max(0.0, 2 * needed - 1), reflect=True, shrunk=shrunk)
    out: list[Detection] = []
    for face, visible in sorted(found, key=lambda c: c[0].confidence, reverse=True):
        if not BORDER_MIN_VISIBLE <= visible < CUT_VISIBLE_FRACTION or not _apart(face, kept + out):
            continue
        again = _look_again(rgb, face)
        if again is None or (face.confidence + again.confidence) / 2 < needed or not _apart(again, kept + out) \
                or max(again.box[2], again.box[3]) < min_face_size:
            continue
        out.append(Detection(box=again.box, confidence=(face.confidence + again.confidence) / 2,
                             landmarks=again.landmarks))
    return out


def _apart(face: Detection, others: list[Detection]) -> bool:
    """Whether ``face`` is not one of ``others``: no IoU above 0.3, and neither box half inside the other."""
    return all(iou(face.box, o.box) <= 0.3 and cover(face.box, o.box) <= 0.5 for o in others)


def _look_again(rgb: np.ndarray, face: Detection) -> Detection | None:
    """``face`` (of the border pass) detected again in a square :data:`LOOK_AGAIN_SPAN` times its size around
    it, at :data:`LOOK_AGAIN_SIDE` px and mirrored beyond the frame's edges: the detection there that overlaps
    it most (IoU above 0.3), its box clipped to the photo and its landmarks in photo pixels; None where there
    is none. So a face of the small padded image is confirmed, and its box and landmarks refined, at the
    face's own scale; what merely looks like a face once mirrored is seldom found twice."""
    h, w = rgb.shape[:2]
    x, y, bw, bh = face.box
    side = max(2, int(round(LOOK_AGAIN_SPAN * max(bw, bh))))
    x0, y0 = int(round(x + bw / 2 - side / 2)), int(round(y + bh / 2 - side / 2))
    x1, y1 = x0 + side, y0 + side
    crop = rgb[max(0, y0):min(h, y1), max(0, x0):min(w, x1)]
    region = cv2.copyMakeBorder(crop, max(0, -y0), max(0, y1 - h), max(0, -x0), max(0, x1 - w),
                                cv2.BORDER_REFLECT_101)
    if side > LOOK_AGAIN_SIDE:
        region = cv2.resize(region, (LOOK_AGAIN_SIDE, LOOK_AGAIN_SIDE), interpolation=cv2.INTER_AREA)
    k = side / region.shape[0]
    with _lock:
        raw = _run_mtcnn(np.ascontiguousarray(region), min_face_size=float(_MTCNN_MIN_FACE), threshold_onet=0.05)
    best, best_iou = None, 0.3
    for r in raw:
        rx, ry, rw, rh = (float(v) for v in r["box"])
        cx0, cy0 = max(0.0, x0 + rx * k), max(0.0, y0 + ry * k)
        cx1, cy1 = min(float(w), x0 + (rx + rw) * k), min(float(h), y0 + (ry + rh) * k)
        if cx1 - cx0 < 1 or cy1 - cy0 < 1:
            continue
        box = (cx0, cy0, cx1 - cx0, cy1 - cy0)
        overlap = iou(box, face.box)
        if overlap > best_iou:
            marks = {n: (x0 + r["keypoints"][n][0] * k, y0 + r["keypoints"][n][1] * k) for n in LANDMARK_NAMES}
            best, best_iou = Detection(box=box, confidence=float(r["confidence"]), landmarks=marks), overlap
    return best


def relaxed_threshold(threshold: float) -> float:
    """The confidence a large or cut face needs: the distance to 1 widened :data:`RELAX_FACTOR` times
    (0.95 -> 0.80), never below 0.5 and never above ``threshold``."""
    return min(threshold, max(0.5, 1.0 - RELAX_FACTOR * (1.0 - threshold)))


def _detect_at(rgb: np.ndarray, scale: float, *, pad: float, min_face_size: float, threshold: float,
               reflect: bool = False, shrunk: dict[float, np.ndarray] | None = None) -> list[tuple[Detection, float]]:
    """One MTCNN pass on ``rgb`` resized by ``scale`` (kept in ``shrunk`` for the next pass at that scale) and
    framed by a border of ``pad`` x its longer side, black or (``reflect``) the photo mirrored at its edges;
    detections in original pixels, clipped to the photo, with the fraction of each raw box that lies inside
    the photo."""
    h, w = rgb.shape[:2]
    small = None if shrunk is None else shrunk.get(scale)
    if small is None:
        small = rgb
        if scale < 1.0:
            size = (max(1, round(w * scale)), max(1, round(h * scale)))
            small = cv2.resize(rgb, size, interpolation=cv2.INTER_AREA)
        if shrunk is not None:
            shrunk[scale] = small
    sh, sw = small.shape[:2]
    border = int(round(pad * max(sh, sw)))
    if border and reflect:
        small = cv2.copyMakeBorder(small, border, border, border, border, cv2.BORDER_REFLECT_101)
    elif border:
        small = cv2.copyMakeBorder(small, border, border, border, border, cv2.BORDER_CONSTANT, value=(0, 0, 0))
    sx, sy = w / sw, h / sh
    # At most MTCNN's own 20 px: mtcnn 1.0 sizes its pyramid as if for 20 px faces, so a larger minimum
    # shrinks its last levels below PNet's 12 px input and the call fails. Smaller faces are dropped below.
    mtcnn_min = max(12.0, min(float(_MTCNN_MIN_FACE), min_face_size * min(sw / w, sh / h)))
    keep = _crossing(border, border, border + sw, border + sh) if reflect else None
    with _lock:
        raw = _run_mtcnn(np.ascontiguousarray(small), min_face_size=mtcnn_min,
                         threshold_onet=min(threshold, 0.99), keep=keep)
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


def _crossing(x0: float, y0: float, x1: float, y1: float) -> Callable[[np.ndarray], np.ndarray]:
    """A test on MTCNN's rows: the box (columns 1-4) overlaps the rectangle (x0, y0, x1, y1) and crosses its
    edge, as a face cut by the frame does in a padded image."""
    def crossing(rows: np.ndarray) -> np.ndarray:
        bx0, by0, bx1, by1 = rows[:, 1], rows[:, 2], rows[:, 3], rows[:, 4]
        overlaps = (bx1 > x0) & (bx0 < x1) & (by1 > y0) & (by0 < y1)
        return overlaps & ((bx0 < x0) | (by0 < y0) | (bx1 > x1) | (by1 > y1))
    return crossing


def _merge(candidates: list[tuple[Detection, float]], iou_limit: float = 0.4) -> list[tuple[Detection, float]]:
    """Non-maximum suppression across passes: of boxes overlapping by more than ``iou_limit`` (IoU), the
    most confident one stays."""
    kept: list[tuple[Detection, float]] = []
    for cand in sorted(candidates, key=lambda c: c[0].confidence, reverse=True):
        if all(iou(cand[0].box, k[0].box) <= iou_limit for k in kept):
            kept.append(cand)
    return kept
