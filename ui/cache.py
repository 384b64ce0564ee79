"""What the dashboard reads, kept across reruns and visits until one of its files changes: the models folder's
metadata, metrics and histories (:func:`model_info`) and the history tables (:func:`histories`). Each is keyed by
the files' sizes and modification times, so a new training epoch or a new evaluation shows at the next rerun.
(The charts are not cached: making them again costs less than Streamlit's copy of a cached figure.)"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import pandas as pd
import streamlit as st

from core.modelcard import ModelInfo, find_runs_dir, load_model_info
from core.modelfiles import models_dir
from ui import charts


def _stamp(paths: Iterable[Path]) -> tuple[tuple[str, int, int], ...]:
    """(path, size, modification time) of each file that exists: what a cached answer depends on."""
    out = []
    for path in paths:
        try:
            st_ = path.stat()
        except OSError:
            continue
        out.append((str(path), st_.st_size, st_.st_mtime_ns))
    return tuple(sorted(out))


def _files(folder: Path, patterns: Iterable[str]) -> list[Path]:
    return [p for pattern in patterns for p in folder.glob(pattern)] if folder.is_dir() else []


@st.cache_data(show_spinner=False, max_entries=8)
def _model_info(directory: str, runs: str, stamp: tuple) -> ModelInfo:
    return load_model_info(directory, runs)


def model_info() -> ModelInfo:
    """:func:`core.modelcard.load_model_info` of the app's models folder, cached until a file it reads changes
    (the folder's JSON and CSV files, ``generalisation/``, the runs' histories)."""
    directory = models_dir()
    runs = find_runs_dir(models=directory)
    files = (_files(directory, ("*.json", "*.csv", "generalisation/*.json"))
             + _files(runs, ("*/history.csv",)) + [runs])
    return _model_info(str(directory), str(runs), stamp=_stamp(files))


@st.cache_data(show_spinner=False, max_entries=16)
def _histories(paths: tuple[tuple[str, str], ...], stamp: tuple) -> tuple[dict[str, pd.DataFrame], list[str]]:
    return charts.read_histories({name: Path(path) for name, path in paths})


def histories(paths: dict[str, Path]) -> tuple[dict[str, pd.DataFrame], list[str]]:
    """:func:`ui.charts.read_histories`, cached until one of the files changes."""
    return _histories(tuple((name, str(path)) for name, path in paths.items()), stamp=_stamp(paths.values()))
