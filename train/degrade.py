"""The degradations of the evaluation's robustness suite: one deterministic function per kind of bad photo.

Each takes a decoded H x W x 3 RGB uint8 image and returns a new one of the same shape and dtype; the
evaluation applies it to the decoded image *before* face detection, because that is what a real degraded
photo is: the detector, the crop and the models all see it.

- ``grayscale``: ITU-R BT.601 luma (``0.299 R + 0.587 G + 0.114 B``, as Pillow's ``"L"``) in all three channels.
- ``face_24px``: the detail of a face 24 px wide. The whole image is shrunk with area averaging by
  ``24 / face_width`` (``face_width``: the width of the largest face box MTCNN finds on the clean image),
  then enlarged back to its own size with bilinear interpolation. The pixel count is unchanged, so the
  detector's size limits are not what is measured; what is lost is everything finer than a 24 px face
  holds. An image whose face is already 24 px or narrower is returned unchanged.
- ``jpeg_q15``: encoded as a baseline JPEG at quality 15 (Pillow/libjpeg, 4:2:0 chroma subsampling) and
  decoded by the app's own decoder (``core.image.load_image``).
- ``blur_sigma2``: Gaussian blur, sigma 2 px in both directions (OpenCV, kernel 13 x 13, reflected borders).
"""

from __future__ import annotations

import io

import cv2
import numpy as np
from PIL import Image

from core.image import load_image

#: The face width that ``face_24px`` simulates, in pixels.
LOW_RES_FACE_PX = 24
JPEG_QUALITY = 15
BLUR_SIGMA = 2.0


def grayscale(rgb: np.ndarray) -> np.ndarray:
    luma = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)
    return np.repeat(luma[:, :, None], 3, axis=2)


def low_resolution(rgb: np.ndarray, face_width: float, target: int = LOW_RES_FACE_PX) -> np.ndarray:
    """Down so a face ``face_width`` px wide becomes ``target`` px wide (area averaging), back up (bilinear)."""
    scale = target / float(face_width)
    if not scale < 1:
        return rgb.copy()
    h, w = rgb.shape[:2]
    small = cv2.resize(rgb, (max(1, round(w * scale)), max(1, round(h * scale))), interpolation=cv2.INTER_AREA)
    return cv2.resize(small, (w, h), interpolation=cv2.INTER_LINEAR)


def jpeg(rgb: np.ndarray, quality: int = JPEG_QUALITY) -> np.ndarray:
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="JPEG", quality=quality)
    return load_image(buf.getvalue())


def blur(rgb: np.ndarray, sigma: float = BLUR_SIGMA) -> np.ndarray:
    return cv2.GaussianBlur(rgb, (0, 0), sigmaX=sigma, sigmaY=sigma, borderType=cv2.BORDER_REFLECT_101)


#: Name -> what it does, in the order they are reported.
DEGRADATIONS = {
    "grayscale": "grayscale (BT.601 luma in all three channels)",
    "face_24px": f"face {LOW_RES_FACE_PX} px wide: whole image shrunk (area) so the clean image's largest MTCNN "
                 f"face box is {LOW_RES_FACE_PX} px wide, enlarged back (bilinear)",
    "jpeg_q15": f"JPEG quality {JPEG_QUALITY} (Pillow, 4:2:0), decoded by the app",
    "blur_sigma2": f"Gaussian blur, sigma {BLUR_SIGMA:g} px",
}


def degrade(rgb: np.ndarray, name: str, *, face_width: float | None = None) -> np.ndarray:
    """Apply the degradation ``name`` (a key of :data:`DEGRADATIONS`, or ``"clean"`` for none)."""
    if name == "clean":
        return rgb
    if name == "grayscale":
        return grayscale(rgb)
    if name == "face_24px":
        if face_width is None:
            raise ValueError("face_24px needs the width of the face on the clean image")
        return low_resolution(rgb, face_width)
    if name == "jpeg_q15":
        return jpeg(rgb)
    if name == "blur_sigma2":
        return blur(rgb)
    raise ValueError(f"unknown degradation {name!r}; known: clean, {', '.join(DEGRADATIONS)}")
