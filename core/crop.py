"""The one crop: a detected face -> a square model input framed like a UTKFace chip.

UTKFace "aligned & cropped" chips are 200 x 200 with the face filling most of the frame.
``python -m train.measure_frame`` runs MTCNN over the chips and reports where the five landmarks land; the
medians are :data:`CHIP_TEMPLATE`. A face found in a photo is mapped onto that template by a similarity
transform (rotation + uniform scale + shift; without rotation when ``align=False``), so the model sees
the same framing it was trained on. Training calls :func:`crop_face` with ``landmarks=None`` on chips
(the chip is already in the template frame), inference calls it with MTCNN's landmarks: one geometry,
one function, one resampling method.
"""

from __future__ import annotations

import math

import cv2
import numpy as np

#: Median MTCNN landmarks on UTKFace chips, as fractions of the chip side (x, y), in the order
#: left_eye, right_eye, nose, mouth_left, mouth_right (image left/right). From
#: ``python -m train.measure_frame --data-dir ../shared/data/utkface --n 1500``
#: (1466 of 1500 chips had a face; interquartile ranges 0.01-0.05 of the side).
CHIP_TEMPLATE = np.array(
    [
        [0.29, 0.29],
        [0.69, 0.29],
        [0.49, 0.52],
        [0.31, 0.68],
        [0.67, 0.69],
    ],
    dtype=np.float64,
)


def similarity_transform(src: np.ndarray, dst: np.ndarray, *, rotate: bool = True) -> np.ndarray:
    """Least-squares 2 x 3 matrix mapping points ``src`` onto ``dst`` (Umeyama, no reflection).

    With ``rotate=False`` only a uniform scale and a shift are fitted.
    """
    src = np.asarray(src, dtype=np.float64)
    dst = np.asarray(dst, dtype=np.float64)
    mu_s, mu_d = src.mean(0), dst.mean(0)
    s0, d0 = src - mu_s, dst - mu_d
    var = (s0**2).sum()
    if var <= 1e-12:
        raise ValueError("landmarks are degenerate (all at one point)")
    if rotate:
        a = (s0 * d0).sum()  # sum of dot products
        b = (s0[:, 0] * d0[:, 1] - s0[:, 1] * d0[:, 0]).sum()  # sum of cross products
        scale = math.hypot(a, b) / var
        theta = math.atan2(b, a)
        c, s = scale * math.cos(theta), scale * math.sin(theta)
        rot = np.array([[c, -s], [s, c]])
    else:
        scale = (s0 * d0).sum() / var
        rot = np.array([[scale, 0.0], [0.0, scale]])
    shift = mu_d - rot @ mu_s
    return np.hstack([rot, shift[:, None]])


def crop_face(rgb: np.ndarray, landmarks: np.ndarray | None, size: int, *, align: bool = True) -> np.ndarray:
    """Crop one face as a ``size`` x ``size`` RGB uint8 model input in the UTKFace chip frame.

    Args:
        rgb: the whole image, H x W x 3 uint8.
        landmarks: (5, 2) MTCNN landmarks in image pixels (see ``Detection.landmark_array``), or ``None``
            when ``rgb`` is already a chip (a UTKFace image, or any image cropped like one).
        size: output side in pixels (the model's input size).
        align: rotate so the eyes are level; otherwise only scale and shift.
    """
    h, w = rgb.shape[:2]
    if landmarks is None:
        matrix = np.array([[size / w, 0.0, 0.0], [0.0, size / h, 0.0]])
    else:
        matrix = similarity_transform(landmarks, CHIP_TEMPLATE * size, rotate=align)
    return warp(rgb, matrix, size)


def warp(rgb: np.ndarray, matrix: np.ndarray, size: int) -> np.ndarray:
    """Apply a 2 x 3 affine ``matrix`` (image -> output pixels) into a ``size`` square, anti-aliased.

    When the transform shrinks the face, the region that maps into the output is first reduced with
    area averaging, so a 600 px face and a 200 px chip reach the model with the same sharpness.
    Outside the image is black, as in UTKFace chips: a face cut by the frame is cropped as if the photo lay
    on a black canvas, whichever way it is resampled (the region is padded black before it is reduced).
    """
    matrix = np.asarray(matrix, dtype=np.float64)
    scale = math.sqrt(abs(np.linalg.det(matrix[:, :2])))
    source = rgb
    if scale < 0.9:
        inverse = cv2.invertAffineTransform(matrix)
        corners = np.array([[0, 0, 1], [size, 0, 1], [0, size, 1], [size, size, 1]], dtype=np.float64)
        src_pts = corners @ inverse.T
        h, w = rgb.shape[:2]
        x0, y0 = math.floor(src_pts[:, 0].min()) - 2, math.floor(src_pts[:, 1].min()) - 2
        x1, y1 = math.ceil(src_pts[:, 0].max()) + 2, math.ceil(src_pts[:, 1].max()) + 2
        inside = rgb[max(0, y0):max(0, min(h, y1)), max(0, x0):max(0, min(w, x1))]
        if inside.size:
            roi = inside
            if x0 < 0 or y0 < 0 or x1 > w or y1 > h:  # the part beyond the image: black
                roi = cv2.copyMakeBorder(inside, max(0, -y0), y1 - y0 - inside.shape[0] - max(0, -y0),
                                         max(0, -x0), x1 - x0 - inside.shape[1] - max(0, -x0),
                                         cv2.BORDER_CONSTANT, value=(0, 0, 0))
            nw, nh = max(1, round((x1 - x0) * scale)), max(1, round((y1 - y0) * scale))
            source = cv2.resize(roi, (nw, nh), interpolation=cv2.INTER_AREA)
            fx, fy = nw / (x1 - x0), nh / (y1 - y0)
            # p_small = P p_full with P = [[fx, 0, -x0 fx], [0, fy, -y0 fy]]; the output needs M P^-1.
            p_inv = np.array([[1 / fx, 0, x0], [0, 1 / fy, y0], [0, 0, 1]], dtype=np.float64)
            matrix = matrix @ p_inv
    return cv2.warpAffine(source, matrix, (size, size), flags=cv2.INTER_LINEAR,
                          borderMode=cv2.BORDER_CONSTANT, borderValue=(0, 0, 0))
