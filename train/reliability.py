"""Measure where the exported gender model is reliable and store the rule with it (``gender_reliability``).

    python -m train.reliability                       # the shipped models, UTKFace validation split
    python -m train.reliability --data-dir ../shared/data/utkface --data-dir ../shared/data/aaf

The validation faces go through the app's crop (MTCNN landmarks onto the chip template, ``--no-align``: the
chip as it is) and the app's inference (:class:`core.models.AgeGenderModels`: both exported models, test-time
flip, the CPU's precision). Then, on those predictions:

- **per bucket of predicted age** (the app knows only the predicted age; buckets as in ``train.evaluate``,
  five years wide under 20, neighbours merged until each has ``--min-faces``): gender accuracy, and
  ``reliable`` when it reaches ``--target`` (default 85 %);
- **per band of probability**, on the faces of reliable buckets: accuracy per 0.05 of ``max(p, 1 - p)``; the
  band is ``(1 - c, c)`` with ``c`` the upper edge of the highest bin below the target (no band if none is).

The block (format in :mod:`core.reliability`) is written into ``<models-dir>/gender_model.json``; the app, the
CLI and the API then show such faces' gender as "uncertain". ``python -m train`` runs this after exporting
an age or gender model when both exist (the rule depends on both: the age model picks the bucket).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import math
import os
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from core.models import MAX_AGE, MODEL_FILES, models_dir
from core.reliability import SCHEMA
from train.data import Sample, Source, load_chips_of, load_or_make_split, sources
from train.evaluate import EVAL_AGE_BUCKETS

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_DATA_DIR = ROOT.parent / "shared" / "data" / "utkface"
TARGET_ACCURACY = 0.85
#: Fewest validation faces a bucket (or probability bin) needs for a verdict; smaller ones join a neighbour.
MIN_FACES = 30
PROBABILITY_STEP = 0.05


def _merge_small(edges: Sequence[float], values: np.ndarray, min_faces: int) -> list[tuple[float, float]]:
    """Half-open intervals ``[edges[i], edges[i+1])`` (the last one ``[edges[-2], inf)``), neighbours merged
    upwards until each holds ``min_faces`` values; a short last group joins the one below it."""
    bounds = list(edges)
    groups: list[tuple[float, float]] = []
    start = bounds[0]
    for hi in bounds[1:]:
        if ((values >= start) & (values < hi)).sum() >= min_faces:
            groups.append((start, hi))
            start = hi
    if start < bounds[-1]:  # values left over at the top
        groups[-1:] = [(groups[-1][0] if groups else start, bounds[-1])]
    return groups


def _stats(correct: np.ndarray, mask: np.ndarray) -> tuple[int, float | None]:
    n = int(mask.sum())
    return n, (round(float(correct[mask].mean()), 4) if n else None)


def gender_reliability(pred_age, p_female, true_female, *, target: float = TARGET_ACCURACY,
                       min_faces: int = MIN_FACES) -> dict:
    """The ``gender_reliability`` block (see :mod:`core.reliability`) from validation predictions: predicted
    ages, P(female) and the true labels (1 = female), one entry per face."""
    pred_age, p = np.asarray(pred_age, float), np.asarray(p_female, float)
    correct = (p >= 0.5) == (np.asarray(true_female, float) >= 0.5)
    edges = [float(lo) for lo, _ in EVAL_AGE_BUCKETS] + [math.inf]
    buckets = []
    reliable_age = np.zeros(len(p), bool)
    for lo, hi in _merge_small(edges, pred_age, min_faces):
        inside = (pred_age >= lo) & (pred_age < hi)
        n, acc = _stats(correct, inside)
        ok = n >= min_faces and acc is not None and acc >= target
        reliable_age |= inside & ok
        buckets.append({"low": lo, "high": None if math.isinf(hi) else hi,
                        "label": f"{lo:g}+" if math.isinf(hi) else f"{lo:g}-{hi - 1:g}",
                        "n": n, "accuracy": acc, "reliable": bool(ok)})

    confidence = np.maximum(p, 1.0 - p)
    steps = np.round(np.arange(0.5, 1.0 + 1e-9, PROBABILITY_STEP), 4)
    bins, edge = [], 0.5
    pool = confidence[reliable_age]
    for lo, hi in _merge_small(list(steps[:-1]) + [1.0 + 1e-9], pool, min_faces):
        n, acc = _stats(correct[reliable_age], (pool >= lo) & (pool < hi))
        hi = min(hi, 1.0)
        below = n < min_faces or acc is None or acc < target
        bins.append({"low": round(lo, 4), "high": round(hi, 4), "n": n, "accuracy": acc, "reliable": not below})
        if below:
            edge = hi
    edge = round(float(edge), 4)
    in_band = reliable_age & (confidence < edge)
    n_band, acc_band = _stats(correct, in_band)
    uncertain = ~reliable_age | in_band
    return {
        "schema": SCHEMA,
        "target_accuracy": target,
        "min_faces": min_faces,
        "age_buckets": buckets,
        "probability_band": {"low": round(1.0 - edge, 4), "high": edge, "n": n_band, "accuracy": acc_band,
                             "bins": bins},
        "reliable_from_age": _reliable_from(buckets),
        "validation": {"n": len(p), "uncertain": int(uncertain.sum()),
                       "uncertain_share": round(float(uncertain.mean()), 4) if len(p) else None,
                       "accuracy_shown": _stats(correct, ~uncertain)[1],
                       "accuracy_uncertain": _stats(correct, uncertain)[1],
                       "accuracy_all": _stats(correct, np.ones(len(p), bool))[1]},
    }


def _reliable_from(buckets: list[dict]) -> float | None:
    start = None
    for b in reversed(buckets):
        if not b["reliable"]:
            break
        start = b["low"]
    return start


def validation_predictions(directory: Path, srcs: Mapping[str, Source], samples: list[Sample], *, align: bool = True,
                           cache: bool = True, batch_size: int = 64) -> tuple[np.ndarray, np.ndarray]:
    """Predicted ages and P(female) of ``samples`` through the app's crop and inference, exactly as
    :func:`core.pipeline.predict_faces` computes them (a fresh load of the exported models)."""
    from core.models import AgeGenderModels, _cached_networks

    _cached_networks.cache_clear()  # networks are cached per folder: a model just re-exported must be read again
    models = AgeGenderModels(directory)
    crops = {size: load_chips_of(srcs, samples, size, cache=cache, align=align)
             for size in set(models.input_sizes.values())}
    ages, probs = [], []
    for i in range(0, len(samples), batch_size):
        pred = models.predict({size: c[i:i + batch_size] for size, c in crops.items()})
        ages.append(pred.ages)
        probs.append(pred.female_probabilities)
    return np.clip(np.concatenate(ages), 0.0, MAX_AGE), np.concatenate(probs)


def compute(directory: Path, srcs: Mapping[str, Source], samples: list[Sample], *, align: bool = True,
            cache: bool = True, target: float = TARGET_ACCURACY, min_faces: int = MIN_FACES,
            split: str = "val") -> dict:
    """Predict ``samples`` with the models in ``directory`` and write the block into the gender model's
    metadata; returns the block."""
    pred_age, p_female = validation_predictions(directory, srcs, samples, align=align, cache=cache)
    block = gender_reliability(pred_age, p_female, [s.gender for s in samples], target=target, min_faces=min_faces)
    age_meta = json.loads((directory / MODEL_FILES["age"]).with_suffix(".json").read_text())
    block["computed_on"] = {
        "datasets": sorted({s.dataset for s in samples}), "split": split, "faces": len(samples),
        "crop": "the app's crop: MTCNN landmarks onto the chip template" if align else "the chip as it is (--no-align)",
        "age_model_exported": age_meta.get("provenance", {}).get("exported"),
        "computed": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
    }
    meta_path = (directory / MODEL_FILES["gender"]).with_suffix(".json")
    meta = json.loads(meta_path.read_text())
    meta["gender_reliability"] = block
    meta_path.write_text(json.dumps(meta, indent=2))
    return block


def after_export(directory: Path, srcs: Mapping[str, Source], val_samples: list[Sample], log=print, *,
                 cache: bool = True) -> dict | None:
    """The export step's call: recompute the block when both models are in ``directory`` (it depends on
    both), on the run's validation samples; ``None`` (and a note) when one is missing."""
    if not all((directory / f).is_file() for f in MODEL_FILES.values()):
        log("gender reliability: skipped until both models are exported (python -m train.reliability)")
        return None
    block = compute(directory, srcs, val_samples, cache=cache)
    log("gender reliability: " + summary(block))
    return block


def summary(block: dict) -> str:
    """One line for people: the unreliable buckets, the band, and what it does on validation."""
    bad = [f"{b['label']} ({_pct(b['accuracy'])}, n={b['n']})" for b in block["age_buckets"] if not b["reliable"]]
    band, v = block["probability_band"], block["validation"]
    return (f"uncertain at predicted ages {', '.join(bad) or 'none'}; band P(female) {band['low']:.2f}-"
            f"{band['high']:.2f} ({_pct(band['accuracy'])}, n={band['n']}); {v['uncertain']} of {v['n']} "
            f"validation faces uncertain, the others {_pct(v['accuracy_shown'])} right "
            f"(all: {_pct(v['accuracy_all'])})")


def _pct(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.1%}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m train.reliability", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", type=Path, action="append",
                        help=f"dataset folder(s) whose validation split to use (default {DEFAULT_DATA_DIR})")
    parser.add_argument("--split-dir", type=Path, action="append", help="split folder of each --data-dir")
    parser.add_argument("--split", choices=("val", "test", "train"), default="val")
    parser.add_argument("--models-dir", type=Path, help="default models/")
    parser.add_argument("--target", type=float, default=TARGET_ACCURACY, help="accuracy a bucket needs")
    parser.add_argument("--min-faces", type=int, default=MIN_FACES, help="fewest faces for a verdict")
    parser.add_argument("--no-align", action="store_true",
                        help="give the models each chip as it is instead of the app's landmark crop (faster: "
                             "no MTCNN for images without stored landmarks)")
    parser.add_argument("--no-cache", action="store_true", help="do not cache crops and landmarks in .cache/")
    args = parser.parse_args(argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    directory = models_dir(args.models_dir)
    data_dirs = args.data_dir or [DEFAULT_DATA_DIR]
    try:
        srcs = sources(data_dirs, args.split_dir)
    except (FileNotFoundError, ValueError) as exc:
        print(f"error: {exc} (give the dataset with --data-dir)", file=sys.stderr)
        return 2
    missing = [f for f in MODEL_FILES.values() if not (directory / f).is_file()]
    if missing:
        print(f"error: {', '.join(missing)} not in {directory}", file=sys.stderr)
        return 2
    samples = [s for src in srcs.values() for s in load_or_make_split(src.data_dir, src.split_dir)[args.split]]
    print(f"{len(samples)} {args.split} faces of {', '.join(srcs)}, models in {directory}", flush=True)
    block = compute(directory, srcs, samples, align=not args.no_align, cache=not args.no_cache,
                    target=args.target, min_faces=args.min_faces, split=args.split)
    for b in block["age_buckets"]:
        print(f"  predicted age {b['label']:>6}: {_pct(b['accuracy']):>6} of {b['n']:>4} faces "
              f"{'ok' if b['reliable'] else 'UNRELIABLE'}")
    print(summary(block))
    print(f"wrote gender_reliability into {(directory / MODEL_FILES['gender']).with_suffix('.json')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
