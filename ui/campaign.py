"""The backbone campaign on the dashboard: where it stands, one row per stretch, and its validation curves.

Reads the committed files of ``models/campaign/`` (:mod:`train.campaign_state` writes them): ``plan.json``,
``state.json``, ``log.csv`` and ``history.csv``. Nothing here imports TensorFlow or the training code.
"""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import streamlit as st

from ui import charts

#: What the log's columns are called on the page (others are shown as they are).
LOG_COLUMNS = {"stretch": "stretch", "cpu": "CPU", "policy": "precision", "images_at_start": "from images",
               "images_at_end": "to images", "images_per_s": "images/s", "train_hours": "hours",
               "input_size": "px"}
#: How the validation columns (``val_<metric>_<dataset>``) read on the page.
METRIC_WORDS = {"age_mae": "age error (years)", "age_slope": "age slope", "gender_acc": "gender accuracy"}
DATASET_NAMES = {"utkface": "UTKFace", "aaf": "AAF", "lfw": "LFW"}


def plain_column(column: str) -> str:
    """``val_age_mae_utkface`` -> ``UTKFace age error (years)``; other columns as :data:`LOG_COLUMNS` says."""
    if column in LOG_COLUMNS:
        return LOG_COLUMNS[column]
    for metric, words in METRIC_WORDS.items():
        if column.startswith(f"val_{metric}_"):
            dataset = column[len(f"val_{metric}_"):]
            return f"{DATASET_NAMES.get(dataset, dataset)} {words}"
    return column


def read_campaign(folder: Path) -> tuple[dict, dict, pd.DataFrame, pd.DataFrame] | None:
    """(plan, state, log, history) of the campaign in ``folder``; ``None`` where none was started."""
    try:
        plan = json.loads((folder / "plan.json").read_text())
        state = json.loads((folder / "state.json").read_text())
    except (OSError, ValueError):
        return None

    def table(name: str) -> pd.DataFrame:
        try:
            return pd.read_csv(folder / name)
        except (OSError, ValueError):
            return pd.DataFrame()

    return plan, state, table("log.csv"), table("history.csv")


def show_campaign(folder: Path) -> None:
    found = read_campaign(Path(folder))
    if found is None:
        st.caption("No backbone campaign in this models folder: `python -m train campaign --data-dir ...` "
                   "starts one (README, *Training*).")
        return
    plan, state, log, history = found
    total = sum(images for _, images in plan["stages"])
    seen = state.get("images_seen", 0)
    st.progress(min(1.0, seen / total),
                text=f"{seen:,} of {total:,} images seen ({100 * seen / total:.1f} %) in "
                     f"{state.get('stretches', 0)} stretch(es); `python -m train campaign` continues it")
    if not log.empty:
        shown = log[[c for c in LOG_COLUMNS if c in log.columns]
                    + [c for c in log.columns if c.startswith("val_")]].rename(columns=plain_column)
        st.dataframe(shown, hide_index=True)
    if not history.empty:
        st.plotly_chart(charts.campaign_figure(history, log), key="campaign")
