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
