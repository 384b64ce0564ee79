"""Command line: ``python -m core PHOTO|FOLDER|ZIP... [--json | --output FILE.csv|FILE.jsonl]``, and
``python -m core batch INPUT... --output FILE_OR_DIR [--engine local|ray]`` for large runs.

Without ``--output`` it prints a table of faces per photo (or JSON with ``--json``). With ``--output`` it
writes one row per face (CSV or JSON Lines, by the file's extension or ``--format``) with a progress bar on
stderr; photos without a face get a ``no_face`` row and unreadable files an ``error`` row, and the run goes
on. Several images go through the models per call (``--batch-size``); ``--no-flip`` skips the test-time
flipped copy for about twice the throughput at slightly lower accuracy (docs/speed.md).

``batch`` (``python -m core batch --help``) takes folders, zip files, text files of paths and URIs that
pyarrow opens (``s3://``...), writes the same rows as Parquet (a folder) or CSV / JSON Lines, and runs them
here (``--engine local``) or on Ray (``--engine ray``: a local instance, or a cluster with ``--address``).

Exit status: 0, or 1 if any input could not be read, or 2 if the models are missing or the command is wrong.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Iterator
from pathlib import Path

from core.batch import (
    CSV_FIELDS,
    FORMATS,
    IMAGE_SUFFIXES,
    BatchError,
    RowWriter,
    Settings,
    check_output,
    face_rows,
    list_sources,
    output_format,
    read_source,
    run_local,
    write_results,
)
from core.errors import AgeGenderError, ModelNotFound
from core.lite import VERBOSE_ENV
from core.modelfiles import require_models
from core.pipeline import DEFAULT_MIN_FACE_SIZE, DEFAULT_THRESHOLD
from core.results import FaceResult, image_dict

__all__ = ["CSV_FIELDS", "face_rows", "format_table", "iter_sources", "main"]


def iter_sources(inputs: list[str], max_member_bytes: int) -> Iterator[tuple[str, bytes | Path | Exception]]:
    """(name, bytes-or-path) for every file given, every image in a folder, every image in a zip.

    A file that cannot be read (a zip member too large to read safely among them) is yielded as an
    ``InvalidImage`` instead."""
    for source in list_sources(inputs, lists=False):
        try:
            yield source.name, read_source(source, max_member_bytes)
        except AgeGenderError as exc:
            yield source.name, exc


def format_table(name: str, faces: list[FaceResult]) -> str:
    """One image's faces as a table, under the output contract's names (README, "Output")."""
    if not faces:
        return f"{name}: no face found"
    lines = [f"{name}: {len(faces)} face{'s' if len(faces) != 1 else ''}",
             f"  {'face':>4}  {'age':>5}  {'age range':>11}  {'gender':<10}  {'female probability':>18}  "
             f"{'detection confidence':>20}  box (x, y, w, h)"]
    notes = []
    for i, f in enumerate(faces, 1):
        d = f.as_dict()
        lo, hi = d["age_range"]
        box = d["box"]
        lines.append(f"  {i:>4}  {d['age']:5.1f}  {f'{lo:.1f}-{hi:.1f}':>11}  {d['gender']:<10}  "
                     f"{d['female_probability']:18.2f}  {d['confidence']:20.2f}  "
                     f"({box['x']}, {box['y']}, {box['w']}, {box['h']})")
        if f.gender_note:
            notes.append(f"  gender of face {i} uncertain: {f.gender_note}")
        if f.cut_by_frame:
            notes.append(f"  face {i} is cut by the frame: its age and gender rest on part of the face")
    return "\n".join(lines + notes)


def add_analysis_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of how each image is analysed, shared by both command forms."""
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
    parser.add_argument("--verbose", action="store_true",
                        help="keep TensorFlow's and LiteRT's own messages on stderr (hidden by default)")


def quiet_unless_verbose(args: argparse.Namespace) -> None:
    """Hide TensorFlow's and LiteRT's start-up chatter (:func:`core.lite.allocate_quietly`) unless --verbose."""
    if args.verbose:
        os.environ[VERBOSE_ENV] = "1"
    else:
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


#: The detector's option ranges, as the HTTP API accepts them.
MIN_FACE_SIZE_RANGE = (8, 4096)


def check_analysis_arguments(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Refuse option values that make no sense, with one line and exit status 2 (argparse's ``error``)."""
    lo, hi = MIN_FACE_SIZE_RANGE
    if not lo <= args.min_face_size <= hi:
        parser.error(f"--min-face-size must be between {lo} and {hi} pixels, got {args.min_face_size}")
    if not 0.0 <= args.threshold <= 1.0:
        parser.error(f"--threshold is a confidence between 0 and 1, got {args.threshold}")
    if args.batch_size < 1:
        parser.error(f"--batch-size must be at least 1, got {args.batch_size}")


def settings_of(args: argparse.Namespace) -> Settings:
    return Settings(detect=not args.no_detect, min_face_size=args.min_face_size, threshold=args.threshold,
                    align=not args.no_align, models_dir=args.models_dir, tta=False if args.no_flip else None)


def batch_main(argv: list[str]) -> int:
    """``python -m core batch``: rows of many images to Parquet / CSV / JSON Lines, here or on Ray."""
    parser = argparse.ArgumentParser(
        prog="python -m core batch", description="One row per face of every image, to Parquet (a folder), CSV or "
        "JSON Lines; unreadable files and photos without a face get an error / no_face row and the run goes on.")
    parser.add_argument("inputs", nargs="+", metavar="INPUT",
                        help="images, folders, zip files, .txt/.lst files of paths, or URIs (s3://, gs://, ...)")
    parser.add_argument("--output", "-o", required=True,
                        help="a new folder for Parquet files, or a .csv / .jsonl file (small runs)")
    parser.add_argument("--format", choices=FORMATS, help="default: from --output (.csv, .jsonl, else parquet)")
    parser.add_argument("--engine", choices=("local", "ray"), default="local",
                        help="local: this process (default); ray: a Ray instance or cluster")
    parser.add_argument("--address", help="join the Ray cluster at this address (auto, HOST:PORT, ray://HOST:10001); "
                                          "default: start a local Ray instance")
    parser.add_argument("--concurrency", type=int,
                        help="model actors (ray; each loads both models): default one per 2 CPUs of the cluster")
    parser.add_argument("--batch-size", type=int, default=8,
                        help="images per model call (local) or faces per model call (ray)")
    add_analysis_arguments(parser)
    args = parser.parse_args(argv)
    check_analysis_arguments(parser, args)
    if args.engine == "local" and (args.address or args.concurrency):
        parser.error("--address and --concurrency need --engine ray")
    if args.batch_size < 1 or (args.concurrency is not None and args.concurrency < 1):
        parser.error("--batch-size and --concurrency must be at least 1")
    quiet_unless_verbose(args)

    fmt = output_format(args.output, args.format)
    settings = settings_of(args)
    try:
        require_models(args.models_dir)
        check_output(args.output, fmt)
        sources = list_sources(args.inputs)
        if not sources:
            raise BatchError(f"no image found in {', '.join(args.inputs)} "
                             f"(images end in {', '.join(sorted(IMAGE_SUFFIXES))}).")
        if args.engine == "ray":
            from core import engine_ray  # imports Ray: only this engine needs it

            summary = engine_ray.run(sources, settings, args.output, fmt, address=args.address,
                                     concurrency=args.concurrency, batch_size=args.batch_size)
        else:
            summary = run_local(sources, settings, RowWriter(args.output, fmt), batch_size=args.batch_size)
    except (ModelNotFound, BatchError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(summary.line(args.output), file=sys.stderr)
    return 1 if summary.errors else 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["batch"]:  # a folder named batch: ./batch
        return batch_main(argv[1:])
    parser = argparse.ArgumentParser(prog="python -m core", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("inputs", nargs="+", help="photos, folders of photos, or zip files of photos")
    parser.add_argument("--json", action="store_true",
                        help="print JSON: a list of {file, status, faces: [...]}, one per image")
    parser.add_argument("--output", "-o", type=Path, help="write one row per face to this CSV / JSONL file")
    parser.add_argument("--format", choices=("csv", "jsonl"), help="default: from --output's extension")
    parser.add_argument("--batch-size", type=int, default=8, help="images per model call")
    add_analysis_arguments(parser)
    args = parser.parse_args(argv)
    check_analysis_arguments(parser, args)
    fmt = None
    if args.output:
        if args.json:
            parser.error("--json prints to the screen; with --output the file's extension (or --format) decides")
        fmt = args.format or {".csv": "csv", ".jsonl": "jsonl", ".ndjson": "jsonl"}.get(args.output.suffix.lower())
        if fmt is None:
            parser.error(f"--output {args.output}: give a file ending in .csv or .jsonl (or --format csv|jsonl)")
    quiet_unless_verbose(args)

    from core.image import MAX_BYTES
    from core.pipeline import analyze_many, prepare

    try:
        if args.output:
            check_output(str(args.output), fmt)
        if not list_sources(args.inputs, lists=False):
            raise BatchError(f"no image found in {', '.join(args.inputs)} "
                             f"(images end in {', '.join(sorted(IMAGE_SUFFIXES))}).")
        models = prepare(args.models_dir, tta=False if args.no_flip else None)
    except (ModelNotFound, BatchError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    sources = list(iter_sources(args.inputs, MAX_BYTES))
    results = analyze_many(sources, batch_size=args.batch_size, detect=not args.no_detect,
                           min_face_size=args.min_face_size, threshold=args.threshold,
                           align=not args.no_align, models=models)
    failed = 0
    if args.output:
        summary = write_results(results, len(sources), RowWriter(str(args.output), fmt))
        print(summary.line(str(args.output)), file=sys.stderr)
        return 1 if summary.errors else 0

    report = []
    for name, result in results:
        if isinstance(result, AgeGenderError):
            message = str(result)  # names the file, unless the reason has nothing to do with it
            print(f"error: {message if name in message else f'{name}: {message}'}", file=sys.stderr)
            failed += 1
        if args.json:
            report.append(image_dict(name, result))
        elif not isinstance(result, AgeGenderError):
            print(format_table(name, result))
    if args.json:
        print(json.dumps(report, indent=2))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
