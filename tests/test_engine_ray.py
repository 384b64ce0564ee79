"""The Ray batch engine: the local engine's rows on Ray, bad files as error rows, an actor that dies, no Ray on import.

One local Ray instance (2 CPUs) serves the whole module; the tiny trained models stand in for the shipped ones.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import ray
from PIL import Image

from conftest import encode, make_utk_folder, three_faces
from core import engine_ray
from core.batch import CSV_FIELDS, Settings, face_rows, list_sources, plain_row, read_sources

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def ray_instance():
    assert engine_ray.start(num_cpus=2), "Ray was already running"
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def photos(tmp_path_factory, astronaut, astronaut_chip) -> Path:
    """Generated chips, the astronaut, the astronaut cut by the frame, three faces in one photo, a blank image,
    and three bad files."""
    folder = tmp_path_factory.mktemp("photos")
    make_utk_folder(folder / "chips", astronaut_chip, n=6)
    (folder / "astronaut.jpg").write_bytes(encode(astronaut, "JPEG", quality=92))
    (folder / "cut.png").write_bytes(encode(np.ascontiguousarray(astronaut[:, 215:]), "PNG"))  # 60 % of the face
    (folder / "three.png").write_bytes(encode(three_faces(astronaut), "PNG"))
    Image.new("RGB", (120, 90), (200, 210, 220)).save(folder / "blank.png")
    (folder / "corrupt.jpg").write_bytes(encode(astronaut, "JPEG")[:2000])  # cut off mid-scan
    (folder / "empty.png").write_bytes(b"")
    (folder / "notes.jpg").write_text("not a photo")
    return folder


def local_rows(folder: Path, models: Path) -> list[dict]:
    from core.models import AgeGenderModels
    from core.pipeline import analyze_many

    results = analyze_many(read_sources(list_sources([str(folder)])), batch_size=3,
                           models=AgeGenderModels(models))
    return [row for name, result in results for row in face_rows(name, result)]


def ray_rows(folder: Path, models: Path, **kw) -> list[dict]:
    ds = engine_ray.rows_dataset(list_sources([str(folder)]), Settings(models_dir=str(models)), concurrency=1,
                                 batch_size=4, images_per_task=3, **kw)
    return engine_ray.collect(ds).to_pylist()


def test_ray_gives_the_local_engines_rows(ray_instance, photos, tiny_models):
    local, remote = local_rows(photos, tiny_models), ray_rows(photos, tiny_models)
    assert [(r["file"], r["status"], r.get("face")) for r in local] == [(r["file"], r["status"], r["face"])
                                                                        for r in remote]
    statuses = [r["status"] for r in local]
    assert statuses.count("error") == 3 and statuses.count("no_face") == 1 and statuses.count("ok") >= 9
    for a, b in zip(local, remote, strict=True):
        assert list(plain_row(b)) == list(a)  # the same fields, as the CSV and JSON Lines files show them
        if a["status"] != "ok":
            assert a.get("error") == b["error"]
            continue
        assert (a["x"], a["y"], a["w"], a["h"], a["confidence"]) == (b["x"], b["y"], b["w"], b["h"], b["confidence"])
        # Other batches, other float rounding: within the CSV's 0.1-year step (as test_cli's batch test).
        for key in ("age", "age_low", "age_high"):
            assert abs(a[key] - b[key]) <= 0.1 + 1e-6
        assert abs(a["female_probability"] - b["female_probability"]) < 1e-3
        assert (a["gender"], a["gender_reliable"]) == (b["gender"], b["gender_reliable"])
        assert a["cut_by_frame"] == b["cut_by_frame"]
    cut = {Path(r["file"]).name: r["cut_by_frame"] for r in remote if r["status"] == "ok"}
    assert cut["cut.png"] is True and cut["astronaut.jpg"] is False


def test_bad_files_are_error_rows_and_the_job_finishes(ray_instance, photos, tiny_models, tmp_path):
    """Through the command, joining this module's Ray instance: Parquet rows with exactly the CSV's columns."""
    import pyarrow.parquet as pq

    out = tmp_path / "rows"
    env = {**os.environ, "AGEGENDER_MODELS_DIR": str(tiny_models)}
    address = ray.get_runtime_context().gcs_address
    res = subprocess.run([sys.executable, "-m", "core", "batch", str(photos), "--engine", "ray", "--address", address,
                          "--output", str(out)], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert res.returncode == 1, res.stderr[-3000:]  # unreadable files: reported in the rows, the run went on
    assert "Traceback" not in res.stderr
    table = pq.read_table(out)
    assert table.column_names == CSV_FIELDS
    rows = table.to_pylist()
    errors = {Path(r["file"]).name: r["error"] for r in rows if r["status"] == "error"}
    assert set(errors) == {"corrupt.jpg", "empty.png", "notes.jpg"}
    assert "empty (0 bytes)" in errors["empty.png"] and "is not a JPEG, PNG" in errors["notes.jpg"]
    assert "damaged or truncated" in errors["corrupt.jpg"]
    images = len({r["file"] for r in rows})
    summary = res.stderr.strip().splitlines()[-1]
    assert summary.startswith(f"{images} images, {sum(r['status'] == 'ok' for r in rows)} faces, 1 without a face, "
                              "3 unreadable")


def test_an_actor_that_dies_loses_no_row_and_duplicates_none(ray_instance, photos, tiny_models, tmp_path):
    marker = tmp_path / "died"

    class DiesOnce(engine_ray.Predictor):
        """Kills its process on its first batch, once for the whole pool (the marker file)."""

        def __call__(self, batch):
            if not marker.exists():
                marker.touch()
                os._exit(1)
            return super().__call__(batch)

    rows = ray_rows(photos, tiny_models, predictor=DiesOnce)
    assert marker.exists()
    expected = [(r["file"], r["face"]) for r in ray_rows(photos, tiny_models)]
    assert [(r["file"], r["face"]) for r in rows] == expected  # sorted by input order: none lost, none twice


def test_concurrency_leaves_a_cpu_for_reading(ray_instance):
    assert engine_ray.plan(None) == (1, 1.0)  # 2 CPUs: one actor of one CPU, one CPU for the read tasks
    assert engine_ray.plan(2) == (2, 0.5)  # two actors share one CPU rather than starve the read stage


def test_importing_core_imports_no_ray():
    script = "import sys, core, core.batch, core.__main__; print('ray' in sys.modules, 'pyarrow' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.stdout.split() == ["False", "False"], out.stderr
