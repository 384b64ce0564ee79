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
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from train.model import AGE_MEAN, AGE_STD


def fit_affine_l1(pred: np.ndarray, true: np.ndarray, *, iterations: int = 100) -> tuple[float, float]:
    """``(scale, offset)`` minimising ``mean |scale * pred + offset - true|`` (iteratively reweighted least
    squares; deterministic)."""
    pred, true = np.asarray(pred, np.float64), np.asarray(true, np.float64)
    design = np.c_[pred, np.ones_like(pred)]
    weights = np.ones_like(pred)
    coef = np.array([1.0, 0.0])
    for _ in range(iterations):
        coef = np.linalg.lstsq(design * weights[:, None], true * weights, rcond=None)[0]
        weights = 1.0 / np.sqrt(np.maximum(np.abs(true - design @ coef), 1e-3))
    return float(coef[0]), float(coef[1])


def fold_age_affine(model, scale: float, offset: float) -> None:
    """Make ``model`` output ``scale * age + offset`` by changing its ``age_dense`` kernel and bias.

    The head is ``age = AGE_STD * (w . x + b) + AGE_MEAN``; the new weights are ``scale * w`` and
    ``scale * b + (AGE_MEAN * (scale - 1) + offset) / AGE_STD``.
    """
    layer = model.get_layer("age_dense")
    kernel, bias = layer.get_weights()
    layer.set_weights([kernel * scale,
                       bias * scale + (AGE_MEAN * (scale - 1.0) + offset) / AGE_STD])


def calibrate_age_model(model, x_val: np.ndarray, y_val: np.ndarray, *, previous: dict | None = None,
                        fitted_on: str = "validation split") -> tuple[dict, np.ndarray]:
    """Fit the line on ``model``'s validation predictions (with the flip), fold it in; return the record and
    the calibrated validation predictions.

    ``previous``: the calibration already folded into the model, composed with the new one in the record.
    ``fitted_on``: what ``x_val`` is, for the record (e.g. the union of several datasets' validation splits).
    """
    from core.models import predict_crops

    before = predict_crops(model, x_val, flip=True)
    scale, offset = fit_affine_l1(before, y_val)
    fold_age_affine(model, scale, offset)
    after = predict_crops(model, x_val, flip=True)
    if previous:
        scale, offset = scale * previous["scale"], scale * previous["offset"] + offset
    return {"scale": round(scale, 5), "offset": round(offset, 4),
            "fitted_on": f"{fitted_on}, app crops (n={len(y_val)}), least absolute deviations",
            "validation_mae_before": round(float(np.mean(np.abs(before - y_val))), 3),
            "validation_mae_after": round(float(np.mean(np.abs(after - y_val))), 3)}, after


def fitted_on(datasets: list[str]) -> str:
    """What the calibration was fitted on, for its record."""
    names = sorted(set(datasets))
    return "validation split" if len(names) < 2 else f"union of the validation splits of {' + '.join(names)}"


def age_metadata(record: dict, calibrated: np.ndarray, y_val: np.ndarray) -> dict:
    """The age model's metadata fields that come from calibration: ``validation``, ``calibration`` and the
    ``age_intervals`` table fitted on the calibrated validation predictions."""
    from train.trainer import calibrate_age_intervals

    return {"validation": {"mae": round(float(np.mean(np.abs(calibrated - y_val))), 3), "n": len(y_val),
                           "crop": "app"},
            "calibration": record,
            "age_intervals": calibrate_age_intervals(calibrated, y_val)}


def main(argv: list[str] | None = None) -> int:
    import keras

    from core.models import DEFAULT_MODELS_DIR, MODEL_FILES, read_metadata
    from train.data import labels, load_chips_of, validation_sources
    from train.model import compile_args
    from train.trainer import validation_by_dataset

    parser = argparse.ArgumentParser(prog="python -m train.calibrate", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", type=Path, action="append", required=True,
                        help="a dataset folder (repeat for several: their validation splits together)")
    parser.add_argument("--models-dir", type=Path, default=DEFAULT_MODELS_DIR)
    parser.add_argument("--split-dir", type=Path, action="append",
                        help="split folder of each --data-dir, in the same order (default train/splits/<dataset>)")
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
    record, after = calibrate_age_model(model, x_val, y_val, previous=metadata.get("calibration"),
                                        fitted_on=fitted_on(list(srcs)))
    model.compile(optimizer="adam", loss=compile_args("age")["loss"])  # the loss reloads with the .h5
    model.save(path)
    metadata.update(age_metadata(record, after, y_val))
    by_dataset = validation_by_dataset("age", after, y_val, val)
    if by_dataset:
        metadata["validation"]["per_dataset"] = by_dataset
    path.with_suffix(".json").write_text(json.dumps(metadata, indent=2))
    print(f"{path}: age' = {record['scale']} * age + {record['offset']}; validation MAE "
          f"{record['validation_mae_before']} -> {record['validation_mae_after']}; range coverage "
          f"{metadata['age_intervals']['coverage_validation']:.1%}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
