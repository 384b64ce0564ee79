"""What the test-time flip is worth, per model: accuracy on the test splits and throughput, in one run.

    python -m bench.flip --data-dir ../shared/data/utkface --data-dir ../shared/data/aaf [--detect] [--limit N]

The flip (each face also run mirrored, the two outputs averaged) doubles a model's work. Each model's flip
is set on its own (``tta_flip`` in its metadata), so there are four settings: both models flipped, only age,
only gender, neither. Their outputs are independent per model (a model's output does not depend on whether
the other flips), so the accuracy of all four comes from two passes over each test split, with and without
the flip; the time of each is measured on the same chips, the four settings alternated over ``--rounds``
rounds (median chips/s, the batch mode's road: ``core.analyze_many(detect=False)``, 64 per call, timed as
``python -m bench`` times it).

Chip mode (default) scores the test images as already-cropped faces, as the batch mode does with chips;
``--detect`` runs the app's road (MTCNN + crop) for the accuracy part. The last line printed is one JSON
object.
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
from pathlib import Path

import numpy as np

#: name -> flip per model
SETTINGS = {"both": {"age": True, "gender": True}, "gender only": {"age": False, "gender": True},
            "age only": {"age": True, "gender": False}, "neither": {"age": False, "gender": False}}


def _models(flip: dict[str, bool], directory: Path | None = None):
    """The process's models with the given flip per model: a copy that shares the loaded networks and leaves
    the process-wide models as they are."""
    from core.models import load_models

    flipped = copy.copy(load_models(directory))
    flipped.flip = dict(flip)
    return flipped


def _predict(images: list[np.ndarray], flip: dict[str, bool], *, detect: bool) -> list:
    from train.evaluate import our_predictor

    return our_predictor(_models(flip), detect=detect, progress=False)(images)


def accuracy(data_dir: Path, *, detect: bool, limit: int | None) -> dict[str, dict]:
    """Age MAE and gender accuracy of each setting on the test split of ``data_dir``."""
    from train.evaluate import load_images, select_samples

    samples, _ = select_samples(data_dir, "test", None, limit)
    images = load_images(data_dir, samples)
    with_flip = _predict(images, SETTINGS["both"], detect=detect)
    without = _predict(images, SETTINGS["neither"], detect=detect)
    kept = [i for i, (a, b) in enumerate(zip(with_flip, without)) if a is not None and b is not None]
    age = np.array([samples[i].age for i in kept], float)
    female = np.array([samples[i].gender == 1 for i in kept])
    out = {}
    for name, flip in SETTINGS.items():
        pred_age = np.array([(with_flip if flip["age"] else without)[i].age for i in kept])
        p_female = np.array([(with_flip if flip["gender"] else without)[i].p_female for i in kept])
        out[name] = {"n": len(kept), "age_mae": round(float(np.mean(np.abs(pred_age - age))), 4),
                     "gender_accuracy": round(float(np.mean((p_female >= 0.5) == female)), 4)}
    return out


def throughput(chips: list[tuple[str, bytes]], rounds: int) -> dict[str, float]:
    """Median chips/s of each setting over ``rounds`` alternated rounds (``bench.probe.chips_per_second``, the
    throughput ``python -m bench`` reports: one warm-up batch, then all chips, 64 per call)."""
    from bench.probe import chips_per_second

    runs: dict[str, list[float]] = {name: [] for name in SETTINGS}
    for _ in range(rounds):
        for name, flip in SETTINGS.items():
            runs[name].append(chips_per_second(chips, _models(flip)))
    return {name: round(statistics.median(v), 2) for name, v in runs.items()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.flip", description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-dir", type=Path, action="append", required=True)
    parser.add_argument("--detect", action="store_true", help="accuracy through the app's road (MTCNN + crop)")
    parser.add_argument("--limit", type=int, help="N test files per dataset, spread evenly")
    parser.add_argument("--timing-chips", type=int, default=192, help="chips per timed round")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args(argv)

    from core.hardware import cpu_description
    from core.models import load_models
    from train.data import dataset_name
    from train.evaluate import select_samples

    models = load_models()
    result: dict = {"cpu": cpu_description(), "runtime": models.runtime, "precision": models.precision,
                    "mode": "detect" if args.detect else "chip", "accuracy": {}}
    for data_dir in args.data_dir:
        name = dataset_name(data_dir)
        result["accuracy"][name] = accuracy(data_dir, detect=args.detect, limit=args.limit)
        for setting, m in result["accuracy"][name].items():
            print(f"{name:8s} {setting:12s} n={m['n']:5d}  age MAE {m['age_mae']:.3f}  "
                  f"gender {100 * m['gender_accuracy']:.2f} %", flush=True)
    first = args.data_dir[0]
    samples, _ = select_samples(first, "test", None, args.timing_chips)
    chips = [(s.name, (first / s.name).read_bytes()) for s in samples]
    result["chips_per_s"] = throughput(chips, args.rounds)
    base = result["chips_per_s"]["both"]
    for setting, cps in result["chips_per_s"].items():
        print(f"chips/s {setting:12s} {cps:7.2f}  ({cps / base:.2f}x both)")
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
