"""Command line: ``python -m core PHOTO_OR_FOLDER... [--json]``.

Prints a table of faces per photo (or JSON with ``--json``). A file that cannot be read gets one line on
stderr and the run goes on; the exit status is 1 if any input failed, 2 if the models are missing.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff"}


def expand(paths: list[str]) -> list[Path]:
    """Files as given; folders become their image files, sorted."""
    out: list[Path] = []
    for raw in paths:
        p = Path(raw)
        if p.is_dir():
            out.extend(sorted(f for f in p.rglob("*") if f.suffix.lower() in IMAGE_SUFFIXES and f.is_file()))
        else:
            out.append(p)
    return out


def format_table(name: str, faces) -> str:
    if not faces:
        return f"{name}: no face found"
    lines = [f"{name}: {len(faces)} face{'s' if len(faces) != 1 else ''}",
             f"  {'#':>2}  {'age':>5}  {'range':>11}  {'gender':<6}  {'p':>5}  {'conf':>5}  box (x, y, w, h)"]
    for i, f in enumerate(faces, 1):
        lo, hi = f.age_range
        x, y, w, h = (round(v) for v in f.box)
        lines.append(f"  {i:>2}  {f.age:5.1f}  {lo:5.1f}-{hi:<5.1f}  {f.gender:<6}  {f.gender_probability:5.2f}"
                     f"  {f.confidence:5.3f}  ({x}, {y}, {w}, {h})")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m core", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("inputs", nargs="+", help="photos or folders of photos")
    parser.add_argument("--json", action="store_true", help="print JSON: [{file, faces: [...]}, ...]")
    parser.add_argument("--min-face-size", type=int, default=20, help="smallest face side in pixels")
    parser.add_argument("--threshold", type=float, default=0.9, help="detection confidence threshold")
    parser.add_argument("--no-align", action="store_true", help="do not rotate faces to level the eyes")
    parser.add_argument("--no-detect", action="store_true", help="each image is already a cropped face")
    parser.add_argument("--models-dir", help="folder with age_model.h5 / gender_model.h5 (default models/)")
    args = parser.parse_args(argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

    from core import AgeGenderError, InvalidImage, ModelNotFound, analyze
    from core.models import load_models

    try:
        models = load_models(args.models_dir)
    except ModelNotFound as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    failed = 0
    report = []
    for path in expand(args.inputs):
        try:
            faces = analyze(path, detect=not args.no_detect, min_face_size=args.min_face_size,
                            threshold=args.threshold, align=not args.no_align, models=models)
        except (InvalidImage, AgeGenderError) as exc:
            print(f"error: {path}: {exc}", file=sys.stderr)
            failed += 1
            report.append({"file": str(path), "error": str(exc)})
            continue
        if args.json:
            report.append({"file": str(path), "faces": [f.as_dict() for f in faces]})
        else:
            print(format_table(str(path), faces))
    if args.json:
        print(json.dumps(report, indent=2))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
