"""Age calibration: the least-absolute-deviations line, folded into the head of a real model."""

from __future__ import annotations

import json
import shutil

import numpy as np

from train.calibrate import fit_affine_l1, fold_age_affine
from train.calibrate import main as calibrate_main


def test_l1_line_ignores_outliers_that_pull_a_least_squares_line():
    rng = np.random.default_rng(0)
    pred = rng.uniform(1, 80, 400)
    true = 0.9 * pred + 2.0
    true[:60] += rng.uniform(20, 40, 60)  # 15 % one-sided outliers: least squares would shift up
    scale, offset = fit_affine_l1(pred, true)
    assert abs(scale - 0.9) < 1e-3 and abs(offset - 2.0) < 1e-2
    lsq = np.polyfit(pred, true, 1)
    assert abs(lsq[1] - 2.0) > 1.0


def test_folded_line_changes_the_model_output_exactly(tiny_models):
    import keras

    from core.models import predict_crops

    model = keras.models.load_model(tiny_models / "age_model.h5", compile=False)
    x = np.random.default_rng(1).integers(0, 255, (6, 32, 32, 3), dtype=np.uint8)
    before = predict_crops(model, x, flip=True)
    fold_age_affine(model, 0.8, 4.5)
    np.testing.assert_allclose(predict_crops(model, x, flip=True), 0.8 * before + 4.5, rtol=1e-4, atol=1e-3)


def test_calibrate_cli_rewrites_model_and_metadata(tmp_path, utk_dir, tiny_models):
    import keras

    from core.models import predict_crops
    from train.data import labels, load_chips, load_or_make_split

    models = tmp_path / "models"
    shutil.copytree(tiny_models, models)
    split_dir = tiny_models.parent / "splits"  # the split the tiny models were trained on
    assert calibrate_main(["--data-dir", str(utk_dir), "--models-dir", str(models),
                           "--split-dir", str(split_dir)]) == 0
    meta = json.loads((models / "age_model.json").read_text())
    first = json.loads((tiny_models / "age_model.json").read_text())["calibration"]  # export calibrated once
    cal = meta["calibration"]
    val = load_or_make_split(utk_dir, split_dir, log=lambda *_: None)["val"]
    model = keras.models.load_model(models / "age_model.h5")  # still reloads compiled
    pred = predict_crops(model, load_chips(utk_dir, val, 32, cache=False, align=True), flip=True)
    # the metadata's MAE (rounded to 3 decimals) is the saved model's, up to that rounding
    assert abs(meta["validation"]["mae"] - float(np.mean(np.abs(pred - labels(val, "age"))))) <= 5e-4 + 1e-6
    assert cal["validation_mae_after"] <= cal["validation_mae_before"] + 1e-3
    assert cal["fitted_on"].startswith("validation") and "scale" in first
    assert set(meta["age_intervals"]) >= {"bands", "coverage_validation"}
