"""Draw numbered, labelled face boxes on a copy of an image."""

from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np

from core.results import FaceResult

FEMALE_COLOR = (220, 60, 140)
MALE_COLOR = (40, 120, 230)
UNCERTAIN_COLOR = (120, 120, 120)
COLORS = {"female": FEMALE_COLOR, "male": MALE_COLOR, "uncertain": UNCERTAIN_COLOR}


def face_label(index: int, face: FaceResult) -> str:
    """ "n: age F" (or M), or "n: age ?" where the gender is uncertain: the face's number in the results table,
    its age and gender, and no percentage (it would read as the detector's confidence)."""
    return f"{index}: {face.age:.0f} {'?' if not face.gender_reliable else face.gender[0].upper()}"


def shrink(rgb: np.ndarray, max_side: int | None) -> tuple[np.ndarray, float]:
    """``rgb`` downscaled so its longest side is at most ``max_side`` (a copy), and the scale used."""
    h, w = rgb.shape[:2]
    if not max_side or max(h, w) <= max_side:
        return rgb.copy(), 1.0
    scale = max_side / max(h, w)
    return cv2.resize(rgb, (max(1, round(w * scale)), max(1, round(h * scale))), interpolation=cv2.INTER_AREA), scale


def annotate(rgb: np.ndarray, faces: Sequence[FaceResult], *, max_side: int | None = None) -> np.ndarray:
    """A copy of ``rgb`` with each face boxed, numbered from 1 and labelled "n: age F/M" (grey "n: age ?"
    where the gender is uncertain).

    With ``max_side`` the copy is first downscaled (for display of very large photos).
    """
    out, scale = shrink(rgb, max_side)
    h, w = out.shape[:2]
    thickness = max(1, round(max(h, w) / 400))
    # text about 1/45 of the longer side high: readable where the page draws the photo small (a phone)
    font_scale = max(0.45, max(h, w) / 1000)
    for i, face in enumerate(faces, 1):
        x, y, bw, bh = (round(v * scale) for v in face.box)
        color = COLORS[face.gender]
        cv2.rectangle(out, (x, y), (x + bw, y + bh), color, thickness, cv2.LINE_AA)
        text = face_label(i, face)
        (tw, th), base = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, font_scale, thickness)
        ty = y - 4 if y - th - base - 4 >= 0 else min(h - 1, y + bh + th + 4)
        cv2.rectangle(out, (x, ty - th - base), (x + tw + 4, ty + base // 2), color, -1)
        cv2.putText(out, text, (x + 2, ty - base // 2), cv2.FONT_HERSHEY_SIMPLEX, font_scale, (255, 255, 255),
                    thickness, cv2.LINE_AA)
    return out
