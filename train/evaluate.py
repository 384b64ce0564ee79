"""Evaluate the shipped models on the saved test split or on any UTKFace-format folder.

    python -m train.evaluate --data-dir ../shared/data/utkface                 # test split, chips
    python -m train.evaluate --data-dir ../shared/data/utkface --detect        # full app pipeline
    python -m train.evaluate --data-dir OTHER_FOLDER --split all --json out.json

Chip mode feeds each chip through ``core.crop.crop_face`` as a training chip. ``--detect`` runs what the app
runs (``core.analyze``: MTCNN, the landmark crop, both models) on each file and scores the largest face, so
a geometry mismatch between training and the app shows up in the numbers. Reported: age MAE overall and
per age bucket, how often the true age falls in the calibrated age range, gender accuracy overall, for
adults (20+), per race and per age bucket.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

from train.data import AGE_BUCKETS, DEFAULT_SPLIT_DIR, Sample, age_bucket, load_chips, load_or_make_split, scan

RACES = ("White", "Black", "Asian", "Indian", "Others")


def compute_metrics(true_age, pred_age, true_female, p_female, race, low, high) -> dict:
    """All evaluation numbers from plain arrays (one entry per scored face)."""
    true_age, pred_age = np.asarray(true_age, float), np.asarray(pred_age, float)
    true_female, p_female = np.asarray(true_female, float), np.asarray(p_female, float)
    race, low, high = np.asarray(race, int), np.asarray(low, float), np.asarray(high, float)
    err = np.abs(pred_age - true_age)
    correct = (p_female >= 0.5) == (true_female >= 0.5)

    def group(mask) -> dict:
        n = int(mask.sum())
        return {"n": n,
                "age_mae": round(float(err[mask].mean()), 3) if n else None,
                "gender_accuracy": round(float(correct[mask].mean()), 4) if n else None}

    buckets = {}
    for lo, hi in AGE_BUCKETS:
        buckets[age_bucket(lo)] = group((true_age >= lo) & (true_age <= hi))
    return {
        "n": int(len(true_age)),
        "age_mae": round(float(err.mean()), 3) if len(err) else None,
        "age_rmse": round(float(np.sqrt(np.mean(err**2))), 3) if len(err) else None,
        "age_range_coverage": round(float(np.mean((true_age >= low) & (true_age <= high))), 4) if len(err) else None,
        "gender_accuracy": round(float(correct.mean()), 4) if len(err) else None,
        "gender_accuracy_adults": group(true_age >= 20)["gender_accuracy"],
        "per_age_bucket": buckets,
        "per_race": {RACES[r]: group(race == r) for r in range(len(RACES))},
    }


def evaluate(data_dir: Path, samples: list[Sample], *, detect: bool, models_dir: str | None = None, flip: bool = True,
             batch_size: int = 64, progress: bool = True) -> dict:
    from tqdm import tqdm

    import core
    from core.models import load_models

    models = load_models(models_dir, tta=None if flip else False)
    pred_age, p_female, kept, missed = [], [], [], []
    started = time.perf_counter()
    if detect:
        for s in tqdm(samples, disable=not progress, desc="detect+predict", unit="img"):
            faces = core.analyze(Path(data_dir) / s.name, models=models)
            if not faces:
                missed.append(s.name)
                continue
            pred_age.append(faces[0].age)
            p_female.append(faces[0].female_probability)
            kept.append(s)
    else:
        sizes = sorted(set(models.input_sizes.values()))
        crops = {size: load_chips(data_dir, samples, size) for size in sizes}
        for i in tqdm(range(0, len(samples), batch_size), disable=not progress, desc="predict", unit="batch"):
            pred = models.predict({size: c[i:i + batch_size] for size, c in crops.items()})
            pred_age.extend(pred.ages.tolist())
            p_female.extend(pred.female_probabilities.tolist())
        kept = list(samples)
    seconds = time.perf_counter() - started
    ranges = [models.age_range(a) for a in pred_age]
    metrics = compute_metrics([s.age for s in kept], pred_age, [s.gender for s in kept], p_female,
                              [s.race for s in kept], [r[0] for r in ranges], [r[1] for r in ranges])
    metrics.update({
        "mode": "detect" if detect else "chip",
        "flip": flip,
        "no_face": len(missed),
        "no_face_examples": missed[:10],
        "images_per_s": round(len(samples) / max(seconds, 1e-9), 2),
        "predictions": [{"file": s.name, "age": s.age, "pred_age": round(float(a), 2), "gender": s.gender,
                         "p_female": round(float(p), 4), "race": s.race}
                        for s, a, p in zip(kept, pred_age, p_female)],
    })
    return metrics


def format_report(m: dict) -> str:
    lines = [f"mode {m['mode']}: {m['n']} faces scored, {m['no_face']} without a detected face",
             f"age MAE {m['age_mae']}  (RMSE {m['age_rmse']}), true age inside the range: "
             + (f"{m['age_range_coverage']:.1%}" if m["age_range_coverage"] is not None else "n/a"),
             f"gender accuracy {m['gender_accuracy']:.2%}, adults (20+) {m['gender_accuracy_adults']:.2%}",
             "per age bucket:  " + "  ".join(f"{k}: MAE {v['age_mae']} acc {v['gender_accuracy']} (n={v['n']})"
                                            for k, v in m["per_age_bucket"].items()),
             "per race:  " + "  ".join(f"{k}: MAE {v['age_mae']} acc {v['gender_accuracy']} (n={v['n']})"
                                      for k, v in m["per_race"].items())]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m train.evaluate", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", type=Path, required=True)
    parser.add_argument("--split", choices=("test", "val", "train", "all"), default="test",
                        help="a saved split, or every well-named file in --data-dir")
    parser.add_argument("--split-dir", type=Path, default=DEFAULT_SPLIT_DIR)
    parser.add_argument("--detect", action="store_true", help="run the full app pipeline (MTCNN + crop)")
    parser.add_argument("--models-dir", help="default models/")
    parser.add_argument("--no-flip", action="store_true", help="without the test-time flipped copy")
    parser.add_argument("--limit", type=int, help="score only the first N samples")
    parser.add_argument("--json", type=Path, help="write the metrics (and per-image predictions) here")
    args = parser.parse_args(argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

    if not args.data_dir.is_dir():
        print(f"error: {args.data_dir} is not a folder", file=sys.stderr)
        return 2
    if args.split == "all":
        samples, malformed = scan(args.data_dir)
        if malformed:
            print(f"skipped {len(malformed)} malformed file names", file=sys.stderr)
    else:
        samples = load_or_make_split(args.data_dir, args.split_dir)[args.split]
    samples = samples[: args.limit] if args.limit else samples
    if not samples:
        print(f"error: no UTKFace-named images to score in {args.data_dir}", file=sys.stderr)
        return 2
    metrics = evaluate(args.data_dir, samples, detect=args.detect, models_dir=args.models_dir,
                       flip=not args.no_flip)
    metrics["split"] = args.split
    print(format_report(metrics))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(metrics, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
