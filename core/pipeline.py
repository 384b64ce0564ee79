"""The one road from an image to results: decode -> detect -> crop -> both models -> FaceResult."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from core.crop import crop_face
from core.detect import Detection, detect_faces
from core.errors import FaceNotDetected
from core.image import ImageInput, load_image
from core.models import AgeGenderModels, load_models
from core.results import FaceResult

DEFAULT_MIN_FACE_SIZE = 20
DEFAULT_THRESHOLD = 0.9


def analyze(
    image: ImageInput,
    *,
    detect: bool = True,
    min_face_size: int = DEFAULT_MIN_FACE_SIZE,
    threshold: float = DEFAULT_THRESHOLD,
    align: bool = True,
    enforce_detection: bool = False,
    models: AgeGenderModels | None = None,
    models_dir: str | Path | None = None,
) -> list[FaceResult]:
    """Find every face in ``image`` and estimate its age and gender; largest face first.

    Args:
        image: bytes, a path, a file object, a PIL image or an H x W x 3 RGB uint8 array.
        detect: ``False`` treats the whole image as one face already cropped like a UTKFace chip.
        min_face_size: smallest face side to report, in original pixels.
        threshold: minimum detection confidence (0-1).
        align: rotate each face so the eyes are level before the models see it.
        enforce_detection: raise :class:`FaceNotDetected` instead of returning ``[]`` when no face is found.
        models / models_dir: the models to use (default: ``models/``, loaded once per process).

    Raises:
        InvalidImage: the input is not a readable image.
        FaceNotDetected: no face, and ``enforce_detection`` is set.
        ModelNotFound: the model files are missing.
    """
    rgb = load_image(image)
    models = models or load_models(models_dir)
    if detect:
        faces = detect_faces(rgb, min_face_size=min_face_size, threshold=threshold)
    else:
        h, w = rgb.shape[:2]
        faces = [Detection(box=(0.0, 0.0, float(w), float(h)), confidence=1.0)]
    if not faces:
        if enforce_detection:
            raise FaceNotDetected(
                f"no face found (minimum face size {min_face_size}px, threshold {threshold}). Use a photo "
                "where the face is visible and at least that large, lower the threshold or min_face_size, "
                "or pass detect=False for an already cropped face."
            )
        return []
    return predict_faces(rgb, faces, models, align=align)


def predict_faces(rgb: np.ndarray, faces: list[Detection], models: AgeGenderModels, *,
                  align: bool = True) -> list[FaceResult]:
    """Crop every detection once per model input size and run both models on the batch."""
    crops = {
        size: np.stack([crop_face(rgb, f.landmark_array() if f.landmarks else None, size, align=align)
                        for f in faces])
        for size in set(models.input_sizes.values())
    }
    pred = models.predict(crops)
    results = []
    for face, age, p_female in zip(faces, pred.ages, pred.female_probabilities):
        age = float(max(0.0, age))
        results.append(FaceResult(box=face.box, confidence=face.confidence, age=age,
                                  age_range=models.age_range(age), female_probability=float(p_female),
                                  landmarks=dict(face.landmarks)))
    return results
