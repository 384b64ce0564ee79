"""python -m core: table, JSON, clear one-line errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def run_cli(*args: str, models: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "AGEGENDER_MODELS_DIR": str(models)}
    return subprocess.run([sys.executable, "-m", "core", *args], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=300)


def test_cli_table_json_and_bad_input(tmp_path, astronaut_jpeg, tiny_models):
    photo = tmp_path / "astronaut.jpg"
    photo.write_bytes(astronaut_jpeg)
    bad = tmp_path / "notes.jpg"
    bad.write_text("not a photo")
    out = run_cli(str(photo), str(bad), "--json", models=tiny_models)
    assert out.returncode == 1
    report = json.loads(out.stdout)
    assert report[0]["file"].endswith("astronaut.jpg") and len(report[0]["faces"]) == 1
    assert "error" in report[1]
    err_lines = [ln for ln in out.stderr.splitlines() if ln.startswith("error:")]
    assert len(err_lines) == 1 and "notes.jpg" in err_lines[0]
    assert "Traceback" not in out.stderr

    table = run_cli(str(tmp_path), models=tiny_models)  # a folder: both files, table output
    assert "astronaut.jpg: 1 face" in table.stdout and "Traceback" not in table.stderr


def test_cli_missing_models(tmp_path, astronaut_jpeg):
    photo = tmp_path / "a.jpg"
    photo.write_bytes(astronaut_jpeg)
    out = run_cli(str(photo), models=tmp_path / "empty")
    assert out.returncode == 2 and "python -m train" in out.stderr and "Traceback" not in out.stderr


def test_batch_csv_and_jsonl_over_folder_and_zip(tmp_path, astronaut_jpeg, tiny_models):
    import csv
    import zipfile

    folder = tmp_path / "photos"
    folder.mkdir()
    for i in range(3):
        (folder / f"p{i}.jpg").write_bytes(astronaut_jpeg)
    (folder / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nbroken")
    (folder / "readme.txt").write_text("ignored: not an image suffix")
    archive = tmp_path / "more.zip"
    with zipfile.ZipFile(archive, "w") as z:
        z.writestr("inside/a.jpg", astronaut_jpeg)
        z.writestr("inside/empty.jpg", b"")

    out_csv = tmp_path / "faces.csv"
    res = run_cli(str(folder), str(archive), "--output", str(out_csv), "--batch-size", "2", models=tiny_models)
    assert res.returncode == 1  # two unreadable files, reported in the output, the run went on
    reader = csv.DictReader(out_csv.open())
    rows = list(reader)
    assert reader.fieldnames[-1] == "cut_by_frame"
    by_status = {s: [r for r in rows if r["status"] == s] for s in ("ok", "error", "no_face")}
    assert len(by_status["ok"]) == 4 and len(by_status["error"]) == 2
    assert {r["face"] for r in by_status["ok"]} == {"1"}
    assert {r["cut_by_frame"] for r in by_status["ok"]} == {"false"}  # CSV's booleans: true / false
    assert any(r["file"].endswith("more.zip/inside/a.jpg") for r in by_status["ok"])
    ages = [float(r["age"]) for r in by_status["ok"]]
    # The same photo gives the same answer whatever its batch (here 1 or 2 images per model call): equal up
    # to float rounding, which can tip the CSV's 0.1-year rounding to the next step.
    assert max(ages) - min(ages) <= 0.1 + 1e-6

    out_jsonl = tmp_path / "faces.jsonl"
    res = run_cli(str(folder / "p0.jpg"), "--output", str(out_jsonl), models=tiny_models)
    assert res.returncode == 0
    lines = [json.loads(line) for line in out_jsonl.read_text().splitlines()]
    assert len(lines) == 1 and lines[0]["status"] == "ok" and "female_probability" in lines[0]


def test_no_flip_gives_the_library_result_without_test_time_flip(tmp_path, astronaut_jpeg, tiny_models):
    import core
    from core.models import AgeGenderModels

    photo = tmp_path / "astronaut.jpg"
    photo.write_bytes(astronaut_jpeg)
    out = run_cli(str(photo), "--json", "--no-flip", models=tiny_models)
    assert out.returncode == 0, out.stderr
    face = json.loads(out.stdout)[0]["faces"][0]
    plain = core.analyze(astronaut_jpeg, models=AgeGenderModels(tiny_models, tta=False))[0]
    assert abs(face["age"] - plain.age) <= 0.05 + 1e-3  # the JSON rounds ages to 0.1 years
    assert abs(face["female_probability"] - plain.female_probability) < 1e-3


def test_every_user_error_is_one_line_and_status_2(tmp_path, astronaut_jpeg, tiny_models, capsys, monkeypatch):
    """Out-of-range options, outputs that cannot be written and inputs without an image: one line on
    stderr, exit status 2, no traceback, nothing written (in process: the checks come before any model)."""
    import pytest

    from core.__main__ import main

    photo = tmp_path / "a.jpg"
    photo.write_bytes(astronaut_jpeg)
    (tmp_path / "empty").mkdir()
    (tmp_path / "out").mkdir()
    cases = {
        ("--threshold", "2"): "--threshold is a confidence between 0 and 1",
        ("--min-face-size", "5000"): "--min-face-size must be between 8 and 4096",
        ("--batch-size", "0"): "--batch-size must be at least 1",
        ("-o", str(tmp_path / "x.txt")): "give a file ending in .csv or .jsonl",
        ("-o", str(tmp_path / "r.csv"), "--json"): "--json prints to the screen",
    }
    for extra, message in cases.items():
        with pytest.raises(SystemExit) as stop:
            main([str(photo), *extra])
        assert stop.value.code == 2
        err = capsys.readouterr().err
        assert message in err and "Traceback" not in err, (extra, err)
    monkeypatch.setenv("AGEGENDER_MODELS_DIR", str(tiny_models))
    for args, message in (([str(photo), "-o", str(tmp_path / "missing" / "x.csv")], "does not exist"),
                          ([str(photo), "-o", str(tmp_path / "out")], "give a file ending in .csv"),
                          ([str(tmp_path / "empty")], "no image found in"),
                          (["batch", str(tmp_path / "empty"), "-o", str(tmp_path / "r.csv")], "no image found")):
        try:
            code = main(args)
        except SystemExit as stop:
            code = stop.code
        err = capsys.readouterr().err
        assert code == 2 and message in err and "Traceback" not in err, (args, err)
    assert not (tmp_path / "missing").exists() and not list((tmp_path / "out").iterdir())


def test_table_and_app_table_say_which_faces_the_frame_cuts():
    """The command's table notes each face cut by the frame; the app's table has a "cut by the frame" column
    only where some face is, marking exactly those."""
    from core.__main__ import format_table
    from core.results import FaceResult
    from ui.view import results_table

    def face(cut: bool) -> FaceResult:
        return FaceResult(box=(0.0 if cut else 40.0, 10.0, 50.0, 60.0), confidence=0.99, age=30.0,
                          age_range=(25.0, 35.0), female_probability=0.2, cut_by_frame=cut)

    table = format_table("group.jpg", [face(False), face(True)])
    assert "face 2 is cut by the frame" in table and "face 1 is cut" not in table
    assert "cut by the frame" not in format_table("one.jpg", [face(False)])
    assert list(results_table([face(False), face(True)])["cut by the frame"]) == ["", "yes"]
    assert "cut by the frame" not in results_table([face(False)]).columns
