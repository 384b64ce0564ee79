"""Detection recall and false positives: what ``core.detect.detect_faces`` finds, with the app's settings.

    python -m bench.detection --data-dir ../shared/data/utkface --data-dir ../shared/data/aaf \\
        --photos ../shared/data/photos [--json out.json]

- **No-face rate** on each folder's test split (``train/splits/<dataset>/test.txt`` when it exists, else a
  seeded sample of ``--sample`` images): every image there holds one clear face, so each "no face" is a miss.
- **Photos** against the hand count in ``bench/photo_faces.json``: faces found, missed (found < count) and
  extra (found > count: a false positive, except on photos marked ``crowd`` where unlisted background
  faces are real).
- **Faces cut by the frame** (``--border``, needs ``--photos``): every labelled face of the photos and the
  astronaut cut so that 90, 75, 60 or 45 % of its box stays inside, at each border and corner, at sizes 20-90 %
  of the frame, and crowded composites of such faces (``bench/border_faces.py``, where the labels come from):
  recall per visible share, border or corner and size, false positives, boxes outside the image.
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


def border(folder: Path, threshold: float, *, faces: int | None = None, composites: int = 40) -> dict:
    """The border-face benchmark (``bench/border_faces.py``): every cut of the labelled faces (``faces``:
    every n-th face only, for a quick run) and ``composites`` crowded frames, scored separately."""
    from bench import border_faces
    from core.detect import detect_faces

    def detect(rgb):
        return detect_faces(rgb, threshold=threshold)

    images, labelled = border_faces.sources(folder, detect)
    if faces:
        labelled = labelled[::max(1, len(labelled) // faces)]
    started = time.perf_counter()
    cuts = border_faces.evaluate(border_faces.cut_cases(images, labelled), detect)
    cuts["seconds"] = round(time.perf_counter() - started, 1)
    crowded = border_faces.evaluate((border_faces.composite(images, labelled, seed) for seed in range(composites)),
                                    detect)
    return {"faces": len(labelled), "cuts": cuts, "composites": crowded}


def print_border(r: dict) -> None:
    """The recall tables of :func:`border`: visible share by border/corner, visible share by size."""
    from bench.border_faces import SIZES, VISIBLE, WHERE

    cuts = r["cuts"]["recall"]
    print(f"faces cut by the frame: {r['faces']} faces, {r['cuts']['images']} images, "
          f"{r['cuts']['false_positives']} false positives, {r['cuts']['boxes_outside']} boxes outside the image")
    levels = [f"{v:.0%}" for v in VISIBLE]

    def cell(key: str) -> str:
        row = cuts.get(key) or r["composites"]["recall"].get(key)
        return f"{100 * row['recall']:.1f}" if row else "-"

    print(f"{'visible':<14}" + "".join(f"{w:>13}" for w in ("all", *WHERE)))
    for level in levels:
        print(f"{level:<14}" + "".join(f"{cell(k):>13}" for k in
                                       (f"visible {level}", *(f"visible {level} {w}" for w in WHERE))))
    print(f"{'visible':<14}" + "".join(f"{f'size {s:.0%}':>13}" for s in SIZES))
    for level in levels:
        print(f"{level:<14}" + "".join(f"{cell(f'visible {level} size {s:.0%}'):>13}" for s in SIZES))
    comp = r["composites"]
    recall = ", ".join(f"{k.removeprefix('visible ')} {v['found']}/{v['faces']}" for k, v in comp["recall"].items()
                       if k.count(" ") == 1)
    print(f"composites: {comp['images']} images, {recall}; {comp['false_positives']} false positives, "
          f"{comp['boxes_outside']} boxes outside the image", flush=True)


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


def passes_ab(repeats: int, names: tuple[str, ...] = ("package", "one", "two", "three")) -> dict:
    """What the passes cost, interleaved in this process on the benchmark photos: warm medians of
    ``detect_faces`` alone and of ``core.analyze`` end to end (the shipped models) for the variants ``names`` of

    - ``package``: one pass, run as the ``mtcnn`` package runs it (its stages in TensorFlow, its networks as
      ``tf.function``s: :class:`core.detect.PackageStages`, what ``AGEGENDER_LITERT=0`` runs);
    - ``one``: one pass with today's detector (the large-face and border passes switched off);
    - ``two``: the first two passes (the border pass switched off: the detector before it);
    - ``three``: today's detector;

    and the ratios two/one, two/package and three/two (what the border pass costs)."""
    import numpy as np
    from PIL import Image

    import core
    from bench.inputs import photo
    from core import detect
    from core.models import load_models

    models = load_models()
    ours = detect.get_detector()
    package = detect.PackageStages() if "package" in names else None
    get_detector, fraction, side = detect.get_detector, detect.LARGE_FACE_FRACTION, detect.BORDER_PASS_SIDE
    # An infinite "large" face: the second pass never runs; a border pass of 0 px: the third never runs.
    every = {"package": (float("inf"), 0, package), "one": (float("inf"), 0, ours), "two": (fraction, 0, ours),
             "three": (fraction, side, ours)}
    variants = {n: every[n] for n in names}
    ratios = [(a, b) for a, b in (("two", "one"), ("two", "package"), ("three", "two")) if a in names and b in names]
    out = {}
    try:
        for resolution in ("240p", "720p", "1080p"):
            data = photo(resolution, 1)
            rgb = np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))
            times: dict[str, list[float]] = {f"{k}_{n}": [] for k in ("detect", "analyze") for n in variants}
            for rep in range(repeats + 1):
                for name, (value, border, detector) in variants.items():
                    detect.LARGE_FACE_FRACTION, detect.BORDER_PASS_SIDE = value, border
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
                               **{f"{kind}_ratio_{a}_{b}": round(med[f"{kind}_{a}"] / med[f"{kind}_{b}"], 3)
                                  for kind in ("detect", "analyze") for a, b in ratios}}
    finally:
        detect.LARGE_FACE_FRACTION, detect.BORDER_PASS_SIDE = fraction, side
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
                        help="also time one, two and three passes and one pass as the mtcnn package runs it "
                             "(interleaved, --repeats rounds), detection alone and end to end with the "
                             "shipped models")
    parser.add_argument("--border-ab", action="store_true",
                        help="as --passes-ab, only the detector with and without its border pass")
    parser.add_argument("--border", action="store_true",
                        help="faces cut by the frame, built from the --photos and the astronaut")
    parser.add_argument("--border-faces", type=int, metavar="N",
                        help="with --border: about N of the labelled faces only (a quick run)")
    parser.add_argument("--composites", type=int, default=40, help="with --border: crowded frames to build")
    parser.add_argument("--without-border-pass", action="store_true",
                        help="measure the detector without its border pass (as it was before it), to compare")
    parser.add_argument("--json", type=Path, help="also write the result here")
    args = parser.parse_args(argv)

    result: dict = {"detector": DETECTOR_VERSION, "threshold": args.threshold, "machine": cpu_description()}
    if args.without_border_pass:
        from core import detect

        detect.BORDER_PASS_SIDE = 0
        result["border_pass"] = False
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
    if args.border:
        if not args.photos:
            parser.error("--border needs --photos")
        result["border"] = border(args.photos, args.threshold, faces=args.border_faces, composites=args.composites)
        print_border(result["border"])
    if args.repeats:
        result["latency"] = latency(args.repeats, args.threshold)
        print("detection latency (warm median): "
              + ", ".join(f"{k[:-3]} {v} ms" for k, v in result["latency"].items()), flush=True)
    if args.passes_ab or args.border_ab:
        names = ("two", "three") if args.border_ab and not args.passes_ab else ("package", "one", "two", "three")
        result["passes_ab"] = passes_ab(max(1, args.repeats), names)
        for resolution, row in result["passes_ab"].items():
            parts = []
            for key, value in row.items():
                if "_ratio_" in key:
                    kind, _, new, old = key.split("_")
                    before, after = row[f"{kind}_{old}_ms"], row[f"{kind}_{new}_ms"]
                    parts.append(f"{kind} {new}/{old} {value} ({before} -> {after} ms)")
            print(f"{resolution}: " + "; ".join(parts), flush=True)
    if args.json:
        args.json.write_text(json.dumps(result, indent=1) + "\n")
    summary = {k: v for k, v in result.items() if not isinstance(v, dict)}
    if "passes_ab" in result:
        summary["pass_ratios"] = {r: {k: v for k, v in row.items() if "_ratio_" in k}
                                  for r, row in result["passes_ab"].items()}
    for key, value in result.items():
        if isinstance(value, dict):
            summary[key] = {k: v for k, v in value.items() if not isinstance(v, (dict, list))}
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
