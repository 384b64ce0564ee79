"""Detection recall and false positives: what ``core.detect.detect_faces`` finds, with the app's settings.

    python -m bench.detection --data-dir ../shared/data/utkface --data-dir ../shared/data/aaf \\
        --photos ../shared/data/photos [--json out.json]

- **No-face rate** on each folder's test split (``train/splits/<dataset>/test.txt`` when it exists, else a
  seeded sample of ``--sample`` images): every image there holds one clear face, so each "no face" is a miss.
- **Photos** against the hand count in ``bench/photo_faces.json``: faces found, missed (found < count) and
  extra (found > count: a false positive, except on photos marked ``crowd`` where unlisted background
  faces are real).
- **Latency** of detection alone on the benchmark photos (240p, 720p, 1080p, one face; built in code,
  ``bench/inputs.py``), warm median. To compare two revisions in one run, use ``python -m bench.ab``.

The last line printed is one JSON object.
"""

from __future__ import annotations

import argparse
import io
import json
import random
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
HAND_COUNT = Path(__file__).resolve().parent / "photo_faces.json"
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")


def test_files(data_dir: Path, sample: int, seed: int = 0) -> tuple[str, list[Path]]:
    """The test split of ``data_dir`` when one is saved in ``train/splits``, else a seeded sample."""
    from train.data import dataset_name

    name = dataset_name(data_dir)
    split = ROOT / "train" / "splits" / name / "test.txt"
    if split.is_file():
        names = [n for n in split.read_text().split("\n") if n.strip()]
        files = [data_dir / n for n in names if (data_dir / n).is_file()]
        return f"{name} test split", files
    files = sorted(p for p in data_dir.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    return f"{name} sample", random.Random(seed).sample(files, min(sample, len(files)))


def no_face_rate(files: list[Path], threshold: float) -> dict:
    from core.detect import detect_faces
    from core.image import load_image

    missed = [f.name for f in files if not detect_faces(load_image(f), threshold=threshold)]
    return {"images": len(files), "no_face": len(missed),
            "no_face_rate": round(len(missed) / max(1, len(files)), 4), "no_face_files": missed}


def photo_counts(folder: Path, threshold: float) -> dict:
    from core.detect import detect_faces
    from core.image import load_image

    hand = {k: v for k, v in json.loads(HAND_COUNT.read_text()).items() if not k.startswith("_")}
    rows, missed, extra = {}, 0, 0
    for name, truth in sorted(hand.items()):
        path = folder / name
        if not path.is_file():
            continue
        faces = detect_faces(load_image(path), threshold=threshold)
        found, count = len(faces), truth["faces"]
        m = max(0, count - found)
        e = 0 if truth.get("crowd") else max(0, found - count)
        missed, extra = missed + m, extra + e
        rows[name] = {"hand_count": count, "found": found, "missed": m, "extra": e,
                      "confidences": [round(f.confidence, 3) for f in faces]}
    return {"photos": len(rows), "faces_by_hand": sum(r["hand_count"] for r in rows.values()),
            "found": sum(r["found"] for r in rows.values()), "missed": missed, "extra": extra, "per_photo": rows}


def latency(repeats: int, threshold: float) -> dict:
    import numpy as np
    from PIL import Image

    from bench.inputs import photo
    from core.detect import detect_faces

    out = {}
    for resolution in ("240p", "720p", "1080p"):
        rgb = np.asarray(Image.open(io.BytesIO(photo(resolution, 1))).convert("RGB"))
        detect_faces(rgb, threshold=threshold)  # warm-up: traces and interpreters for this size
        times = []
        for _ in range(repeats):
            t = time.perf_counter()
            detect_faces(rgb, threshold=threshold)
            times.append(time.perf_counter() - t)
        out[f"{resolution}_ms"] = round(statistics.median(times) * 1000, 1)
    return out


def passes_ab(repeats: int) -> dict:
    """What the large-face pass costs, interleaved in this process on the benchmark photos: warm medians of
    ``detect_faces`` alone and of ``core.analyze`` end to end (the shipped models) for

    - ``package``: one pass, run as the ``mtcnn`` package runs it (its stages in TensorFlow, its networks as
      ``tf.function``s: :class:`core.detect.PackageStages`, what ``AGEGENDER_LITERT=0`` runs);
    - ``one``: one pass with today's detector (the large-face pass switched off);
    - ``two``: today's detector;

    and the ratios two/one and two/package."""
    import numpy as np
    from PIL import Image

    import core
    from bench.inputs import photo
    from core import detect
    from core.models import load_models

    models = load_models()
    ours, package = detect.get_detector(), detect.PackageStages()
    get_detector, fraction = detect.get_detector, detect.LARGE_FACE_FRACTION
    # An infinite "large" face: the second pass never runs.
    variants = {"package": (float("inf"), package), "one": (float("inf"), ours), "two": (fraction, ours)}
    out = {}
    try:
        for resolution in ("240p", "720p", "1080p"):
            data = photo(resolution, 1)
            rgb = np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))
            times: dict[str, list[float]] = {f"{k}_{n}": [] for k in ("detect", "analyze") for n in variants}
            for rep in range(repeats + 1):
                for name, (value, detector) in variants.items():
                    detect.LARGE_FACE_FRACTION = value
                    detect.get_detector = lambda detector=detector: detector
                    for kind in ("detect", "analyze"):
                        t = time.perf_counter()
                        if kind == "detect":
                            detect.detect_faces(rgb)
                        else:
                            core.analyze(data, models=models)
                        if rep:  # the first round warms up
                            times[f"{kind}_{name}"].append(time.perf_counter() - t)
            med = {k: statistics.median(v) * 1000 for k, v in times.items()}
            out[resolution] = {**{f"{k}_ms": round(v, 1) for k, v in med.items()},
                               **{f"{kind}_ratio{suffix}": round(med[f"{kind}_two"] / med[f"{kind}_{base}"], 3)
                                  for kind in ("detect", "analyze")
                                  for base, suffix in (("one", ""), ("package", "_package"))}}
    finally:
        detect.LARGE_FACE_FRACTION = fraction
        detect.get_detector = get_detector
    return out


def main(argv: list[str] | None = None) -> int:
    from core.detect import DEFAULT_THRESHOLD, DETECTOR_VERSION
    from core.hardware import cpu_description

    parser = argparse.ArgumentParser(prog="python -m bench.detection", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", type=Path, action="append", default=[],
                        help="a folder of labelled face images (repeatable)")
    parser.add_argument("--photos", type=Path, help="the folder of photos counted in bench/photo_faces.json")
    parser.add_argument("--sample", type=int, default=1000, help="images per folder without a saved test split")
    parser.add_argument("--threshold", type=float, default=DEFAULT_THRESHOLD)
    parser.add_argument("--repeats", type=int, default=10, help="timed calls per benchmark photo (0: skip)")
    parser.add_argument("--passes-ab", action="store_true",
                        help="also time two passes against one and against one pass as the mtcnn package runs "
                             "it (interleaved, --repeats rounds), detection alone and end to end with the "
                             "shipped models")
    parser.add_argument("--json", type=Path, help="also write the result here")
    args = parser.parse_args(argv)

    result: dict = {"detector": DETECTOR_VERSION, "threshold": args.threshold, "machine": cpu_description()}
    for data_dir in args.data_dir:
        label, files = test_files(data_dir, args.sample)
        r = no_face_rate(files, args.threshold)
        print(f"{label}: no face on {r['no_face']} of {r['images']} images ({100 * r['no_face_rate']:.2f} %)",
              flush=True)
        result[label] = r
    if args.photos:
        r = photo_counts(args.photos, args.threshold)
        for name, row in r["per_photo"].items():
            flag = " MISSED" * bool(row["missed"]) + " EXTRA" * bool(row["extra"])
            print(f"  {name:<42} hand {row['hand_count']:>3}  found {row['found']:>3}{flag}")
        print(f"photos: {r['found']} found for {r['faces_by_hand']} counted by hand; "
              f"{r['missed']} missed, {r['extra']} extra", flush=True)
        result["photos"] = r
    if args.repeats:
        result["latency"] = latency(args.repeats, args.threshold)
        print("detection latency (warm median): "
              + ", ".join(f"{k[:-3]} {v} ms" for k, v in result["latency"].items()), flush=True)
    if args.passes_ab:
        result["passes_ab"] = passes_ab(max(1, args.repeats))
        for resolution, row in result["passes_ab"].items():
            print(f"{resolution}: detection two/one passes {row['detect_ratio']}, two/package "
                  f"{row['detect_ratio_package']} ({row['detect_package_ms']} -> {row['detect_two_ms']} ms); "
                  f"end to end two/one {row['analyze_ratio']}, two/package {row['analyze_ratio_package']} "
                  f"({row['analyze_package_ms']} -> {row['analyze_two_ms']} ms)")
    if args.json:
        args.json.write_text(json.dumps(result, indent=1) + "\n")
    summary = {k: v for k, v in result.items() if not isinstance(v, dict)}
    if "passes_ab" in result:
        summary["two_over_one_pass"] = {r: {k: v for k, v in row.items() if k.endswith("ratio")}
                                        for r, row in result["passes_ab"].items()}
    for key, value in result.items():
        if isinstance(value, dict):
            summary[key] = {k: v for k, v in value.items() if not isinstance(v, (dict, list))}
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
