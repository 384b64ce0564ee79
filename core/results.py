"""Typed results, and the one output contract every front end writes them in.

:meth:`FaceResult.as_dict` is the one field set of a face. The JSON outputs (``python -m core --json``, the
app's JSON download, the HTTP API) give each image as :func:`image_dict`: ``{"file", "status", "faces"}``.
The row outputs (CSV, JSON Lines, Parquet: the CLI, ``python -m core batch``, the app's CSV download) give
each face as :func:`face_row`: the same fields flattened (``box`` to ``x, y, w, h``, ``age_range`` to
``age_low, age_high``; landmarks only in JSON), under :data:`ROW_FIELDS`. The README's "Output" section
documents both.
"""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass, field
from typing import Any

from core.errors import AgeGenderError


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
        """The face in the output contract: plain JSON types, box pixels as whole numbers."""
        return {
            "box": {"x": round(float(self.box[0])), "y": round(float(self.box[1])),
                    "w": round(float(self.box[2])), "h": round(float(self.box[3]))},
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


#: The columns of every row output, in order: the image, the face's place in it, :meth:`FaceResult.as_dict`
#: flattened (``box`` to ``x, y, w, h``, ``age_range`` to ``age_low, age_high``, no landmarks) and the reason of
#: an ``error`` row. Append-only: a new field goes at the end, so that readers by position keep working
#: (tests/test_contract.py checks that it holds every field of ``as_dict``).
ROW_FIELDS: list[str] = ["file", "status", "face", "x", "y", "w", "h", "confidence", "age", "age_low", "age_high",
                         "gender", "female_probability", "gender_reliable", "gender_note", "error", "cut_by_frame"]


def face_row(name: str, index: int, face: FaceResult) -> dict[str, Any]:
    """The row of the ``index``-th face (from 1) of image ``name``: :meth:`FaceResult.as_dict`, flattened."""
    row: dict[str, Any] = {"file": name, "status": "ok", "face": index}
    for key, value in face.as_dict().items():
        if key == "box":
            row.update(value)
        elif key == "age_range":
            row["age_low"], row["age_high"] = value
        elif key != "landmarks":
            row[key] = value
    return row


def status_of(result: list[FaceResult] | AgeGenderError) -> str:
    """``ok`` (faces found), ``no_face`` or ``error`` (the image could not be read)."""
    if isinstance(result, AgeGenderError):
        return "error"
    return "ok" if result else "no_face"


def image_rows(name: str, result: list[FaceResult] | AgeGenderError) -> list[dict[str, Any]]:
    """One image's rows: one per face, or one ``no_face`` or ``error`` row."""
    status = status_of(result)
    if isinstance(result, AgeGenderError):
        return [{"file": name, "status": status, "error": str(result)}]
    if not result:
        return [{"file": name, "status": status}]
    return [face_row(name, i, f) for i, f in enumerate(result, 1)]


def image_dict(name: str | None, result: list[FaceResult] | AgeGenderError) -> dict[str, Any]:
    """One image in JSON: ``{"file", "status", "faces": [FaceResult.as_dict(), ...]}``, and ``"error"`` (the
    reason) where the status is ``error``."""
    out: dict[str, Any] = {"file": name, "status": status_of(result)}
    if isinstance(result, AgeGenderError):
        out["faces"], out["error"] = [], str(result)
    else:
        out["faces"] = [f.as_dict() for f in result]
    return out


def csv_value(value: Any) -> Any:
    """A row value as the CSV files write it: ``true`` / ``false`` for booleans, empty for a missing value."""
    if isinstance(value, bool):
        return "true" if value else "false"
    return "" if value is None else value


def csv_text(rows: list[dict[str, Any]]) -> str:
    """Rows as a CSV file's text under :data:`ROW_FIELDS` (what the CSV outputs hold)."""
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=ROW_FIELDS, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: csv_value(row.get(k)) for k in ROW_FIELDS})
    return out.getvalue()
