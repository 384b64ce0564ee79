"""Could a straight line on the age output undo the over-ageing of children? Fitted on validation, scored on test.

    python -m train.evaluate --data-dir ../shared/data/utkface --split val --detect --json val_utk.json
    python -m train.evaluate --data-dir ../shared/data/aaf --split val --detect --json val_aaf.json
    (and the same with --split test)
    python -m train.bias_lines --val val_utk.json val_aaf.json --test test_utk.json test_aaf.json

Reads the per-image predictions that ``train.evaluate --json`` writes (one file per dataset, the same datasets
in the same order for ``--val`` and ``--test``). For each line ``age' = scale * age + offset`` it prints, per test
set, the age MAE, the mean signed error under 20 and per age bucket (``train.evaluate.compute_metrics``): the
model as it is, the least-absolute-deviations line on the union of the validation sets (what ``train.calibrate``
folds into the model), and for each ``--bias-limit`` the line with the lowest validation MAE whose mean signed
error under 20 is within that limit on every validation set. A line can be folded into the age head
(``train.calibrate``), so what this measures is whether calibration alone could meet a bias target, and at
what cost in MAE.

Then a bent line: a continuous piecewise-linear map of the age output, fitted by least absolute deviations
on the pooled validation sets (the line above is the same fit without knots). Where it bends is chosen among
the ``--knots`` sets by 5-fold cross-validation on validation alone; the chosen curve is scored on the test
sets with the paired bootstrap interval of its change against the model as it is (``train.compare``). It
measures what a calibration more flexible than a line could give, e.g. pulling down only the young ages.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from core.modelcard import apply_age_curve
from train.calibrate import DEFAULT_KNOTS, choose_curve, fit_affine_l1, fit_curve
from train.compare import compare
from train.evaluate import compute_metrics


def read_rows(path: Path) -> list[dict]:
    """The per-image predictions of a ``train.evaluate --json`` file."""
    return json.loads(Path(path).read_text())["predictions"]


def prediction_arrays(rows: list[dict]) -> dict[str, np.ndarray]:
    """``age``, ``pred_age``, ``gender`` and ``p_female`` of every scored image, one array each."""
    return {key: np.array([r[key] for r in rows], np.float64) for key in ("age", "pred_age", "gender", "p_female")}


def read_predictions(path: Path) -> dict[str, np.ndarray]:
    """:func:`prediction_arrays` of a ``train.evaluate --json`` file."""
    return prediction_arrays(read_rows(path))


def bias_under(true: np.ndarray, pred: np.ndarray, age: float = 20.0) -> float:
    """Mean signed error (predicted - true) of the faces younger than ``age``; NaN when there are none."""
    young = true < age
    return float(np.mean(pred[young] - true[young])) if young.any() else float("nan")


def constrained_line(sets: list[tuple[np.ndarray, np.ndarray]], limit: float, *,
                     scales: np.ndarray | None = None, offsets: np.ndarray | None = None
                     ) -> tuple[float, float, float] | None:
    """``(scale, offset, pooled MAE)`` of the grid line with the lowest MAE on all ``sets`` pooled, among those
    whose bias under 20 is within ``limit`` years on every set; None when no line of the grid is."""
    scales = np.arange(0.9, 1.4001, 0.01) if scales is None else scales
    offsets = np.arange(-12.0, 4.0001, 0.1) if offsets is None else offsets
    true = np.concatenate([t for t, _ in sets])
    pred = np.concatenate([p for _, p in sets])
    best = None
    for s in scales:
        for o in offsets:
            if max(abs(bias_under(t, s * p + o)) for t, p in sets) > limit:
                continue
            mae = float(np.mean(np.abs(s * pred + o - true)))
            if best is None or mae < best[2]:
                best = (float(s), float(o), mae)
    return best


def _print_metrics(path: Path, t: dict[str, np.ndarray], pred: np.ndarray) -> None:
    m = compute_metrics(t["age"], pred, t["gender"], t["p_female"])
    cells = " ".join(f"{k} {b['age_bias']:+.1f}" for k, b in m["per_age_bucket"].items() if b["n"])
    print(f"  {path.name}: MAE {m['age_mae']:.3f}, bias under 20 {m['under_20']['age_bias']:+.2f} | {cells}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m train.bias_lines", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--val", type=Path, nargs="+", required=True, help="train.evaluate --json files, validation")
    parser.add_argument("--test", type=Path, nargs="+", required=True, help="the same datasets' test files")
    parser.add_argument("--bias-limit", type=float, nargs="+", default=[3.0, 2.0, 1.5, 1.0])
    parser.add_argument("--knots", nargs="+", default=list(DEFAULT_KNOTS),
                        help="candidate knot sets of the bent line, each comma-separated ages")
    parser.add_argument("--resamples", type=int, default=4000, help="bootstrap resamples of the bent line's change")
    args = parser.parse_args(argv)
    if len(args.val) != len(args.test):
        print("error: give one --val and one --test file per dataset, in the same order", file=sys.stderr)
        return 2
    val = [(v["age"], v["pred_age"]) for v in map(read_predictions, args.val)]
    test_rows = [read_rows(p) for p in args.test]
    test = [prediction_arrays(rows) for rows in test_rows]
    lines = [("as it is", 1.0, 0.0)]
    s, o = fit_affine_l1(np.concatenate([p for _, p in val]), np.concatenate([t for t, _ in val]))
    lines.append(("least absolute deviations on validation", s, o))
    for limit in args.bias_limit:
        found = constrained_line(val, limit)
        if found is None:
            print(f"no line of the grid keeps the bias under 20 within {limit} on every validation set")
            continue
        lines.append((f"lowest validation MAE with |bias under 20| <= {limit} (val MAE {found[2]:.3f})", *found[:2]))
    for name, s, o in lines:
        print(f"{name}: age' = {s:.3f} x age {o:+.2f}")
        for path, t in zip(args.test, test):
            _print_metrics(path, t, s * t["pred_age"] + o)

    val_pred = np.concatenate([p for _, p in val])
    val_true = np.concatenate([t for t, _ in val])
    knots, scores = choose_curve(val_pred, val_true, args.knots)  # what train.calibrate folds in
    as_it_is = float(np.mean(np.abs(val_pred - val_true)))
    print(f"bent line, 5-fold cross-validated MAE on validation (as it is: {as_it_is:.4f}): "
          + ", ".join(f"{k} {v:.4f}" for k, v in scores.items()))
    if knots is None:
        print("no knot set beats the straight line")
        return 0
    coef = fit_curve(val_pred, val_true, knots)
    grid = np.array([0, 5, 10, 15, 20, 25, 30, 40, 50, 60, 70, 80], float)
    print(f"chosen knots {','.join(f'{k:g}' for k in knots)}, fitted on all validation faces; age -> age': "
          + ", ".join(f"{a:g} -> {b:.1f}" for a, b in zip(grid, apply_age_curve(grid, coef, knots))))
    for path, t, rows in zip(args.test, test, test_rows):
        _print_metrics(path, t, apply_age_curve(t["pred_age"], coef, knots))
        bent = [{**r, "pred_age": float(a)} for r, a in zip(rows, apply_age_curve(t["pred_age"], coef, knots))]
        change = compare({"predictions": rows}, {"predictions": bent}, resamples=args.resamples)["metrics"]
        print("    change, 95 % interval: " + "; ".join(
            f"{k} {change[k]['b_minus_a']:+.3f} [{change[k]['ci95'][0]:+.3f}, {change[k]['ci95'][1]:+.3f}]"
            for k in ("age_mae", "age_bias_under_20", "age_mae_under_20")))
    return 0


if __name__ == "__main__":
    sys.exit(main())
