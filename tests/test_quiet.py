"""Quiet by default: a CLI run prints its results and nothing of TensorFlow's or LiteRT's start-up chatter."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def run(*args: str, models: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "AGEGENDER_MODELS_DIR": str(models)}
    env.pop("TF_CPP_MIN_LOG_LEVEL", None)
    env.pop("AGEGENDER_VERBOSE", None)
    return subprocess.run([sys.executable, "-m", "core", *args], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=600)


def test_no_litert_or_tensorflow_lines_unless_verbose(tmp_path, astronaut_jpeg, tiny_models):
    photo = tmp_path / "astronaut.jpg"
    photo.write_bytes(astronaut_jpeg)
    run(str(photo), models=tiny_models)  # a machine's first run converts MTCNN for LiteRT, once
    quiet = run(str(photo), models=tiny_models)
    assert quiet.returncode == 0, quiet.stderr
    assert "astronaut.jpg: 1 face" in quiet.stdout
    assert quiet.stderr.strip() == "", quiet.stderr  # not one line: no XNNPACK delegate, no TensorFlow warning
    loud = run(str(photo), "--verbose", models=tiny_models)
    assert loud.returncode == 0 and "XNNPACK delegate" in loud.stderr  # the line is real, and only hidden
