"""Calibrate an exported age model on the validation split, through the app's crop.

    python -m train.calibrate --data-dir ../shared/data/utkface [--data-dir ../shared/data/aaf] [--models-dir models]

A network trained with MSE predicts the conditional *mean* age; the product reports mean absolute error,
which the conditional *median* minimises, and UTKFace ages are skewed. A straight line
``age' = scale * age + offset`` fitted by least absolute deviations on validation predictions moves one
towards the other. It is folded into the weights of the age head (``age_dense``), so the ``.h5`` itself
outputs calibrated years: nothing changes in ``core`` and the test-time flip average stays exact. The age
range table is then recalibrated on the calibrated predictions. ``export`` (``python -m train age``) runs
the same steps; this command applies them to a model exported earlier. Validation predictions use the
app's crop (MTCNN landmarks of each chip, see :func:`train.data.load_chips`), as the app will see faces.
With several ``--data-dir`` the line is fitted on the union of their validation splits (one line for all:
the model does not know which dataset a face comes from), and the validation numbers are also given per
dataset.

After the line, a bent line (:func:`calibrate_age_model`): a continuous piecewise-linear map of the
calibrated years, where it bends chosen by cross-validation on the same faces, added after the head as four
small float32 layers (:data:`core.models.AGE_CURVE_LAYERS`) where it beats the line; ``--no-curve`` leaves
it out. A line is the best a single scale can do for every age at once; the curve may, for instance, pull
down only the young ages that the network over-estimates (``python -m train.bias_lines`` measures it on
the test splits).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from core.modelcard import apply_age_curve, hinge_basis
from core.models import DEFAULT_MODELS_DIR, MODEL_FILES, predict_crops, read_metadata
from train.data import labels, load_chips_of, validation_sources
from train.metrics import validation_by_dataset
from train.model import AGE_MEAN, AGE_STD, build_model, compile_args, copy_weights_by_name

#: Bands of predicted age for the calibrated age range, and its coverage (central 80 %).
AGE_BANDS = ((0, 10), (10, 20), (20, 30), (30, 45), (45, 60), (60, 200))
INTERVAL_QUANTILES = (0.10, 0.90)


def fit_l1(design: np.ndarray, true: np.ndarray, *, iterations: int = 100) -> np.ndarray:
    """Coefficients ``c`` minimising ``mean |design @ c - true|`` (iteratively reweighted least squares;
    deterministic)."""
    design, true = np.asarray(design, np.float64), np.asarray(true, np.float64)
    weights = np.ones(len(true))
    coef = np.zeros(design.shape[1])
    for _ in range(iterations):
        coef = np.linalg.lstsq(design * weights[:, None], true * weights, rcond=None)[0]
        weights = 1.0 / np.sqrt(np.maximum(np.abs(true - design @ coef), 1e-3))
    return coef


def fit_affine_l1(pred: np.ndarray, true: np.ndarray, *, iterations: int = 100) -> tuple[float, float]:
    """``(scale, offset)`` minimising ``mean |scale * pred + offset - true|`` (:func:`fit_l1`)."""
    pred = np.asarray(pred, np.float64)
    scale, offset = fit_l1(np.c_[pred, np.ones_like(pred)], true, iterations=iterations)
    return float(scale), float(offset)


#: Candidate knot sets of the bent line (ages of the model's output where its slope may change).
DEFAULT_KNOTS = ("12,24,40", "10,20,30,45,60", "8,16,24,35,50,65", "5,10,15,20,25,30,40,50,60,70")


def fit_curve(pred: np.ndarray, true: np.ndarray, knots: np.ndarray) -> np.ndarray:
    """The bent line's coefficients (least absolute deviations on :func:`hinge_basis`)."""
    return fit_l1(hinge_basis(pred, knots), true)


def cross_validated_mae(pred: np.ndarray, true: np.ndarray, knots: np.ndarray, *, folds: int = 5,
                        seed: int = 0) -> float:
    """MAE of the bent line on each fold when fitted on the others (faces assigned to folds at random)."""
    fold = np.random.default_rng(seed).integers(0, folds, len(pred))
    err = np.empty(len(pred))
    for f in range(folds):
        held = fold == f
        if held.any():
            coef = fit_curve(pred[~held], true[~held], knots)
            err[held] = np.abs(apply_age_curve(pred[held], coef, knots) - true[held])
    return float(np.mean(err))


def parse_knots(text: str) -> np.ndarray:
    return np.array(sorted(float(k) for k in text.split(",") if k.strip()))


def fold_age_affine(model, scale: float, offset: float) -> None:
    """Make ``model`` output ``scale * age + offset`` by changing its ``age_dense`` kernel and bias.

    The head is ``age = AGE_STD * (w . x + b) + AGE_MEAN``; the new weights are ``scale * w`` and
    ``scale * b + (AGE_MEAN * (scale - 1) + offset) / AGE_STD``.
    """
    layer = model.get_layer("age_dense")
    kernel, bias = layer.get_weights()
    layer.set_weights([kernel * scale,
                       bias * scale + (AGE_MEAN * (scale - 1.0) + offset) / AGE_STD])


def age_curve_knots(model) -> np.ndarray | None:
    """The knots of ``model``'s calibration curve (:data:`core.models.AGE_CURVE_LAYERS`), None without one."""
    try:
        layer = model.get_layer("age_hinges")
    except ValueError:
        return None
    return -np.asarray(layer.get_weights()[1], np.float64)


def fold_age_curve(model, coef: np.ndarray, knots: np.ndarray):
    """``model`` with its age output mapped through the curve ``coef`` on :func:`hinge_basis` (``knots``):
    the same network (weights copied by layer name) followed by :data:`core.models.AGE_CURVE_LAYERS`, whose
    weights are the curve, so the ``.h5`` and its inference export output the curved ages themselves. Returns a
    new model unless ``model`` already has a curve with as many knots (then set in place and returned)."""
    knots = np.asarray(knots, np.float64)
    current = age_curve_knots(model)
    if current is None or len(current) != len(knots):
        curved = build_model("age", input_size=model.input_shape[1], age_knots=tuple(knots))
        copy_weights_by_name(model, curved)
        model = curved
    model.get_layer("age_hinges").set_weights([np.ones((1, len(knots)), np.float32), (-knots).astype(np.float32)])
    # the output is c0 + c1 * years + sum_k w_k * hinge_k: kernel (c1, w_1..w_K), bias c0
    model.get_layer("age").set_weights([np.asarray(coef[1:], np.float32).reshape(-1, 1),
                                        np.asarray(coef[:1], np.float32)])
    return model


#: Fewest validation faces on which a calibration curve is fitted; with fewer, the straight line alone.
MIN_CURVE_FACES = 500


def choose_curve(pred: np.ndarray, true: np.ndarray, candidates=DEFAULT_KNOTS) -> tuple[np.ndarray | None, dict]:
    """The knot set among ``candidates`` with the lowest 5-fold cross-validated MAE on (pred, true), or None
    where no curve beats the straight line's own cross-validated MAE; and every MAE, for the record."""
    line = cross_validated_mae(pred, true, np.zeros(0))
    scores = {",".join(f"{k:g}" for k in parse_knots(c)): cross_validated_mae(pred, true, parse_knots(c))
              for c in candidates}
    best = min(scores, key=scores.get)
    record = {"straight line": round(line, 4), **{k: round(v, 4) for k, v in scores.items()}}
    return (parse_knots(best) if scores[best] < line else None), record


def calibrate_age_model(model, x_val: np.ndarray, y_val: np.ndarray, *, previous: dict | None = None,
                        fitted_on: str = "validation split", curve: bool = True) -> tuple[dict, np.ndarray, object]:
    """Calibrate ``model`` on its validation predictions (with the flip); return the record, the calibrated
    validation predictions and the calibrated model (a new object where a curve is added).

    First the least-absolute-deviations line, folded into ``age_dense``. Then, with ``curve`` and at least
    :data:`MIN_CURVE_FACES` faces, a continuous piecewise-linear curve on the calibrated years (least
    absolute deviations on :func:`hinge_basis`), where it bends chosen among :data:`DEFAULT_KNOTS` by 5-fold
    cross-validation on these faces, added after the head only where it beats the line's own
    cross-validated MAE (:func:`fold_age_curve`). A curve already in ``model`` is reset to the identity
    first, so the line's record composes with ``previous`` as before. With the curve the test-time flip
    averages curved ages, not the curve of the average: the record's numbers are the model's own outputs.

    ``previous``: the calibration already folded into the model, composed with the new line in the record.
    ``fitted_on``: what ``x_val`` is, for the record (e.g. the union of several datasets' validation splits).
    """
    knots = age_curve_knots(model)
    if knots is not None:
        model = fold_age_curve(model, np.r_[0.0, 1.0, np.zeros(len(knots))], knots)
    before = predict_crops(model, x_val, flip=True)
    scale, offset = fit_affine_l1(before, y_val)
    fold_age_affine(model, scale, offset)
    after = predict_crops(model, x_val, flip=True)
    if previous:
        scale, offset = scale * previous["scale"], scale * previous["offset"] + offset
    record = {"scale": round(scale, 5), "offset": round(offset, 4),
              "fitted_on": f"{fitted_on}, app crops (n={len(y_val)}), least absolute deviations",
              "validation_mae_before": round(float(np.mean(np.abs(before - y_val))), 3),
              "validation_mae_after": round(float(np.mean(np.abs(after - y_val))), 3)}
    if curve and len(y_val) >= MIN_CURVE_FACES:
        knots, scores = choose_curve(after, np.asarray(y_val, np.float64))
        if knots is not None:
            coef = fit_curve(after, y_val, knots)
            model = fold_age_curve(model, coef, knots)
            curved = predict_crops(model, x_val, flip=True)
            record["curve"] = {"knots": [float(k) for k in knots], "coefficients": [round(float(c), 5) for c in coef],
                               "chosen_by": "5-fold cross-validated MAE on the same faces (years)",
                               "cross_validated_mae": scores,
                               "validation_mae_before": record["validation_mae_after"],
                               "validation_mae_after": round(float(np.mean(np.abs(curved - y_val))), 3)}
            record["validation_mae_after"] = record["curve"]["validation_mae_after"]
            after = curved
    return record, after, model


def fitted_on(datasets: list[str]) -> str:
    """What the calibration was fitted on, for its record."""
    names = sorted(set(datasets))
    return "validation split" if len(names) < 2 else f"union of the validation splits of {' + '.join(names)}"


def calibrate_age_intervals(pred: np.ndarray, true: np.ndarray) -> dict:
    """Residual quantiles (true - predicted) per band of predicted age: the table behind ``age_range``."""
    bands = []
    residual = true - pred
    for lo, hi in AGE_BANDS:
        mask = (pred >= lo) & (pred < hi)
        r = residual[mask] if mask.sum() >= 20 else residual
        q_lo, q_hi = np.quantile(r, INTERVAL_QUANTILES)
        bands.append({"low": lo, "high": hi, "q_low": round(float(q_lo), 2), "q_high": round(float(q_hi), 2),
                      "n": int(mask.sum())})
    lows = np.array([next(b for b in bands if b["low"] <= p < b["high"] or b is bands[-1])["q_low"] for p in pred])
    highs = np.array([next(b for b in bands if b["low"] <= p < b["high"] or b is bands[-1])["q_high"] for p in pred])
    inside = float(np.mean((true >= pred + lows) & (true <= pred + highs)))
    return {"coverage_target": INTERVAL_QUANTILES[1] - INTERVAL_QUANTILES[0], "coverage_validation": round(inside, 4),
            "bands": bands}


def age_metadata(record: dict, calibrated: np.ndarray, y_val: np.ndarray) -> dict:
    """The age model's metadata fields that come from calibration: ``validation``, ``calibration`` and the
    ``age_intervals`` table fitted on the calibrated validation predictions."""
    return {"validation": {"mae": round(float(np.mean(np.abs(calibrated - y_val))), 3), "n": len(y_val),
                           "crop": "app"},
            "calibration": record,
            "age_intervals": calibrate_age_intervals(calibrated, y_val)}


def main(argv: list[str] | None = None) -> int:
    import keras

    parser = argparse.ArgumentParser(prog="python -m train.calibrate", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", type=Path, action="append", required=True,
                        help="a dataset folder (repeat for several: their validation splits together)")
    parser.add_argument("--models-dir", type=Path, default=DEFAULT_MODELS_DIR)
    parser.add_argument("--split-dir", type=Path, action="append",
                        help="split folder of each --data-dir, in the same order (default train/splits/<dataset>)")
    parser.add_argument("--no-curve", action="store_true",
                        help="the straight line only (no piecewise-linear curve after it)")
    args = parser.parse_args(argv)

    path = args.models_dir / MODEL_FILES["age"]
    if not path.is_file():
        print(f"error: no age model at {path}", file=sys.stderr)
        return 2
    metadata = read_metadata(path)
    try:
        srcs, val = validation_sources(args.data_dir, args.split_dir)
    except (FileNotFoundError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    model = keras.models.load_model(path, compile=False)
    x_val = load_chips_of(srcs, val, metadata["input_size"], align=True)
    y_val = labels(val, "age")
    record, after, model = calibrate_age_model(model, x_val, y_val, previous=metadata.get("calibration"),
                                               fitted_on=fitted_on(list(srcs)), curve=not args.no_curve)
    model.compile(optimizer="adam", loss=compile_args("age")["loss"])  # the loss reloads with the .h5
    model.save(path)
    metadata.update(age_metadata(record, after, y_val))
    by_dataset = validation_by_dataset("age", after, y_val, val)
    if by_dataset:
        metadata["validation"]["per_dataset"] = by_dataset
    path.with_suffix(".json").write_text(json.dumps(metadata, indent=2))
    if "curve" in record:
        print(f"curve after the line, knots {record['curve']['knots']}: validation MAE "
              f"{record['curve']['validation_mae_before']} -> {record['curve']['validation_mae_after']}")
    print(f"{path}: age' = {record['scale']} * age + {record['offset']}; validation MAE "
          f"{record['validation_mae_before']} -> {record['validation_mae_after']}; range coverage "
          f"{metadata['age_intervals']['coverage_validation']:.1%}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
