"""The output contract in the library and the command line: one field set (``FaceResult.as_dict``), one JSON
shape per image, rows that flatten it; whole-pixel boxes, ``true``/``false`` in CSV (tests/contract.py)."""

from __future__ import annotations

import json

import pyarrow.parquet as pq
from contract import FACE_KEYS, ROW_COLUMNS, check_csv, check_face, check_image, check_row

from core.__main__ import format_table, main
from core.errors import InvalidImage
from core.results import ROW_FIELDS, FaceResult, csv_text, face_row, image_dict, image_rows

FACE = FaceResult(box=(195.4, 80.6, 120.5, 150.0), confidence=0.99871, age=34.26, age_range=(28.04, 41.96),
                  female_probability=0.25, landmarks={"left_eye": (230.26, 130.0)})
UNSURE = FaceResult(box=(10, 10, 40, 40), confidence=0.9, age=5.0, age_range=(3.0, 8.0), female_probability=0.55,
                    gender_reliable=False, gender_note="predicted age 0-12: 60% right")


def test_a_face_in_the_contract():
    d = FACE.as_dict()
    check_face(d)
    assert d["box"] == {"x": 195, "y": 81, "w": 120, "h": 150}  # whole pixels (half to even: 120.5 -> 120)
    assert d["gender"] == "male" and d["female_probability"] == 0.25 and d["age_range"] == [28.0, 42.0]
    assert json.loads(json.dumps(d)) == d
    check_face(UNSURE.as_dict())
    assert UNSURE.as_dict()["gender"] == "uncertain"


def test_rows_flatten_the_face_and_nothing_else():
    assert ROW_FIELDS == ROW_COLUMNS
    flattened = {"box": {"x", "y", "w", "h"}, "age_range": {"age_low", "age_high"}, "landmarks": set()}
    fields = set().union(*(flattened.get(k, {k}) for k in FACE.as_dict()))
    assert fields == set(ROW_FIELDS) - {"file", "status", "face", "error"}  # every field of as_dict, no other
    row = face_row("a.jpg", 1, FACE)
    check_row(row)
    d = FACE.as_dict()
    assert {k: row[k] for k in ("x", "y", "w", "h")} == d["box"]
    assert [row["age_low"], row["age_high"]] == d["age_range"]
    assert all(row[k] == d[k] for k in FACE_KEYS if k not in ("box", "age_range", "landmarks"))
    assert image_rows("b.jpg", []) == [{"file": "b.jpg", "status": "no_face"}]
    assert image_rows("c.jpg", InvalidImage("c.jpg is broken")) == [
        {"file": "c.jpg", "status": "error", "error": "c.jpg is broken"}]


def test_one_json_shape_per_image():
    for name, result in (("a.jpg", [FACE, UNSURE]), ("b.jpg", []), ("c.jpg", InvalidImage("c.jpg is broken"))):
        check_image(image_dict(name, result))
    assert image_dict("c.jpg", InvalidImage("broken"))["error"] == "broken"


def test_csv_says_true_and_false_and_whole_pixels():
    text = csv_text(image_rows("a.jpg", [FACE, UNSURE]) + image_rows("b.jpg", []))
    rows = check_csv(text)
    assert [r["gender_reliable"] for r in rows] == ["true", "false", ""]
    assert rows[0]["x"] == "195" and rows[1]["gender_note"].startswith("predicted age")


def test_the_table_uses_the_contracts_words():
    table = format_table("a.jpg", [FACE, UNSURE])
    header = table.splitlines()[1]
    assert "female probability" in header and "P(fem)" not in header and "detection confidence" in header
    line = table.splitlines()[2]
    assert " male " in line and "0.25" in line and "(195, 81, 120, 150)" in line
    assert "uncertain" in table.splitlines()[3]


def test_the_apps_downloads_keep_the_contract():
    """The app's CSV and JSON downloads (``ui.view.downloads``)."""
    from ui.view import downloads

    faces = [FaceResult(box=(10.4, 20.6, 50.0, 60.2), confidence=0.97, age=31.0, age_range=(25.0, 38.0),
                        female_probability=0.2),
             FaceResult(box=(100, 20, 40, 40), confidence=0.9, age=6.0, age_range=(3.0, 9.0), female_probability=0.6,
                        gender_reliable=False, gender_note="predicted age 0-12: 60% right")]
    table, payload = downloads("group.jpg", faces)
    rows = check_csv(table)
    assert [r["gender_reliable"] for r in rows] == ["true", "false"] and rows[0]["x"] == "10"
    image = json.loads(payload)
    check_image(image)
    assert image["file"] == "group.jpg" and len(image["faces"]) == 2


def test_every_cli_output_keeps_the_contract(tmp_path, astronaut_jpeg, tiny_models, capsys, monkeypatch):
    """--json, -o CSV, -o JSON Lines and batch Parquet, on a face, a photo without one and a broken file."""
    import numpy as np

    from conftest import encode

    monkeypatch.setenv("AGEGENDER_MODELS_DIR", str(tiny_models))
    (tmp_path / "face.jpg").write_bytes(astronaut_jpeg)
    (tmp_path / "blank.png").write_bytes(encode(np.full((120, 160, 3), 200, np.uint8), "PNG"))
    (tmp_path / "notes.jpg").write_text("not a photo")
    photos = [str(tmp_path / n) for n in ("face.jpg", "blank.png", "notes.jpg")]

    assert main([*photos, "--json"]) == 1
    out, err = capsys.readouterr()
    report = json.loads(out)
    for image in report:
        check_image(image)
    assert [i["status"] for i in report] == ["ok", "no_face", "error"]
    (line,) = [ln for ln in err.splitlines() if ln.startswith("error:")]
    assert line.count("notes.jpg") == 1 and "this app" not in line  # the file named once

    assert main([*photos, "-o", str(tmp_path / "r.csv")]) == 1
    rows = check_csv((tmp_path / "r.csv").read_text())
    assert [r["status"] for r in rows] == ["ok", "no_face", "error"]
    assert main([*photos, "-o", str(tmp_path / "r.jsonl")]) == 1
    for text in (tmp_path / "r.jsonl").read_text().splitlines():
        check_row(json.loads(text))
    assert main(["batch", *photos, "-o", str(tmp_path / "parquet")]) == 1
    table = pq.read_table(tmp_path / "parquet")
    assert table.column_names == ROW_COLUMNS
    assert str(table.schema.field("x").type) == "int64" and str(table.schema.field("gender_reliable").type) == "bool"
    capsys.readouterr()
