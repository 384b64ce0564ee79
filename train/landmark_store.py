"""The landmarks store, ``train/splits/<dataset>/landmarks.npz``: read, write, look up and compute entries.

MTCNN landmarks of the largest face on each image of a dataset, as the app detects them, keyed by file name
and size, with a header naming the detector version; the file's format and the command that refreshes it
are described in :mod:`train.landmarks`. :func:`train.data.chip_landmarks` reads the store first and
computes only what is missing; a store made by another detector version is ignored (:func:`read_current`).
"""

from __future__ import annotations

import datetime as dt
import json
import os
import time
import warnings
from pathlib import Path

import numpy as np

from core import detect
from core.image import load_image

STORE_NAME = "landmarks.npz"
FORMAT = 1

#: name -> (file size in bytes, (5, 2) float32 landmarks, NaN where no face was found)
Table = dict[str, tuple[int, np.ndarray]]


def detector_header() -> dict:
    """What the landmarks depend on: the detector version and its settings."""
    try:
        from importlib.metadata import version

        mtcnn = version("mtcnn")
    except Exception:  # noqa: BLE001 - informative only
        mtcnn = None
    return {"detector": detect.DETECTOR_VERSION, "mtcnn": mtcnn,
            "settings": {"min_face_size": detect.DEFAULT_MIN_FACE_SIZE, "threshold": detect.DEFAULT_THRESHOLD,
                         "max_side": detect.DETECT_MAX_SIDE, "face": "largest"}}


def read_landmarks(path: Path) -> tuple[Table, dict] | None:
    """The stored table and header, or ``None`` when there is no file."""
    path = Path(path)
    if not path.is_file():
        return None
    with np.load(path, allow_pickle=False) as f:
        names, sizes, marks = f["names"], f["sizes"], f["landmarks"]
        header = json.loads(str(f["header"]))
    table = {str(n): (int(s), m.astype(np.float32)) for n, s, m in zip(names, sizes, marks)}
    return table, header


def is_current(header: dict) -> bool:
    """True when the header names the detector version in use now."""
    return header.get("format") == FORMAT and header.get("detector") == detect.DETECTOR_VERSION


def read_current(path: Path, *, warn: bool = True) -> Table:
    """The stored table when it was made by the current detector version; empty (with a warning when ``warn``)
    when the file is stale, empty when there is no file."""
    stored = read_landmarks(path)
    if stored is None:
        return {}
    table, header = stored
    if not is_current(header):
        if warn:
            warnings.warn(f"{path} was made by detector {header.get('detector')!r}, not the current "
                          f"{detect.DETECTOR_VERSION!r}: ignored, landmarks are recomputed. Refresh it with "
                          "python -m train.landmarks --data-dir DIR", RuntimeWarning, stacklevel=3)
        return {}
    return table


def write_landmarks(path: Path, table: Table, *, dataset: str) -> dict:
    """Write ``table`` (atomically) with a header for the current detector; return the header."""
    path = Path(path)
    names = sorted(table)
    marks = (np.stack([table[n][1] for n in names]).astype(np.float32) if names
             else np.zeros((0, 5, 2), np.float32))
    found = ~np.isnan(marks).any(axis=(1, 2))
    header = {"format": FORMAT, **detector_header(), "dataset": dataset,
              "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
              "n": len(names), "n_face": int(found.sum())}
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp.npz")
    np.savez_compressed(tmp, names=np.array(names, dtype=str), sizes=np.array([table[n][0] for n in names], np.int64),
                        landmarks=marks, header=np.array(json.dumps(header)))
    os.replace(tmp, path)
    return header


def detect_landmarks(path: Path) -> np.ndarray:
    """Landmarks of the largest face the app's detector finds in one image file, (5, 2) float32; NaN if none."""
    faces = detect.detect_faces(load_image(path))
    return faces[0].landmark_array().astype(np.float32) if faces else np.full((5, 2), np.nan, np.float32)


def compute(data_dir: Path, names: list[str], *, progress: int = 0, label: str = "landmarks",
            checkpoint=None, checkpoint_every: int = 1000) -> Table:
    """Detect each named image of ``data_dir`` in turn. ``progress``: print a line every N images (0: never).
    ``checkpoint(table)`` is called every ``checkpoint_every`` images with what is done so far."""
    table: Table = {}
    started = time.perf_counter()
    for i, name in enumerate(names, 1):
        path = Path(data_dir) / name
        table[name] = (path.stat().st_size, detect_landmarks(path))
        if progress and (i % progress == 0 or i == len(names)):
            rate = i / max(time.perf_counter() - started, 1e-9)
            print(f"{label}: {i}/{len(names)} ({rate:.1f} img/s, {(len(names) - i) / rate / 60:.1f} min left)",
                  flush=True)
        if checkpoint is not None and i % checkpoint_every == 0 and i < len(names):
            checkpoint(table)
    return table


def lookup(table: Table, data_dir: Path, names: list[str], out: np.ndarray, found: np.ndarray) -> None:
    """Fill ``out[i]`` from ``table`` for each name not yet ``found`` whose stored file size matches."""
    for i, name in enumerate(names):
        if found[i] or name not in table:
            continue
        size, marks = table[name]
        if size == (Path(data_dir) / name).stat().st_size:
            out[i], found[i] = marks, True
