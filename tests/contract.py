"""The output contract (README, "Output"), written out once: every front end's tests check their output with
these functions, so that the app, the CLI, the batch rows and the API cannot drift apart."""

from __future__ import annotations

import csv
import io
from typing import Any

#: A face in JSON, in this order (``FaceResult.as_dict``).
FACE_KEYS = ["box", "confidence", "age", "age_range", "gender", "female_probability", "gender_reliable",
             "gender_note", "cut_by_frame", "landmarks"]
#: The columns of the row outputs (CSV, JSON Lines, Parquet), in this order (new ones only ever at the end).
ROW_COLUMNS = ["file", "status", "face", "x", "y", "w", "h", "confidence", "age", "age_low", "age_high", "gender",
               "female_probability", "gender_reliable", "gender_note", "error", "cut_by_frame"]
GENDERS = {"female", "male", "uncertain"}


def check_face(face: dict[str, Any]) -> None:
    """One face of a JSON output."""
    assert list(face) == FACE_KEYS
    assert list(face["box"]) == ["x", "y", "w", "h"]
    assert all(type(v) is int for v in face["box"].values()), face["box"]  # whole pixels, never 195.0
    assert face["box"]["w"] > 0 and face["box"]["h"] > 0
    assert 0.0 <= face["confidence"] <= 1.0 and 0.0 <= face["female_probability"] <= 1.0
    low, high = face["age_range"]
    assert low <= face["age"] <= high
    assert face["gender"] in GENDERS and type(face["gender_reliable"]) is bool and type(face["cut_by_frame"]) is bool
    assert (face["gender"] == "uncertain") == (not face["gender_reliable"])
    assert (face["gender_note"] is None) == face["gender_reliable"]
    if face["gender_reliable"]:  # the label shown is the side the probability leans to
        assert face["gender"] == ("female" if face["female_probability"] >= 0.5 else "male")


def check_image(image: dict[str, Any], *, extra: tuple[str, ...] = ()) -> None:
    """One image of a JSON output: ``{file, status, faces}`` (and ``error`` on an error), plus ``extra`` keys."""
    keys = ["file", "status", "faces", *(["error"] if image.get("status") == "error" else []), *extra]
    assert sorted(image) == sorted(keys), image
    assert image["status"] in ("ok", "no_face", "error")
    assert (image["status"] == "ok") == bool(image["faces"])
    for face in image["faces"]:
        check_face(face)


def check_row(row: dict[str, Any]) -> None:
    """One row of JSON Lines (or Parquet read back as Python values)."""
    if row["status"] != "ok":
        assert set(row) <= {"file", "status", "error"} and row["status"] in ("no_face", "error")
        return
    assert list(row) == [c for c in ROW_COLUMNS if c != "error"]
    assert all(type(row[k]) is int for k in ("face", "x", "y", "w", "h"))
    assert type(row["gender_reliable"]) is bool and type(row["cut_by_frame"]) is bool and row["gender"] in GENDERS


def check_csv(text: str) -> list[dict[str, str]]:
    """A CSV output: the columns, whole-number boxes, ``true``/``false``; its rows."""
    rows = list(csv.DictReader(io.StringIO(text)))
    assert text.splitlines()[0].split(",") == ROW_COLUMNS
    for row in rows:
        assert row["status"] in ("ok", "no_face", "error")
        if row["status"] == "ok":
            assert all(row[k].isdigit() for k in ("face", "x", "y", "w", "h")), row
            assert row["gender_reliable"] in ("true", "false") and row["cut_by_frame"] in ("true", "false")
            assert row["gender"] in GENDERS
            assert float(row["age_low"]) <= float(row["age"]) <= float(row["age_high"])
            assert row["error"] == ""
    return rows
