"""``pip install .`` gives the library, its ``agegender`` command and the shipped models, usable from any folder."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_pip_install_works_from_another_folder(tmp_path, astronaut_jpeg):
    prefix = tmp_path / "prefix"
    install = subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation",
                              "--prefix", str(prefix), str(ROOT)], capture_output=True, text=True, timeout=600)
    assert install.returncode == 0, install.stderr[-2000:]
    site = next(p for p in prefix.rglob("site-packages") if (p / "core").is_dir())
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "astronaut.jpg").write_bytes(astronaut_jpeg)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AGEGENDER_MODELS_DIR", "PYTHONPATH"))}
    env.update(PYTHONPATH=str(site), AGEGENDER_PRECISION="float32")
    command = subprocess.run([str(prefix / "bin" / "agegender"), "astronaut.jpg", "--json"], cwd=elsewhere, env=env,
                             capture_output=True, text=True, timeout=600)
    assert command.returncode == 0, command.stderr[-2000:]
    report = json.loads(command.stdout)
    assert report[0]["file"] == "astronaut.jpg" and len(report[0]["faces"]) == 1
    library = subprocess.run([sys.executable, "-c", "import core, core.modelfiles as m; "
                              "print(core.__file__); print(m.models_dir()); print(len(core.analyze('astronaut.jpg')))"],
                             cwd=elsewhere, env=env, capture_output=True, text=True, timeout=600)
    assert library.returncode == 0, library.stderr[-2000:]
    where, models, faces = library.stdout.split()
    assert Path(where).is_relative_to(site) and Path(models).is_relative_to(prefix) and faces == "1"
