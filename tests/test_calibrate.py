"""Age calibration: the least-absolute-deviations line, folded into the head of a real model, and the
piecewise-linear curve after it."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from core.modelcard import apply_age_curve
from train.calibrate import choose_curve, fit_affine_l1, fit_curve, fold_age_affine, fold_age_curve
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


def test_the_curve_fit_recovers_a_bend_and_cross_validation_finds_where():
    """Predictions that over-age the young (true = 0.6 x pred + 9.6 below 24, = pred above: continuous)."""
    rng = np.random.default_rng(0)
    pred = rng.uniform(1, 80, 3000)
    true = np.where(pred < 24, 0.6 * pred + 9.6, pred)
    coef = fit_curve(pred, true, np.array([24.0]))
    np.testing.assert_allclose(coef, [9.6, 0.6, 0.4], atol=1e-3)  # 1, age, max(age - 24, 0)
    np.testing.assert_allclose(apply_age_curve(np.array([10.0, 24.0, 50.0]), coef, np.array([24.0])),
                               [15.6, 24.0, 50.0], atol=1e-3)
    knots, scores = choose_curve(pred, true + rng.laplace(0.0, 2.0, len(pred)))
    assert knots is not None and 24.0 in knots  # the sets that bend at 24 fit; the others cannot
    assert min(v for k, v in scores.items() if k != "straight line") < scores["straight line"] - 0.1
    straight = fit_curve(pred, 0.9 * pred + 2.0, np.array([12.0, 24.0, 40.0]))
    np.testing.assert_allclose(straight, [2.0, 0.9, 0.0, 0.0, 0.0], atol=1e-3)  # a line stays a line


def test_a_folded_curve_maps_the_output_in_the_h5_and_in_its_export(tiny_models, tmp_path, monkeypatch):
    import keras

    from core.models import AGE_CURVE_LAYERS, AgeGenderModels, inference_copy, predict_crops
    from train.model import compile_args

    pytest.importorskip("openvino")
    from train.export import export_model

    model = keras.models.load_model(tiny_models / "age_model.h5", compile=False)
    x = np.random.default_rng(2).integers(0, 255, (8, 32, 32, 3), dtype=np.uint8)
    before = predict_crops(model, x, flip=False)
    knots = np.quantile(before, [0.3, 0.7])  # bends inside the range the outputs span
    coef = np.array([1.0, 0.5, 0.7, -0.2])
    curved = fold_age_curve(model, coef, knots)
    assert all(curved.get_layer(name) is not None for name in AGE_CURVE_LAYERS)
    np.testing.assert_allclose(predict_crops(curved, x, flip=False), apply_age_curve(before, coef, knots),
                               rtol=1e-5, atol=1e-3)
    again = fold_age_curve(curved, np.array([0.0, 1.0, 0.0, 0.0]), knots)  # same knots: set in place
    assert again is curved
    np.testing.assert_allclose(predict_crops(again, x, flip=False), before, rtol=1e-5, atol=1e-3)
    bf16 = inference_copy(fold_age_curve(curved, coef, knots), bfloat16=True)
    assert all(bf16.get_layer(name).compute_dtype == "float32" for name in (*AGE_CURVE_LAYERS, "age"))

    models = tmp_path / "models"
    shutil.copytree(tiny_models, models)
    curved.compile(optimizer="adam", loss=compile_args("age")["loss"])
    curved.save(models / "age_model.h5")
    record = export_model(models / "age_model.h5", faces=x)
    assert record["parity"]["max_abs_diff"] < 1e-3
    outputs = {}
    for runtime in ("keras", "export"):
        monkeypatch.setenv("AGEGENDER_RUNTIME", runtime)
        monkeypatch.setenv("AGEGENDER_PRECISION", "float32")
        loaded = AgeGenderModels(models, tta=False)
        assert loaded.runtime == runtime
        outputs[runtime] = loaded.predict({32: x}).ages
    np.testing.assert_allclose(outputs["keras"], apply_age_curve(before, coef, knots), rtol=1e-5, atol=1e-3)
    np.testing.assert_allclose(outputs["export"], outputs["keras"], atol=1e-3)


def test_the_dashboard_chart_draws_the_curve_from_the_metadata_record():
    from core.modelcard import age_curve
    from ui.charts import calibration_figure

    curve = age_curve({"calibration": {"scale": 1.0, "offset": 0.0,
                                       "curve": {"knots": [10.0], "coefficients": [1.0, 0.5, 0.5]}}})
    fig = calibration_figure(curve)
    x, y = np.asarray(fig.data[0].x), np.asarray(fig.data[0].y)
    for age, reported in ((0.0, 1.0), (10.0, 6.0), (20.0, 16.0)):  # 1 + 0.5 age + 0.5 max(age - 10, 0)
        assert y[np.argmin(np.abs(x - age))] == pytest.approx(reported - age)  # drawn as the change
        assert np.asarray(fig.data[0].customdata)[np.argmin(np.abs(x - age))] == pytest.approx(reported)
    assert age_curve({"calibration": {"scale": 1.0, "offset": 0.0}}) is None and age_curve({}) is None
