"""Training pipeline: names, duplicates, split, evaluation arithmetic, resume."""

from __future__ import annotations

import csv
import json
import shutil

import numpy as np
import pytest

from conftest import make_utk_folder
from train.calibrate import calibrate_age_intervals
from train.data import age_bucket, duplicate_groups, load_or_make_split, make_split, parse_name, scan
from train.evaluate import compute_metrics
from train.trainer import main as train_main
from train.trainer import parse_schedule


def test_parse_names():
    s = parse_name("26_1_2_20170116174525125.jpg.chip.jpg")
    assert (s.age, s.gender, s.race) == (26, 1, 2)
    for bad in ["24_0_1_20170116220224657 .jpg.chip.jpg", "39_1_20170116174525125.jpg.chip.jpg",
                "55_0_0_20170116232725357jpg.chip.jpg", "0_0_0_2017.jpg.chip.jpg", "x_1_1_1.jpg.chip.jpg",
                "30_2_0_20170116174525125.jpg.chip.jpg"]:
        assert parse_name(bad) is None, bad


def test_malformed_names_are_skipped_and_counted(tmp_path, astronaut_chip):
    names = make_utk_folder(tmp_path, astronaut_chip, n=6)
    shutil.copy(tmp_path / names[0], tmp_path / "39_1_20170116174525125.jpg.chip.jpg")
    shutil.copy(tmp_path / names[0], tmp_path / "24_0_1_2017 .jpg.chip.jpg")
    samples, malformed = scan(tmp_path)
    assert len(samples) == 6 and len(malformed) == 2


def test_split_keeps_duplicates_together(tmp_path, astronaut_chip):
    names = make_utk_folder(tmp_path, astronaut_chip, n=60, seed=3)
    copies = {}
    for i, name in enumerate(names[:15]):  # 15 byte-identical copies under other names
        copy = f"{30 + i}_{i % 2}_0_2018{i:010d}.jpg.chip.jpg"
        shutil.copy(tmp_path / name, tmp_path / copy)
        copies[name] = copy
    samples, _ = scan(tmp_path)
    groups = duplicate_groups(tmp_path, [s.name for s in samples])
    assert sum(len(g) == 2 for g in groups) == 15
    split = make_split(samples, groups, seed=1)
    side = {n: k for k, v in split.items() for n in v}
    assert len(side) == len(samples)
    for a, b in copies.items():
        assert side[a] == side[b]
    assert all(split[k] for k in ("train", "val", "test"))
    # seeded and saved: the same split comes back
    first = load_or_make_split(tmp_path, tmp_path / "splits", log=lambda *_: None)
    again = load_or_make_split(tmp_path, tmp_path / "splits", log=lambda *_: None)
    assert first == again


def test_aligned_training_crops_are_the_apps_crops(tmp_path, astronaut_chip):
    """``--crop aligned`` trains on what the app feeds the models: MTCNN's landmarks of the chip's face through
    the one crop function; a chip without a detectable face falls back to the chip frame."""
    from PIL import Image

    from core.crop import crop_face
    from core.detect import detect_faces
    from core.image import load_image
    from train.data import chip_landmarks, load_chips

    make_utk_folder(tmp_path, astronaut_chip, n=3)
    Image.fromarray(np.full((200, 200, 3), 128, np.uint8)).save(tmp_path / "30_0_0_20170119999999999.jpg.chip.jpg")
    samples, _ = scan(tmp_path)
    marks = chip_landmarks(tmp_path, samples, cache=False)
    aligned = load_chips(tmp_path, samples, 48, cache=False, align=True)
    plain = load_chips(tmp_path, samples, 48, cache=False)
    for i, s in enumerate(samples):
        rgb = load_image(tmp_path / s.name)
        faces = detect_faces(rgb)
        if s.name.startswith("30_0_0_2017011999"):
            assert not faces and np.isnan(marks[i]).all()
            np.testing.assert_array_equal(aligned[i], plain[i])
        else:
            np.testing.assert_allclose(marks[i], faces[0].landmark_array(), atol=1e-3)
            np.testing.assert_array_equal(aligned[i], crop_face(rgb, faces[0].landmark_array(), 48))
            assert not np.array_equal(aligned[i], plain[i])


def test_metrics_equal_a_hand_computation():
    m = compute_metrics(true_age=[10, 30, 50, 70], pred_age=[12, 27, 50, 60],
                        true_female=[0, 1, 1, 0], p_female=[0.2, 0.4, 0.9, 0.6],
                        race=[0, 0, 1, 2], low=[8, 25, 45, 55], high=[15, 29, 55, 65])
    assert m["age_mae"] == pytest.approx((2 + 3 + 0 + 10) / 4)
    assert m["age_rmse"] == pytest.approx(np.sqrt((4 + 9 + 0 + 100) / 4), abs=1e-3)
    assert m["age_bias"] == pytest.approx((2 - 3 + 0 - 10) / 4)
    assert m["age_median_error"] == pytest.approx((-3 + 0) / 2)
    assert m["gender_accuracy"] == pytest.approx(0.5)  # right: 10 (male), 50 (female)
    assert m["gender_accuracy_adults"] == pytest.approx(1 / 3, abs=1e-4)
    assert m["age_range_coverage"] == pytest.approx(0.5)  # 10 in [8,15], 50 in [45,55]
    one = {"n": 1, "age_mae": 2.0, "age_bias": 2.0, "age_median_error": 2.0, "gender_accuracy": 1.0}
    assert m["per_age_bucket"]["10-14"] == one and m["under_20"] == one
    assert m["per_age_bucket"]["70+"] == {"n": 1, "age_mae": 10.0, "age_bias": -10.0, "age_median_error": -10.0,
                                         "gender_accuracy": 0.0}
    assert m["per_age_bucket"]["0-4"]["n"] == 0 and m["per_age_bucket"]["0-4"]["age_mae"] is None
    assert m["per_race"]["White"] == {"n": 2, "age_mae": 2.5, "age_bias": -0.5, "age_median_error": -0.5,
                                      "gender_accuracy": 0.5}
    assert age_bucket(19) == "13-19" and age_bucket(60) == "60+"  # the split's strata (train.data)


def test_age_interval_calibration_covers_the_target_share():
    rng = np.random.default_rng(0)
    pred = rng.uniform(1, 90, 5000)
    true = pred + rng.normal(0, 5, 5000)
    table = calibrate_age_intervals(pred, true)
    assert 0.78 < table["coverage_validation"] < 0.82
    assert all(-8 < b["q_low"] < -5 and 5 < b["q_high"] < 8 for b in table["bands"])


def test_schedule_parsing():
    assert parse_schedule("64:6,96:4") == [(64, 6), (96, 4)]
    with pytest.raises(ValueError):
        parse_schedule("8:1")


def test_resume_continues_from_the_saved_epoch(tmp_path, utk_dir):
    common = ["gender", "--data-dir", str(utk_dir), "--schedule", "32:2", "--batch-size", "8",
              "--run-dir", str(tmp_path / "run"), "--out-dir", str(tmp_path / "models"),
              "--split-dir", str(tmp_path / "splits"), "--precision", "float32", "--no-cache"]
    assert train_main([*common, "--max-epochs", "1"]) == 0
    assert json.loads((tmp_path / "run" / "state.json").read_text()) == {"epochs_done": 1}
    assert not (tmp_path / "models" / "gender_model.h5").exists()
    assert train_main([*common, "--resume"]) == 0
    rows = list(csv.DictReader((tmp_path / "run" / "history.csv").open()))
    assert [int(r["epoch"]) for r in rows] == [0, 1]
    assert json.loads((tmp_path / "run" / "state.json").read_text()) == {"epochs_done": 2}
    assert (tmp_path / "models" / "gender_model.h5").is_file()
    assert (tmp_path / "models" / "history_gender.csv").is_file()


def test_exported_h5_reloads_with_its_loss(tiny_models):
    import keras

    model = keras.models.load_model(tiny_models / "age_model.h5")  # compiled: the loss name must reload
    x = np.zeros((2, 32, 32, 3), np.float32)
    assert model.predict(x, verbose=0).shape == (2, 1)
    assert keras.models.load_model(tiny_models / "gender_model.h5", compile=False).output_shape == (None, 1)


def test_age_model_starts_from_the_multitask_backbone(tmp_path, utk_dir):
    """The shipped-model recipe: multitask backbone -> age model with blocks 1-2 frozen."""
    import keras

    common = ["--data-dir", str(utk_dir), "--schedule", "32:1", "--batch-size", "8", "--out-dir",
              str(tmp_path / "models"), "--split-dir", str(tmp_path / "splits"), "--precision", "float32",
              "--no-cache"]
    assert train_main(["multitask", "--run-dir", str(tmp_path / "mt"), *common]) == 0
    backbone = tmp_path / "mt" / "model.keras"
    assert backbone.is_file() and (tmp_path / "models" / "history_multitask.csv").is_file()
    assert train_main(["age", "--run-dir", str(tmp_path / "age"), "--init", str(backbone),
                       "--freeze-blocks", "2", *common]) == 0
    src = keras.models.load_model(backbone, compile=False)
    age = keras.models.load_model(tmp_path / "models" / "age_model.h5", compile=False)
    for name in ("conv1_1", "conv2_2", "bn2_2"):  # frozen: identical to the backbone
        for a, b in zip(src.get_layer(name).get_weights(), age.get_layer(name).get_weights()):
            np.testing.assert_array_equal(a, b)
    changed = any(not np.array_equal(a, b) for a, b in zip(src.get_layer("conv5_3").get_weights(),
                                                           age.get_layer("conv5_3").get_weights()))
    assert changed  # trainable blocks moved
    config = json.loads((tmp_path / "models" / "age_run.json").read_text())
    assert "head" in config["init_note"]


def test_evaluate_end_to_end_and_model_card(tmp_path, utk_dir, tiny_models):
    """evaluate() on a UTKFace-format folder in both modes, then the card is written from the saved files."""
    from train.card import build_card
    from train.data import scan
    from train.evaluate import evaluate

    samples, _ = scan(utk_dir)
    chip = evaluate(utk_dir, samples[:12], detect=False, models_dir=str(tiny_models), progress=False)
    detect = evaluate(utk_dir, samples[:6], detect=True, models_dir=str(tiny_models), progress=False)
    assert chip["n"] == 12 and chip["mode"] == "chip" and len(chip["predictions"]) == 12
    errors = [abs(p["pred_age"] - p["age"]) for p in chip["predictions"]]
    assert chip["age_mae"] == pytest.approx(np.mean(errors), abs=0.01)
    assert detect["n"] + detect["no_face"] == 6
    from core.models import MAX_AGE, AgeGenderModels
    from train.data import load_chips

    plain = evaluate(utk_dir, samples[:12], detect=False, models_dir=str(tiny_models), flip=False, progress=False)
    unflipped = AgeGenderModels(tiny_models, tta=False).predict({32: load_chips(utk_dir, samples[:12], 32)})
    assert chip["flip"] and not plain["flip"]
    # chip mode is the app's detect=False road, which reports ages within [0, MAX_AGE]
    np.testing.assert_allclose([p["pred_age"] for p in plain["predictions"]], np.clip(unflipped.ages, 0, MAX_AGE),
                               atol=0.01)
    folder = tmp_path / "models"
    shutil.copytree(tiny_models, folder)
    (folder / "metrics_test_chip.json").write_text(json.dumps(chip))
    card = build_card(folder)
    assert "## Test metrics" in card and str(chip["age_mae"]) in card and "From scratch" in card
    assert "Age calibration" in card and "trained on the app's crop" in card


def test_training_continues_from_a_shipped_model_h5(tmp_path, utk_dir, tiny_models):
    """``--init models/age_model.h5 --out-dir models`` continues the exported model (backbone and head) and
    its published history: stages 1 and 2 in one file, the same when published again."""
    import shutil

    import keras

    from train.model import is_keras_model_h5
    from train.publish import publish_history

    shipped = tmp_path / "models"
    shutil.copytree(tiny_models, shipped)
    assert is_keras_model_h5(shipped / "age_model.h5")
    assert not is_keras_model_h5(shipped / "age_model.json")
    src = keras.models.load_model(shipped / "age_model.h5", compile=False)
    run = tmp_path / "run"
    assert train_main(["age", "--data-dir", str(utk_dir), "--schedule", "32:1", "--batch-size", "8",
                       "--init", str(shipped / "age_model.h5"), "--freeze-blocks", "5", "--run-dir", str(run),
                       "--out-dir", str(shipped), "--split-dir", str(tmp_path / "splits"),
                       "--precision", "float32", "--no-cache"]) == 0
    new = keras.models.load_model(shipped / "age_model.h5", compile=False)
    for a, b in zip(src.get_layer("conv3_1").get_weights(), new.get_layer("conv3_1").get_weights()):
        np.testing.assert_array_equal(a, b)  # frozen, so still the shipped weights
    assert not np.array_equal(src.get_layer("age_dense").get_weights()[0], new.get_layer("age_dense").get_weights()[0])
    assert "age_model.h5" in json.loads((run / "config.json").read_text())["init_note"]
    rows = list(csv.DictReader((shipped / "history_age.csv").open()))
    assert [(r["stage"], r["epoch"]) for r in rows] == [("1", "0"), ("2", "1")]
    record = json.loads((shipped / "age_run.json").read_text())
    assert record["parent_run"]["schedule"] == "32:1" and record["init"].endswith("age_model.h5")
    history = (shipped / "history_age.csv").read_text()
    publish_history(run, shipped, "age", json.loads((run / "config.json").read_text()))  # over its own files
    assert (shipped / "history_age.csv").read_text() == history
    assert json.loads((shipped / "age_run.json").read_text())["parent_run"] == record["parent_run"]
    from train.card import build_card

    card = build_card(shipped)
    assert "- age model, stage 1: from scratch" in card and "- age model, stage 2: backbone and head from" in card


def test_a_multitask_backbone_stopped_early_publishes_its_history(tmp_path, utk_dir):
    """The shipped backbone is used where --until-epoch stopped it: its history and record still reach models/,
    and running the same command again with --resume trains nothing more."""
    args = ["multitask", "--data-dir", str(utk_dir), "--schedule", "32:3", "--batch-size", "8", "--until-epoch", "1",
            "--run-dir", str(tmp_path / "mt"), "--out-dir", str(tmp_path / "models"),
            "--split-dir", str(tmp_path / "splits"), "--precision", "float32", "--no-cache", "--resume"]
    for _ in range(2):
        assert train_main(args) == 0
        rows = list(csv.DictReader((tmp_path / "models" / "history_multitask.csv").open()))
        record = json.loads((tmp_path / "models" / "multitask_run.json").read_text())
        assert len(rows) == 1 and record["epochs_done"] == 1 and "--resume" in record["note"]


def make_aaf_faces(folder, chip, n: int = 24, seed: int = 5) -> None:
    """All-Age-Faces-named copies of generated chips (no race label in the names)."""
    make_utk_folder(folder, chip, n=n, seed=seed)
    for i, path in enumerate(sorted(folder.iterdir())):
        age, gender = path.name.split("_")[:2]
        path.rename(folder / f"{age}_{gender}_aaf_{i:05d}.jpg")


def test_training_on_two_datasets_reports_each_and_records_the_mix(tmp_path, utk_dir, astronaut_chip):
    """Two --data-dir: the mix trains, history has each dataset's validation MAE, the run record and the
    exported metadata name both datasets and their weights; calibration is fitted on the union."""
    aaf = tmp_path / "aaf"
    make_aaf_faces(aaf, astronaut_chip)
    out = tmp_path / "models"
    args = ["age", "--data-dir", str(utk_dir), "--data-dir", str(aaf), "--split-dir", str(tmp_path / "s_utk"),
            "--split-dir", str(tmp_path / "s_aaf"), "--schedule", "32:1", "--batch-size", "8",
            "--dataset-weights", "utkface=1,aaf=3", "--run-dir", str(tmp_path / "run"), "--out-dir", str(out),
            "--precision", "float32", "--no-cache", "--crop", "chip", "--epoch-images", "24"]
    assert train_main(args) == 0
    rows = list(csv.DictReader((tmp_path / "run" / "history.csv").open()))
    assert {"val_mae", "val_mae_utkface", "val_mae_aaf"} <= set(rows[0])
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    assert config["dataset_weights"] == {"utkface": 0.25, "aaf": 0.75} and config["augment"] == "photo"
    assert set(config["datasets"]) == {"utkface", "aaf"}
    assert config["n_train"] == sum(d["n_train"] for d in config["datasets"].values())
    assert config["epoch_images"] == 24 and float(rows[0]["images_per_s"]) > 0
    meta = json.loads((out / "age_model.json").read_text())
    assert set(meta["validation"]["per_dataset"]) == {"utkface", "aaf"}
    assert meta["validation"]["n"] == sum(v["n"] for v in meta["validation"]["per_dataset"].values())
    assert "union of the validation splits of aaf + utkface" in meta["calibration"]["fitted_on"]
    assert "All-Age-Faces" in meta["provenance"]["dataset"] and "UTKFace" in meta["provenance"]["dataset"]
    # a multitask backbone on both: AAF has no race label, which the race loss leaves out
    assert train_main(["multitask", *args[1:args.index("--dataset-weights")], "--run-dir", str(tmp_path / "mt"),
                       "--out-dir", str(out), "--precision", "float32", "--no-cache", "--augment", "basic"]) == 0
    rows = list(csv.DictReader((tmp_path / "mt" / "history.csv").open()))
    assert all(np.isfinite(float(rows[0][k])) for k in ("loss", "race_loss", "val_race_accuracy"))
    assert {"val_age_mae_aaf", "val_gender_accuracy_utkface"} <= set(rows[0])
    with pytest.raises(SystemExit):
        train_main(["age", "--data-dir", str(utk_dir), "--dataset-weights", "utkface:1"])
    assert train_main(["age", "--data-dir", str(utk_dir), "--split-dir", str(tmp_path / "s_utk"),
                       "--dataset-weights", "aaf=1", "--run-dir", str(tmp_path / "bad")]) == 2

