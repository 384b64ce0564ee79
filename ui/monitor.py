"""Live training monitor: follows ``runs/<name>/progress.json`` and ``history.csv`` while ``python -m train`` runs.

``python -m train`` writes ``progress.json`` (:class:`train.callbacks.ProgressFile`: epoch, batch, images/s,
elapsed, estimated time left, phase and input size, and ``state`` ``finished`` at the end) every few seconds,
and one row of ``history.csv`` per epoch. The monitor re-reads both every :data:`REFRESH_S` seconds in a
Streamlit fragment, so only that part of the page reruns. The runs folder is ``runs/`` beside the models, or
``$AGEGENDER_RUNS_DIR`` (:func:`core.modelcard.find_runs_dir`).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import streamlit as st

from ui import charts

#: Seconds between two refreshes of the monitor while a run is in progress.
REFRESH_S = 5
#: A run still "running" whose progress file is older than this may have stopped (killed, crashed, machine down).
STALE_S = 180
PROGRESS_FILE = "progress.json"


@dataclass(frozen=True)
class RunProgress:
    """One run's progress file as last written."""

    name: str
    folder: Path
    progress: dict[str, Any]
    age_s: float  # seconds since the file was written

    @property
    def state(self) -> str:
        """``running``, ``finished``, or ``silent`` (running, but no update for :data:`STALE_S`)."""
        state = self.progress.get("state", "running")
        return "silent" if state == "running" and self.age_s > STALE_S else state

    @property
    def fraction(self) -> float | None:
        """Share of this invocation's epochs done (the current one counted by its batches)."""
        p = self.progress
        if self.state == "finished":
            return 1.0
        if not p.get("epochs") or not p.get("epoch"):
            return None
        within = p["batch"] / p["batches"] if p.get("batches") else 0.0
        return min(1.0, max(0.0, (p["epoch"] - 1 + within) / p["epochs"]))


def read_progress(folder: Path) -> RunProgress | None:
    """The progress of the run in ``folder``, or ``None`` without a readable progress file."""
    path = Path(folder) / PROGRESS_FILE
    try:
        progress = json.loads(path.read_text())
        age = time.time() - path.stat().st_mtime
    except (OSError, ValueError):
        return None
    return RunProgress(Path(folder).name, Path(folder), progress, age) if isinstance(progress, dict) else None


def find_runs(runs: Path) -> list[RunProgress]:
    """Every run in ``runs`` with a progress file: those running first, then the most recently written."""
    folders = sorted(d for d in Path(runs).iterdir() if d.is_dir()) if Path(runs).is_dir() else []
    found = [r for folder in folders if (r := read_progress(folder))]
    return sorted(found, key=lambda r: (r.state != "running", r.age_s))


def duration(seconds: float | None) -> str:
    """``1 h 05 min``, ``3 min 20 s``, ``12 s``; ``n/a`` for ``None``."""
    if seconds is None:
        return "n/a"
    s = int(round(seconds))
    if s >= 3600:
        return f"{s // 3600} h {s % 3600 // 60:02d} min"
    return f"{s // 60} min {s % 60:02d} s" if s >= 60 else f"{s} s"


def status_text(run: RunProgress) -> str:
    """Where the run is, in one line."""
    p = run.progress
    where = f"phase {p.get('phase', '?')} at {p.get('input_size', '?')} px"
    if run.state == "finished":
        return f"finished {duration(run.age_s)} ago ({where}); the exported model follows the run's last step."
    if run.state == "silent":
        return (f"no update for {duration(run.age_s)}: the run may have stopped (its process "
                f"{p.get('pid', '?')}); `python -m train ... --resume` continues it.")
    step = p.get("step", "training")
    batches = f" batch {p.get('batch', 0)} of {p['batches']}" if p.get("batches") and step == "training" else ""
    return f"{step}{batches}, {p.get('unit', 'epoch')} {p.get('epoch', '?')} of {p.get('epochs', '?')}, {where}"


def show_run(run: RunProgress) -> None:
    """The numbers, the progress bar and the run's curves so far."""
    p = run.progress
    c1, c2, c3, c4 = st.columns(4)
    c1.metric(p.get("unit", "epoch").capitalize(), f"{p.get('epoch', '?')} / {p.get('epochs', '?')}")
    rate = p.get("images_per_s")
    c2.metric("Images/s", "n/a" if rate is None else f"{rate:.1f}")
    c3.metric("Elapsed", duration(p.get("elapsed_s")))
    c4.metric("Time left", "done" if run.state == "finished" else duration(p.get("eta_s")),
              help="the batches left at this epoch's speed, plus validation as in the last epoch; a later phase at "
                   "a larger input size is slower, and early stopping may end the run sooner")
    fraction = run.fraction
    if fraction is not None:
        st.progress(fraction, text=status_text(run))
    else:
        st.caption(status_text(run))
    history, _ = charts.read_histories({run.name: run.folder / "history.csv"})
    if run.name in history:
        df = history[run.name]
        left, right = st.columns(2)
        left.plotly_chart(charts.loss_figure(df, f"Loss: {run.name}"), key=f"live-loss-{run.name}")
        right.plotly_chart(charts.metric_figure(df, f"Metric: {run.name}"), key=f"live-metric-{run.name}")
    else:
        st.caption("The curves appear after the first epoch (history.csv).")


def _shown_path(path: Path) -> str:
    """``path`` as the user would type it: relative to the folder the app was started in where it lies inside."""
    try:
        return str(Path(path).resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)


def show_monitor(runs: Path) -> None:
    """The monitor section: pick a run with a progress file; it refreshes itself while any run is running."""
    found = find_runs(runs)
    if not found:
        where = f"{_shown_path(runs)}/<name>/{PROGRESS_FILE}"
        st.caption(f"No training run in progress: `python -m train` writes `{where}` while it runs, and this "
                   "section then follows it.")
        return
    states = {r.name: r.state for r in found}
    name = st.selectbox("Run", list(states), format_func=lambda n: f"{n} ({states[n]})", key="monitor-run")
    live = any(s == "running" for s in states.values())

    @st.fragment(run_every=REFRESH_S if live else None)
    def follow() -> None:
        run = read_progress(Path(runs) / name)
        if run is None:
            st.warning(f"{name}: the progress file is gone.")
            return
        show_run(run)
        if live:
            st.caption(f"Refreshes every {REFRESH_S} s; last written {duration(run.age_s)} ago.")

    follow()
