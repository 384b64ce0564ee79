"""The one road from an image to results: decode -> detect -> crop -> both models -> FaceResult."""

from __future__ import annotations

import threading
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from core.crop import crop_face
from core.detect import DEFAULT_MIN_FACE_SIZE, DEFAULT_THRESHOLD, LANDMARK_NAMES, Detection, detect_faces, get_detector
from core.errors import AgeGenderError, FaceNotDetected
from core.image import ImageInput, load_image
from core.models import MAX_AGE, AgeGenderModels, load_models, require_models, settle_precision
from core.results import FaceResult

_prepare_lock = threading.Lock()


def prepare(models_dir: str | Path | None = None, *, tta: bool | None = None) -> AgeGenderModels:
    """The process-wide models (:func:`core.models.load_models`), with the face detector built too.

    On first use both are loaded at once: the detector in a second thread (MTCNN's LiteRT networks from the
    cache, a fraction of a second; on a machine's first start their conversion, which imports TensorFlow,
    or without LiteRT TensorFlow and the mtcnn package) while this one loads the models (on the export
    runtime: OpenVINO, which needs no TensorFlow), which shortens the first result on a multi-core CPU.
    Where the export's precision is still to be measured on this CPU (:func:`core.models.settle_precision`:
    once per CPU), that is done first, alone. Later calls return at once.
    """
    with _prepare_lock:
        require_models(models_dir)  # a missing model: ModelNotFound at once, no TensorFlow, no detector
        if get_detector.cache_info().currsize:
            return load_models(models_dir, tta=tta)
        settle_precision(models_dir)  # a first start's timing of the export, on cores the detector leaves idle
        with ThreadPoolExecutor(1, thread_name_prefix="agegender-detector") as pool:
            detector = pool.submit(get_detector)
            models = load_models(models_dir, tta=tta)
            detector.result()
        return models


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
    models = models or prepare(models_dir)
    faces = find_faces(rgb, detect=detect, min_face_size=min_face_size, threshold=threshold)
    if not faces and enforce_detection:
        raise FaceNotDetected(
            f"no face found (minimum face size {min_face_size}px, threshold {threshold}). Use a photo "
            "where the face is visible and at least that large, lower the threshold or min_face_size, "
            "or pass detect=False for an already cropped face."
        )
    return predict_faces([(rgb, faces)], models, align=align)[0]


def find_faces(rgb: np.ndarray, *, detect: bool = True, min_face_size: int = DEFAULT_MIN_FACE_SIZE,
               threshold: float = DEFAULT_THRESHOLD) -> list[Detection]:
    """MTCNN detections, or the whole image as one face when ``detect`` is False."""
    if detect:
        return detect_faces(rgb, min_face_size=min_face_size, threshold=threshold)
    h, w = rgb.shape[:2]
    return [Detection(box=(0.0, 0.0, float(w), float(h)), confidence=1.0)]


def face_crop(rgb: np.ndarray, face: Detection | FaceResult, size: int, *, align: bool = True) -> np.ndarray:
    """The ``size`` px crop the models see for one detected face (a face without landmarks, as with
    ``detect=False``, is the whole image)."""
    marks = np.array([face.landmarks[n] for n in LANDMARK_NAMES], np.float64) if face.landmarks else None
    return crop_face(rgb, marks, size, align=align)


def predict_faces(items: list[tuple[np.ndarray, list[Detection]]], models: AgeGenderModels, *,
                  align: bool = True) -> list[list[FaceResult]]:
    """Crop every face of every image once per model input size; ONE batched call of both models."""
    flat = [(rgb, f) for rgb, faces in items for f in faces]
    if not flat:
        return [[] for _ in items]
    crops = {size: np.stack([face_crop(rgb, f, size, align=align) for rgb, f in flat])
             for size in set(models.input_sizes.values())}
    pred = models.predict(crops)
    results: list[list[FaceResult]] = []
    k = 0
    for _, faces in items:
        out = []
        for face in faces:
            out.append(face_result(face, pred.ages[k], pred.female_probabilities[k], models))
            k += 1
        results.append(out)
    return results


def face_result(face: Detection, age: float, female_probability: float, models: AgeGenderModels) -> FaceResult:
    """One face's result from the models' outputs for it: the age clipped to 0..MAX_AGE, its calibrated range
    and the gender rule's verdict (the Ray batch engine builds its rows with it too)."""
    age = float(np.clip(age, 0.0, MAX_AGE))
    p_female = float(female_probability)
    reliable, note = models.judge_gender(age, p_female)
    return FaceResult(box=face.box, confidence=face.confidence, age=age, age_range=models.age_range(age),
                      female_probability=p_female, landmarks=dict(face.landmarks), gender_reliable=reliable,
                      gender_note=note, cut_by_frame=face.cut_by_frame)


def _named(sources: Iterable) -> Iterator[tuple[str, ImageInput | AgeGenderError]]:
    """``(name, image)`` pairs as they are; a bare path is named after itself, other bare images by position."""
    for i, item in enumerate(sources):
        if isinstance(item, tuple) and len(item) == 2 and isinstance(item[0], str):
            yield item
        else:
            yield (str(item) if isinstance(item, (str, Path)) else f"image {i + 1}"), item


def analyze_many(sources: Iterable[tuple[str, ImageInput | AgeGenderError] | ImageInput], *, batch_size: int = 8,
                 detect: bool = True,
                 min_face_size: int = DEFAULT_MIN_FACE_SIZE, threshold: float = DEFAULT_THRESHOLD,
                 align: bool = True, models: AgeGenderModels | None = None,
                 models_dir: str | Path | None = None) -> Iterator[tuple[str, list[FaceResult] | AgeGenderError]]:
    """Analyse many images, ``batch_size`` images per model call. ``sources``: paths or images, or
    ``(name, image)`` pairs. Yields ``(name, faces)`` in input order, or ``(name, error)`` for an image that
    could not be read: one bad file never stops the run."""
    models = models or load_models(models_dir)
    pending: list[tuple[str, np.ndarray | None, list[Detection] | AgeGenderError]] = []

    def flush():
        ok = [(rgb, faces) for _, rgb, faces in pending if rgb is not None]
        predicted = iter(predict_faces(ok, models, align=align)) if ok else iter(())
        for name, rgb, faces in pending:
            yield name, (next(predicted) if rgb is not None else faces)
        pending.clear()

    for name, source in _named(sources):
        try:
            if isinstance(source, AgeGenderError):  # a source that is already known to be bad
                raise source
            rgb = load_image(source, name=name)
            pending.append((name, rgb, find_faces(rgb, detect=detect, min_face_size=min_face_size,
                                                  threshold=threshold)))
        except AgeGenderError as exc:
            pending.append((name, None, exc))
        if len(pending) >= batch_size:
            yield from flush()
    yield from flush()
