"""The speed probe used by ``python -m bench.ab`` (timings are not asserted: machines here are noisy)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_probe_times_photos_and_chips_with_the_core_on_its_path(tmp_path, astronaut_jpeg, astronaut_chip,
                                                                tiny_models):
    from conftest import encode

    photo = tmp_path / "photo.jpg"
    photo.write_bytes(astronaut_jpeg)
    chips = []
    for i in range(3):
        chips.append(tmp_path / f"chip{i}.jpg")
        chips[-1].write_bytes(encode(astronaut_chip, "JPEG"))
    manifest = tmp_path / "manifest.json"
    manifest.write_text(json.dumps({"astronaut": str(photo), "chips": [str(c) for c in chips]}))
    env = {**os.environ, "PYTHONPATH": str(ROOT), "AGEGENDER_MODELS_DIR": str(tiny_models)}
    r = subprocess.run([sys.executable, str(ROOT / "bench" / "probe.py"), str(manifest), "2"], cwd=ROOT, env=env,
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    result = json.loads(r.stdout.strip().splitlines()[-1])
    assert set(result) == {"astronaut_ms", "astronaut_detect_ms", "astronaut_new_size_ms", "chips_per_s",
                           "chips_per_s_no_flip", "cold_start_s"}
    assert all(value > 0 for value in result.values())


def test_flip_settings_share_the_networks_and_leave_the_process_models_alone(tiny_models):
    from bench.flip import SETTINGS, _models
    from core.models import load_models

    models = load_models(tiny_models)
    before = dict(models.flip)
    for flip in SETTINGS.values():
        copy = _models(flip, tiny_models)
        assert copy.flip == flip and copy.networks is models.networks
    assert models.flip == before and len({tuple(f.values()) for f in SETTINGS.values()}) == 4


def test_streams_times_both_modes_on_the_export_with_the_same_outputs(tiny_models, capsys):
    import pytest

    pytest.importorskip("openvino")
    from bench.streams import main

    assert main(["--models-dir", str(tiny_models), "--faces", "4", "--rounds", "1"]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert result["faces"] == 4 and result["max_abs_diff"] < 1e-3  # the same faces, split over the streams
    assert len(result["faces_per_s"]) == 2 and all(r > 0 for r in result["faces_per_s"].values())


def test_the_avx2_emulation_caps_our_processes_and_not_the_peers(monkeypatch):
    """``--emulate-avx2`` sets ONEDNN_MAX_CPU_ISA for our processes; the peer's run without it."""
    from bench.__main__ import run_json

    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX2")
    cmd = [sys.executable, "-c", "import json, os; print(json.dumps({'isa': os.environ.get('ONEDNN_MAX_CPU_ISA')}))"]
    assert run_json(cmd) == {"isa": "AVX2"}
    assert run_json(cmd, uncapped=True) == {"isa": None}


def test_border_faces_are_cut_as_labelled(astronaut):
    """The border-face benchmark's cuts leave the share of the face's box inside that their label says, at the
    size asked; a box on the face is a hit, one elsewhere a false positive, one beyond the image counted."""
    import pytest

    from bench import border_faces as bf

    face = bf.SourceFace("astronaut", 0, bf.ASTRONAUT_FACE, ())
    for where in bf.WHERE:
        for visible in bf.VISIBLE:
            case = bf.cut_case(astronaut, face, visible, where, 0.5)
            ((box, share, label, size),) = case.targets
            assert case.image.shape == (360, 480, 3) and (label, size) == (where, 0.5)
            assert share == pytest.approx(visible, abs=0.01) and bf.clip(box, (480, 360))[1] == 1.0
    assert bf.score(case, [box, (300, 100, 40, 40), (470, 350, 20, 20)]) == ([True], 2, 1)
    crowded = bf.composite({"astronaut": astronaut}, [face], seed=0)
    assert crowded.image.shape == (640, 960, 3) and len(crowded.targets) >= 5
    assert sum(t[2] == "inside" for t in crowded.targets) <= 2
