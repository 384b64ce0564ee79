"""Command line: ``python -m core PHOTO|FOLDER|ZIP... [--json | --output FILE.csv|FILE.jsonl]``.

Without ``--output`` it prints a table of faces per photo (or JSON with ``--json``). With ``--output`` it
writes one row per face (CSV or JSON Lines, by the file's extension or ``--format``) with a progress bar on
stderr; photos without a face get a ``no_face`` row and unreadable files an ``error`` row, and the run goes
on. Several images go through the models per call (``--batch-size``); ``--no-flip`` skips the test-time
flipped copy for about twice the throughput at slightly lower accuracy (README, "Speed").

Exit status: 0, or 1 if any input could not be read, or 2 if the models are missing.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import sys
import zipfile
from collections.abc import Iterator
from pathlib import Path

from core.pipeline import DEFAULT_MIN_FACE_SIZE, DEFAULT_THRESHOLD

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff"}
CSV_FIELDS = ["file", "status", "face", "x", "y", "w", "h", "confidence", "age", "age_low", "age_high",
              "gender", "female_probability", "gender_reliable", "gender_note", "error"]


def iter_sources(inputs: list[str], max_member_bytes: int) -> Iterator[tuple[str, bytes | Path | Exception]]:
    """(name, bytes-or-path) for every file given, every image in a folder, every image in a zip.

    A zip member too large to read safely is yielded as an ``InvalidImage`` instead of its bytes."""
    from core.errors import InvalidImage

    for raw in inputs:
        p = Path(raw)
        if p.is_dir():
            for f in sorted(p.rglob("*")):
                if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES:
                    yield str(f), f
        elif p.suffix.lower() == ".zip" and zipfile.is_zipfile(p):
            with zipfile.ZipFile(p) as z:
                for info in sorted(z.infolist(), key=lambda i: i.filename):
                    if info.is_dir() or Path(info.filename).suffix.lower() not in IMAGE_SUFFIXES:
                        continue
                    name = f"{p}/{info.filename}"
                    if info.file_size > max_member_bytes:  # never inflate an oversized member
                        yield name, InvalidImage(f"{name} is {info.file_size / 2**20:.0f} MiB uncompressed; "
                                                 f"the limit is {max_member_bytes // 2**20} MiB.")
                    else:
                        yield name, z.read(info)
        else:
            yield str(p), p


def face_rows(name: str, result) -> list[dict]:
    from core import AgeGenderError

    if isinstance(result, AgeGenderError):
        return [{"file": name, "status": "error", "error": str(result)}]
    if not result:
        return [{"file": name, "status": "no_face"}]
    rows = []
    for i, f in enumerate(result, 1):
        d = f.as_dict()
        rows.append({"file": name, "status": "ok", "face": i, **d["box"], "confidence": d["confidence"],
                     "age": d["age"], "age_low": d["age_range"][0], "age_high": d["age_range"][1],
                     "gender": d["gender"], "female_probability": d["female_probability"],
                     "gender_reliable": d["gender_reliable"], "gender_note": d["gender_note"]})
    return rows


def format_table(name: str, faces) -> str:
    if not faces:
        return f"{name}: no face found"
    lines = [f"{name}: {len(faces)} face{'s' if len(faces) != 1 else ''}",
             f"  {'#':>2}  {'age':>5}  {'range':>11}  {'gender':<9}  {'P(fem)':>6}  {'conf':>5}  box (x, y, w, h)"]
    notes = []
    for i, f in enumerate(faces, 1):
        lo, hi = f.age_range
        x, y, w, h = (round(v) for v in f.box)
        lines.append(f"  {i:>2}  {f.age:5.1f}  {lo:5.1f}-{hi:<5.1f}  {f.gender:<9}  {f.female_probability:6.2f}"
                     f"  {f.confidence:5.3f}  ({x}, {y}, {w}, {h})")
        if f.gender_note:
            notes.append(f"  gender of face {i} uncertain: {f.gender_note}")
    return "\n".join(lines + notes)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m core", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("inputs", nargs="+", help="photos, folders of photos, or zip files of photos")
    parser.add_argument("--json", action="store_true", help="print JSON: [{file, faces: [...]}, ...]")
    parser.add_argument("--output", "-o", type=Path, help="write one row per face to this CSV / JSONL file")
    parser.add_argument("--format", choices=("csv", "jsonl"), help="default: from --output's extension")
    parser.add_argument("--batch-size", type=int, default=8, help="images per model call")
    parser.add_argument("--min-face-size", type=int, default=DEFAULT_MIN_FACE_SIZE,
                        help="smallest face side in pixels")
    parser.add_argument("--threshold", type=float, default=DEFAULT_THRESHOLD,
                        help="detection confidence threshold")
    parser.add_argument("--no-align", action="store_true", help="do not rotate faces to level the eyes")
    parser.add_argument("--no-detect", action="store_true", help="each image is already a cropped face")
    parser.add_argument("--models-dir", help="folder with age_model.h5 / gender_model.h5 (default models/)")
    parser.add_argument("--no-flip", action="store_true",
                        help="skip the test-time horizontally flipped copy: about 2x faster models, slightly "
                             "less accurate")
    args = parser.parse_args(argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

    from core import AgeGenderError, ModelNotFound
    from core.image import MAX_BYTES
    from core.pipeline import analyze_many, prepare

    try:
        models = prepare(args.models_dir, tta=False if args.no_flip else None)
    except ModelNotFound as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    sources = list(iter_sources(args.inputs, MAX_BYTES))
    results = analyze_many(sources, batch_size=max(1, args.batch_size), detect=not args.no_detect,
                           min_face_size=args.min_face_size, threshold=args.threshold,
                           align=not args.no_align, models=models)
    failed = 0
    if args.output:
        from tqdm import tqdm

        fmt = args.format or ("jsonl" if args.output.suffix.lower() in (".jsonl", ".ndjson") else "csv")
        n_faces = 0
        with args.output.open("w", newline="", encoding="utf-8") as out:
            writer = csv.DictWriter(out, fieldnames=CSV_FIELDS) if fmt == "csv" else None
            if writer:
                writer.writeheader()
            for name, result in tqdm(results, total=len(sources), unit="img", file=sys.stderr):
                failed += isinstance(result, AgeGenderError)
                for row in face_rows(name, result):
                    n_faces += row["status"] == "ok"
                    if writer:
                        writer.writerow(row)
                    else:
                        out.write(json.dumps(row) + "\n")
        print(f"{len(sources)} images, {n_faces} faces, {failed} unreadable -> {args.output}", file=sys.stderr)
        return 1 if failed else 0

    report = []
    for name, result in results:
        if isinstance(result, AgeGenderError):
            print(f"error: {name}: {result}", file=sys.stderr)
            failed += 1
            report.append({"file": name, "error": str(result)})
        elif args.json:
            report.append({"file": name, "faces": [f.as_dict() for f in result]})
        else:
            print(format_table(name, result))
    if args.json:
        print(json.dumps(report, indent=2))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
