"""Faces cut by the frame, labelled and built in code: what ``python -m bench.detection --border`` measures.

The faces are the hand-counted ones of ``bench/photo_faces.json`` and the astronaut's. Their boxes (ground
truth) come from the detector itself on each *uncut* photo, where every face is whole: the faces it finds
there, at most as many as counted by hand, the most confident first (16 of the 17 photos give exactly the
hand count; the crowded team photo gives 25 of its 26); the astronaut's box is known (``ASTRONAUT_FACE``).

Each face is then framed anew (:func:`cut_case`): scaled so its box height is ``size`` of the frame's shorter
side, and placed so that ``visible`` of the box's area stays inside the frame, cut at one border (the other
axis centred) or at a corner (cut equally on both axes). Frame pixels that the source photo does not cover
are its mean colour; the cut side is always the photo's own pixels up to the frame's edge. The other faces
of the photo that fall into the frame are labelled too, so a detection of them is no false positive.

:func:`composite` puts several such faces on one canvas: one at every border and corner, one of them the
selfie-taker's (large, cut by a corner), and two whole faces inside.
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from core.boxes import Box, covered, iou

HAND_COUNT = Path(__file__).resolve().parent / "photo_faces.json"
#: The astronaut's face (x, y, w, h) in ``skimage.data.astronaut()``, as the tests know it.
ASTRONAUT_FACE = (182.0, 64.0, 83.0, 107.0)

VISIBLE = (0.9, 0.75, 0.6, 0.45)
WHERE = ("left", "right", "top", "bottom", "top-left", "top-right", "bottom-left", "bottom-right")
SIZES = (0.2, 0.35, 0.5, 0.7, 0.9)
FRAME = (480, 360)  # width, height of each cut case
#: A detection is the labelled face when its box overlaps the face's box clipped to the frame this much (IoU).
MATCH_IOU = 0.4



@dataclass(frozen=True)
class SourceFace:
    """One labelled face: the photo it is in, its box there, and the photo's other labelled faces."""

    photo: str
    index: int
    box: Box
    others: tuple[Box, ...]
    crowd: bool = False


@dataclass(frozen=True)
class Case:
    """One image to detect on, and what it holds: ``targets`` (box clipped to the frame, visible share, where,
    size) are scored for recall; ``known`` boxes are labelled faces that are not scored (too little inside, or
    not the face under test), so a detection of them is neither a hit nor a false positive."""

    name: str
    image: np.ndarray
    targets: tuple[tuple[Box, float, str, float], ...]
    known: tuple[Box, ...]
    crowd: bool = False


def sources(photos: Path, detect: Callable[[np.ndarray], list]) -> tuple[dict[str, np.ndarray], list[SourceFace]]:
    """Every labelled face (see the module docstring) and the photos they are in, by name."""
    from skimage import data

    from core.image import load_image

    hand = {k: v for k, v in json.loads(HAND_COUNT.read_text()).items() if not k.startswith("_")}
    images: dict[str, np.ndarray] = {}
    faces: list[SourceFace] = []
    for name, truth in sorted(hand.items()):
        if not (photos / name).is_file():
            continue
        rgb = load_image(photos / name)
        found = sorted(detect(rgb), key=lambda d: d.confidence, reverse=True)[:truth["faces"]]
        boxes = [tuple(float(v) for v in d.box) for d in found]
        images[name] = rgb
        for i, box in enumerate(boxes):
            faces.append(SourceFace(name, i, box, tuple(b for j, b in enumerate(boxes) if j != i),
                                    bool(truth.get("crowd"))))
    images["astronaut"] = np.ascontiguousarray(data.astronaut())
    faces.append(SourceFace("astronaut", 0, ASTRONAUT_FACE, ()))
    return images, faces


def _placement(box: Box, size: float, visible: float, where: str, frame: tuple[int, int]) -> tuple[float, ...]:
    """Scale ``k`` and the face box's top-left corner in the frame for one cut."""
    fw, fh = frame
    k = size * min(fw, fh) / box[3]
    bw, bh = box[2] * k, box[3] * k
    vx = vy = 1.0
    if "-" in where:
        vx = vy = visible ** 0.5
    elif where in ("left", "right"):
        vx = visible
    else:
        vy = visible
    x0 = -(1 - vx) * bw if "left" in where else fw - vx * bw if "right" in where else (fw - bw) / 2
    y0 = -(1 - vy) * bh if "top" in where else fh - vy * bh if "bottom" in where else (fh - bh) / 2
    return k, x0, y0


def _frame(rgb: np.ndarray, k: float, shift: tuple[float, float], size: tuple[int, int],
           onto: np.ndarray | None = None) -> np.ndarray:
    """``rgb`` scaled by ``k`` and shifted by ``shift`` into a ``size`` canvas: the photo's mean colour where
    the photo does not reach, or ``onto`` (a canvas of that size, left as it is there)."""
    source, m = rgb, k
    if k < 1:  # shrink with area averaging first (warpAffine would alias), then only shift
        source = cv2.resize(rgb, (max(1, round(rgb.shape[1] * k)), max(1, round(rgb.shape[0] * k))),
                            interpolation=cv2.INTER_AREA)
        m = k * rgb.shape[1] / source.shape[1]
    matrix = np.array([[m, 0, shift[0]], [0, m, shift[1]]], np.float64)
    flags = cv2.INTER_CUBIC if k > 1 else cv2.INTER_LINEAR
    if onto is not None:
        return cv2.warpAffine(source, matrix, size, dst=onto.copy(), flags=flags, borderMode=cv2.BORDER_TRANSPARENT)
    fill = tuple(float(v) for v in rgb.reshape(-1, 3).mean(0))
    return cv2.warpAffine(source, matrix, size, flags=flags, borderMode=cv2.BORDER_CONSTANT, borderValue=fill)


def _map(box: Box, k: float, shift: tuple[float, float]) -> Box:
    return (box[0] * k + shift[0], box[1] * k + shift[1], box[2] * k, box[3] * k)


def clip(box: Box, frame: tuple[int, int]) -> tuple[Box, float]:
    """``box`` clipped to a ``frame`` (width, height) and the share of its area that stays inside."""
    x0, y0 = max(0.0, box[0]), max(0.0, box[1])
    x1, y1 = min(float(frame[0]), box[0] + box[2]), min(float(frame[1]), box[1] + box[3])
    if x1 <= x0 or y1 <= y0:
        return (x0, y0, 0.0, 0.0), 0.0
    return (x0, y0, x1 - x0, y1 - y0), (x1 - x0) * (y1 - y0) / (box[2] * box[3])


def cut_case(rgb: np.ndarray, face: SourceFace, visible: float, where: str, size: float,
             frame: tuple[int, int] = FRAME) -> Case:
    """``face`` framed so that ``visible`` of its box is inside, cut at ``where``, its height ``size`` of the
    frame's shorter side."""
    k, x0, y0 = _placement(face.box, size, visible, where, frame)
    shift = (x0 - face.box[0] * k, y0 - face.box[1] * k)
    image = _frame(rgb, k, shift, frame)
    target, share = clip(_map(face.box, k, shift), frame)
    known = tuple(c for c, s in (clip(_map(b, k, shift), frame) for b in face.others) if s > 0)
    return Case(f"{face.photo}#{face.index} {where} {visible:.0%} size {size:.0%}", image,
                ((target, share, where, size),), known, face.crowd)


def cut_cases(images: dict[str, np.ndarray], faces: list[SourceFace], *, visible=VISIBLE, where=WHERE,
              sizes=SIZES, frame: tuple[int, int] = FRAME) -> Iterator[Case]:
    """Every cut of every face."""
    for face in faces:
        for size in sizes:
            for v in visible:
                for w in where:
                    yield cut_case(images[face.photo], face, v, w, size, frame)


def composite(images: dict[str, np.ndarray], faces: list[SourceFace], seed: int,
              frame: tuple[int, int] = (960, 640)) -> Case:
    """A crowded frame: the selfie-taker's face at one corner (45-55 % of the shorter side, 60 % or 75 %
    inside), a face at every other border and corner (visible 45-90 %, 15-30 % of the shorter side) and two
    whole faces inside, each with its head around it, on a smooth background. A face whose head would cover
    a face already there is left out."""
    rng = random.Random(seed)
    fw, fh = frame
    short = min(fw, fh)
    yy, xx = np.mgrid[0:fh, 0:fw].astype(np.float32)
    colours = np.array([rng.uniform(40, 220) for _ in range(6)], np.float32).reshape(2, 3)
    t = ((xx / fw + yy / fh) / 2)[..., None]
    canvas = (colours[0] * (1 - t) + colours[1] * t).astype(np.uint8)
    selfie = rng.choice(WHERE[4:])
    plan = [(selfie, rng.choice((0.6, 0.75)), rng.uniform(0.45, 0.55))]
    plan += [(w, rng.choice(VISIBLE), rng.uniform(0.15, 0.3)) for w in WHERE if w != selfie]
    plan += [("inside", 1.0, rng.uniform(0.12, 0.2)) for _ in range(2)]
    targets: list[tuple[Box, float, str, float]] = []
    heads: list[Box] = []
    boxes: list[Box] = []
    inside = 0
    for where, visible, size in plan:
        face = rng.choice([f for f in faces if not f.crowd] if size > 0.3 else faces)
        k = size * short / face.box[3]
        if where == "inside":
            x0 = fw * (0.4 + 0.2 * inside) - face.box[2] * k / 2
            y0 = fh * 0.45 - face.box[3] * k / 2
            inside += 1
        else:
            k, x0, y0 = _placement(face.box, size, visible, where, frame)
        shift = (x0 - face.box[0] * k, y0 - face.box[1] * k)
        box = _map(face.box, k, shift)
        head = (box[0] - 0.3 * box[2], box[1] - 0.3 * box[3], 1.6 * box[2], 1.6 * box[3])
        if any(covered(b, head) > 0 for b in boxes) or any(covered(box, h) > 0 for h in heads):
            continue
        region, _ = clip(head, frame)
        rx0, ry0 = int(region[0]), int(region[1])
        rx1, ry1 = int(np.ceil(region[0] + region[2])), int(np.ceil(region[1] + region[3]))
        canvas[ry0:ry1, rx0:rx1] = _frame(images[face.photo], k, (shift[0] - rx0, shift[1] - ry0),
                                          (rx1 - rx0, ry1 - ry0), onto=canvas[ry0:ry1, rx0:rx1])
        heads.append(head)
        boxes.append(box)
        clipped, share = clip(box, frame)
        targets.append((clipped, share, where, size))
    return Case(f"composite {seed}", canvas, tuple(targets), ())


def score(case: Case, boxes: list[Box]) -> tuple[list[bool], int, int]:
    """For each target whether a box found it; false positives (boxes matching no labelled face; on a crowd
    photo none, its unlabelled faces being real); boxes not inside the image."""
    h, w = case.image.shape[:2]
    outside = sum(b[0] < -1e-6 or b[1] < -1e-6 or b[0] + b[2] > w + 1e-6 or b[1] + b[3] > h + 1e-6 for b in boxes)
    hits = [any(iou(b, t[0]) >= MATCH_IOU for b in boxes) for t in case.targets]
    labelled = [t[0] for t in case.targets] + list(case.known)
    false = 0 if case.crowd else sum(
        all(iou(b, k) < MATCH_IOU and covered(b, k) < 0.5 for k in labelled) for b in boxes)
    return hits, false, outside


def evaluate(cases: Iterator[Case], detect: Callable[[np.ndarray], list]) -> dict:
    """Recall by visible share, by border or corner and by size, false positives and boxes outside the image,
    over ``cases`` (``detect`` returns objects with a ``box``); the targets missed, by name."""
    tally: dict[str, list[int]] = {}
    images = false = outside = 0
    missed: list[str] = []
    false_at: list[str] = []

    def add(key: str, hit: bool) -> None:
        row = tally.setdefault(key, [0, 0])
        row[0] += hit
        row[1] += 1

    for case in cases:
        boxes = [tuple(float(v) for v in d.box) for d in detect(case.image)]
        hits, f, o = score(case, boxes)
        images, false, outside = images + 1, false + f, outside + o
        if f:
            false_at.append(f"{case.name}: {f}")
        for (_, share, where, size), hit in zip(case.targets, hits, strict=True):
            level = next((f"{v:.0%}" for v in VISIBLE if share >= v - 1e-3), "<45%") if where != "inside" \
                else "whole"
            add(f"visible {level}", hit)
            add(f"visible {level} {where}", hit)
            add(f"visible {level} size {size:.0%}" if size in SIZES else f"visible {level} size other", hit)
            if not hit:
                missed.append(f"{case.name}: {where} {share:.0%}")
    recall = {k: {"found": v[0], "faces": v[1], "recall": round(v[0] / v[1], 4)} for k, v in sorted(tally.items())}
    return {"images": images, "false_positives": false, "boxes_outside": outside, "recall": recall,
            "missed": missed, "false_positive_images": false_at}
