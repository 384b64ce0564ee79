"""Typed results: what ``core.analyze`` returns for each face."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class FaceResult:
    """One face: where it is, and the models' estimates.

    Attributes:
        box: (x, y, width, height) in original-image pixels.
        landmarks: eyes, nose and mouth corners in original-image pixels (empty with ``detect=False``).
        confidence: MTCNN detection confidence, 0-1 (1.0 with ``detect=False``).
        age: estimated apparent age in years.
        age_range: calibrated (low, high) range: on held-out UTKFace data the true age fell inside it for
            about the share of faces stated in the model metadata (80 % by design).
        female_probability: probability that the face is labelled female, 0-1.
        gender_reliable: False where validation data says the gender model is unreliable for such a face
            (its predicted age, or a probability near 0.5; see :mod:`core.reliability`).
        gender_note: why the gender is uncertain (``None`` when it is reliable).
        cut_by_frame: the face's box reaches the image's edge, so part of the face may be cut off: its age and
            gender rest on less of it (landmarks beyond the edge are estimates; ``False`` with ``detect=False``).
        gender: "uncertain" when not ``gender_reliable``, else :attr:`likely_gender`.
    """

    box: tuple[float, float, float, float]
    confidence: float
    age: float
    age_range: tuple[float, float]
    female_probability: float
    landmarks: dict[str, tuple[float, float]] = field(default_factory=dict)
    gender_reliable: bool = True
    gender_note: str | None = None
    cut_by_frame: bool = False

    @property
    def likely_gender(self) -> str:
        """The side the gender model leans to: "female" when ``female_probability`` >= 0.5, else "male"."""
        return "female" if self.female_probability >= 0.5 else "male"

    @property
    def gender(self) -> str:
        """The gender to show: :attr:`likely_gender`, or "uncertain" where it is not reliable."""
        return self.likely_gender if self.gender_reliable else "uncertain"

    @property
    def gender_probability(self) -> float:
        """Probability of :attr:`likely_gender` (0.5-1): how sure the gender model is."""
        return max(self.female_probability, 1.0 - self.female_probability)

    def as_dict(self) -> dict[str, Any]:
        """Plain JSON-serialisable types only."""
        return {
            "box": {"x": round(float(self.box[0]), 1), "y": round(float(self.box[1]), 1),
                    "w": round(float(self.box[2]), 1), "h": round(float(self.box[3]), 1)},
            "confidence": round(float(self.confidence), 4),
            "age": round(float(self.age), 1),
            "age_range": [round(float(self.age_range[0]), 1), round(float(self.age_range[1]), 1)],
            "gender": self.gender,
            "female_probability": round(float(self.female_probability), 4),
            "gender_reliable": bool(self.gender_reliable),
            "gender_note": self.gender_note,
            "cut_by_frame": bool(self.cut_by_frame),
            "landmarks": {k: [round(float(v[0]), 1), round(float(v[1]), 1)] for k, v in self.landmarks.items()},
        }
