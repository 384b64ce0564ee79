"""Age and gender estimation from face photos.

    >>> import core
    >>> faces = core.analyze("photo.jpg")          # list[FaceResult], largest face first
    >>> faces[0].age, faces[0].gender, faces[0].as_dict()

Importing ``core`` loads no model and starts nothing; models load on the first ``analyze`` call.
"""

from core.errors import (
    AgeGenderError,
    FaceNotDetected,
    ImageTooLarge,
    InvalidImage,
    ModelNotFound,
    WeightsMismatch,
)
from core.pipeline import analyze, analyze_many
from core.results import FaceResult

__all__ = [
    "AgeGenderError",
    "FaceNotDetected",
    "FaceResult",
    "ImageTooLarge",
    "InvalidImage",
    "ModelNotFound",
    "WeightsMismatch",
    "analyze",
    "analyze_many",
]
