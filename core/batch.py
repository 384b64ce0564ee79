"""Batch analysis shared by both engines of ``python -m core batch``: inputs, rows, output files, the local engine.

Inputs are listed without being read (:func:`list_sources`: image files, folders, zip files, text files of
paths, and URIs that pyarrow's file systems open, such as ``s3://``); each is read where it is analysed
(:func:`read_source`), so that a Ray worker on another node reads its own files. Every image gives rows of
the one format (:data:`core.results.ROW_FIELDS`): one per face, or one ``no_face`` / ``error`` row, so that a
bad file never stops a run.
"""

from __future__ import annotations

import csv
import io
import json
import os
import sys
import time
import zipfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

from core.detect import DEFAULT_MIN_FACE_SIZE, DEFAULT_THRESHOLD
from core.errors import AgeGenderError, ImageTooLarge, InvalidImage
from core.image import MAX_BYTES, SUPPORTED_SUFFIXES, ImageInput
from core.pipeline import analyze_many, prepare
from core.results import ROW_FIELDS, FaceResult, csv_value, image_rows

IMAGE_SUFFIXES = {f".{suffix}" for suffix in SUPPORTED_SUFFIXES}
#: A text file of paths or URIs, one per line (blank lines and lines starting with ``#`` skipped).
LIST_SUFFIXES = {".txt", ".lst"}
CSV_FIELDS = ROW_FIELDS
#: The Arrow type of each row field (Parquet output): a field a row lacks is null.
_ARROW_TYPES = {"file": "string", "status": "string", "face": "int64", "x": "int64", "y": "int64", "w": "int64",
                "h": "int64", "confidence": "float64", "age": "float64", "age_low": "float64",
                "age_high": "float64", "gender": "string", "female_probability": "float64",
                "gender_reliable": "bool", "gender_note": "string", "cut_by_frame": "bool", "error": "string"}
FIELD_TYPES = {name: _ARROW_TYPES[name] for name in ROW_FIELDS}
FORMATS = ("parquet", "csv", "jsonl")
#: Rows per Parquet file written by the local engine.
PARQUET_ROWS_PER_FILE = 1_000_000


class BatchError(AgeGenderError, ValueError):
    """A batch run cannot start: an input cannot be listed, or the output cannot be written (one line)."""


@dataclass(frozen=True)
class Settings:
    """How each image is analysed (the options of ``python -m core``); the same on every worker."""

    detect: bool = True
    min_face_size: int = DEFAULT_MIN_FACE_SIZE
    threshold: float = DEFAULT_THRESHOLD
    align: bool = True
    models_dir: str | None = None
    tta: bool | None = None  # False: without the test-time flipped copy


@dataclass(frozen=True)
class Source:
    """One image to analyse: ``name`` as the rows show it; ``location`` an absolute path or a URI that any
    worker can open; ``member`` the image's name inside the zip file at ``location``, if any."""

    name: str
    location: str
    member: str = ""


def is_uri(path: str) -> bool:
    return "://" in path


def _uri_filesystem(uri: str) -> tuple[Any, str]:
    import pyarrow.fs as pafs

    try:
        return pafs.FileSystem.from_uri(uri)
    except (ValueError, OSError) as exc:
        raise BatchError(f"cannot open {uri}: {exc}") from None


def list_sources(inputs: Iterable[str], *, lists: bool = True) -> list[Source]:
    """Every image of ``inputs``, none read yet: files as given, images in folders and zip files (sorted),
    the paths listed in ``.txt``/``.lst`` files (relative ones from the list's folder) where ``lists``.
    A path that does not exist stays in the list: reading it gives its ``error`` row."""
    out: list[Source] = []
    for raw in inputs:
        out.extend(_uri_sources(raw, lists) if is_uri(raw) else _local_sources(raw, lists))
    return out


def _local_sources(raw: str, lists: bool) -> list[Source]:
    p = Path(raw)
    if p.is_dir():
        return [Source(str(f), os.path.abspath(f)) for f in sorted(p.rglob("*"))
                if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES]
    if p.suffix.lower() == ".zip" and zipfile.is_zipfile(p):
        with zipfile.ZipFile(p) as z:
            return _zip_sources(str(p), os.path.abspath(p), z)
    if lists and p.suffix.lower() in LIST_SUFFIXES and p.is_file():
        return _listed(p.read_text(encoding="utf-8", errors="replace"), lambda line: str(p.parent / line))
    return [Source(str(p), os.path.abspath(p))]


def _uri_sources(uri: str, lists: bool) -> list[Source]:
    import pyarrow.fs as pafs

    fs, path = _uri_filesystem(uri)
    try:
        info = fs.get_file_info(path)
        if info.type == pafs.FileType.Directory:
            found = fs.get_file_info(pafs.FileSelector(path, recursive=True))
            inside = [uri.rstrip("/") + f.path[len(path.rstrip("/")):] for f in sorted(found, key=lambda f: f.path)
                      if f.type == pafs.FileType.File and Path(f.path).suffix.lower() in IMAGE_SUFFIXES]
            return [Source(u, u) for u in inside]  # the folder's URI and each file's path below it
        suffix = Path(path).suffix.lower()
        if info.type == pafs.FileType.File and suffix == ".zip":
            with fs.open_input_file(path) as raw, zipfile.ZipFile(raw) as z:
                return _zip_sources(uri, uri, z)
        if info.type == pafs.FileType.File and lists and suffix in LIST_SUFFIXES:
            with fs.open_input_stream(path) as f:
                text = f.read().decode("utf-8", errors="replace")
            return _listed(text, lambda line: f"{uri.rsplit('/', 1)[0]}/{line}")
    except (OSError, zipfile.BadZipFile) as exc:
        raise BatchError(f"cannot list {uri}: {exc}") from None
    return [Source(uri, uri)]


def _zip_sources(name: str, location: str, z: zipfile.ZipFile) -> list[Source]:
    return [Source(f"{name}/{info.filename}", location, info.filename)
            for info in sorted(z.infolist(), key=lambda i: i.filename)
            if not info.is_dir() and Path(info.filename).suffix.lower() in IMAGE_SUFFIXES]


def _listed(text: str, relative) -> list[Source]:
    lines = [ln.strip() for ln in text.splitlines()]
    paths = [ln if is_uri(ln) or os.path.isabs(ln) else relative(ln) for ln in lines if ln and not ln.startswith("#")]
    return list_sources(paths, lists=False)


@lru_cache(maxsize=8)
def _open_zip(location: str) -> zipfile.ZipFile:
    """A zip file kept open for the next members (a worker reads many members of one archive)."""
    if is_uri(location):
        fs, path = _uri_filesystem(location)
        return zipfile.ZipFile(fs.open_input_file(path))
    return zipfile.ZipFile(location)


def read_source(source: Source, max_bytes: int = MAX_BYTES) -> bytes | Path:
    """The bytes (a zip member, a URI) or the local path of ``source``; :class:`InvalidImage` where it cannot
    be read (missing, too large: a zip member is never inflated beyond ``max_bytes``)."""
    name = source.name
    try:
        if source.member:
            info = _open_zip(source.location).getinfo(source.member)
            if info.file_size > max_bytes:
                raise ImageTooLarge(f"{name} is {info.file_size / 2**20:.0f} MiB uncompressed; "
                                   f"the limit is {max_bytes // 2**20} MiB.")
            return _open_zip(source.location).read(info)
        if is_uri(source.location):
            import pyarrow.fs as pafs

            fs, path = _uri_filesystem(source.location)
            info = fs.get_file_info(path)
            if info.type != pafs.FileType.File:
                raise InvalidImage(f"{name} does not exist or is not a file. Check the path.")
            if info.size > max_bytes:
                raise ImageTooLarge(f"{name} is {info.size / 2**20:.0f} MiB; the limit is {max_bytes // 2**20} MiB.")
            with fs.open_input_stream(path) as f:
                return f.read()
        if not Path(source.location).is_file():
            raise InvalidImage(f"{name} does not exist or is not a file. Check the path.")
        return Path(source.location)
    except (OSError, KeyError, zipfile.BadZipFile, BatchError) as exc:
        raise InvalidImage(f"{name} cannot be read ({exc}).") from None


def read_sources(sources: Iterable[Source]) -> Iterator[tuple[str, ImageInput | AgeGenderError]]:
    """``(name, bytes-or-path)`` for each source, read one at a time, or ``(name, error)``."""
    for source in sources:
        try:
            yield source.name, read_source(source)
        except AgeGenderError as exc:
            yield source.name, exc


def face_rows(name: str, result: list[FaceResult] | AgeGenderError) -> list[dict[str, Any]]:
    """One image's rows (:func:`core.results.image_rows`): one per face, or one ``no_face`` or ``error`` row."""
    return image_rows(name, result)


def plain_row(row: dict[str, Any]) -> dict[str, Any]:
    """A row with every field (nulls where it has none, as Arrow gives it) as :func:`face_rows` makes it."""
    if row["status"] == "ok":
        keys = [k for k in ROW_FIELDS if k != "error"]
    else:
        keys = ["file", "status"] + (["error"] if row.get("error") else [])
    return {k: row.get(k) for k in keys}


def row_schema():
    """The rows as an Arrow schema (:data:`FIELD_TYPES`)."""
    import pyarrow as pa

    return pa.schema([(name, pa.type_for_alias(kind)) for name, kind in FIELD_TYPES.items()])


def output_format(output: str, fmt: str | None) -> str:
    """``fmt``, else from ``output``'s name: ``.csv``, ``.jsonl``/``.ndjson``, anything else a Parquet folder."""
    if fmt:
        return fmt
    suffix = Path(output).suffix.lower()
    return "csv" if suffix == ".csv" else "jsonl" if suffix in (".jsonl", ".ndjson") else "parquet"


def check_output(output: str, fmt: str) -> None:
    """Refuse an output that cannot be written before any work starts; a Parquet folder must be new or empty
    (files of an earlier run would mix with this one's)."""
    if is_uri(output):
        import pyarrow.fs as pafs

        fs, path = _uri_filesystem(output)
        info = fs.get_file_info(path)
        if fmt == "parquet" and info.type == pafs.FileType.Directory and fs.get_file_info(pafs.FileSelector(path)):
            raise BatchError(f"{output} already holds files: give a new or empty folder for the Parquet output.")
        return
    p = Path(output)
    if fmt == "parquet":
        if p.is_file() or (p.is_dir() and any(p.iterdir())):
            raise BatchError(f"{output} already exists and is not an empty folder: give a new or empty folder "
                             "for the Parquet output (or an output name ending in .csv or .jsonl).")
    elif p.is_dir():
        raise BatchError(f"{output} is a folder: give a file name ending in .{fmt}.")
    elif not p.parent.is_dir():
        raise BatchError(f"folder {p.parent} does not exist: create it first.")


@dataclass
class RowWriter:
    """Rows to ``output`` in ``fmt``: one CSV or JSON Lines file, or a folder of Parquet files (local or URI)."""

    output: str
    fmt: str
    _text: Any = field(default=None, repr=False)
    _csv: Any = field(default=None, repr=False)
    _parquet: list[dict[str, Any]] = field(default_factory=list, repr=False)
    _parts: int = 0

    def __post_init__(self) -> None:
        if self.fmt == "parquet":
            return
        self._text = (io.StringIO() if is_uri(self.output)  # uploaded by close()
                      else open(self.output, "w", newline="", encoding="utf-8"))  # noqa: SIM115 - closed by close()
        if self.fmt == "csv":
            self._csv = csv.DictWriter(self._text, fieldnames=CSV_FIELDS, lineterminator="\n")
            self._csv.writeheader()

    def write(self, rows: Iterable[dict[str, Any]]) -> None:
        for row in rows:
            if self.fmt == "parquet":
                self._parquet.append(row)
            elif self._csv:
                self._csv.writerow({k: csv_value(v) for k, v in plain_row(row).items()})
            else:
                self._text.write(json.dumps(plain_row(row)) + "\n")
        if len(self._parquet) >= PARQUET_ROWS_PER_FILE:
            self._flush_parquet()

    def _flush_parquet(self) -> None:
        import pyarrow as pa
        import pyarrow.parquet as pq

        if not self._parquet and self._parts:
            return
        fs, path = _uri_filesystem(self.output) if is_uri(self.output) else (None, self.output)
        if fs is None:
            Path(path).mkdir(parents=True, exist_ok=True)
        else:
            fs.create_dir(path)
        pq.write_table(pa.Table.from_pylist(self._parquet, schema=row_schema()),
                       f"{path}/part-{self._parts:05d}.parquet", filesystem=fs)
        self._parts += 1
        self._parquet.clear()

    def close(self) -> None:
        if self.fmt == "parquet":
            self._flush_parquet()
        elif is_uri(self.output):
            fs, path = _uri_filesystem(self.output)
            with fs.open_output_stream(path) as out:
                out.write(self._text.getvalue().encode("utf-8"))
        else:
            self._text.close()


@dataclass
class Summary:
    """What a batch run did: images, faces, images without a face, unreadable images, seconds."""

    images: int = 0
    faces: int = 0
    no_face: int = 0
    errors: int = 0
    seconds: float = 0.0

    def add(self, rows: Iterable[dict[str, Any]]) -> None:
        """Count one or more images' rows (an image's first row: its face 1, or its no_face / error row)."""
        for row in rows:
            status = row["status"]
            self.images += status != "ok" or row.get("face") == 1
            self.faces += status == "ok"
            self.no_face += status == "no_face"
            self.errors += status == "error"

    def line(self, output: str) -> str:
        rate = self.images / self.seconds if self.seconds > 0 else 0.0
        return (f"{self.images} images, {self.faces} faces, {self.no_face} without a face, {self.errors} unreadable "
                f"in {self.seconds:.1f} s ({rate:.2f} images/s) -> {output}")


def write_results(results: Iterable[tuple[str, list[FaceResult] | AgeGenderError]], total: int,
                  writer: RowWriter) -> Summary:
    """Each image's rows to ``writer``, with a progress bar on stderr; the counts and the time taken."""
    from tqdm import tqdm

    summary, start = Summary(), time.perf_counter()
    for name, result in tqdm(results, total=total, unit="img", file=sys.stderr):
        rows = face_rows(name, result)
        writer.write(rows)
        summary.add(rows)
    writer.close()
    summary.seconds = time.perf_counter() - start
    return summary


def run_local(sources: list[Source], settings: Settings, writer: RowWriter, *, batch_size: int = 8) -> Summary:
    """The local engine: every source through :func:`core.pipeline.analyze_many` in this process, in order;
    the time counted from before the models load (as the Ray engine's actors load theirs)."""
    start = time.perf_counter()
    models = prepare(settings.models_dir, tta=settings.tta)
    results = analyze_many(read_sources(sources), batch_size=max(1, batch_size), detect=settings.detect,
                           min_face_size=settings.min_face_size, threshold=settings.threshold,
                           align=settings.align, models=models)
    summary = write_results(results, len(sources), writer)
    summary.seconds = time.perf_counter() - start
    return summary
