"""Plotly figures for the training-history dashboard (pure functions: data in, figure out)."""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import pandas as pd
import plotly.colors
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from core.modelcard import Stage, apply_age_curve

#: (training column, validation column, title) for the metric chart of each kind of history.
METRIC_COLUMNS = {
    "age": ("mae", "val_mae", "Age MAE (years)"),
    "gender": ("accuracy", "val_accuracy", "Gender accuracy"),
    "multitask": ("age_mae", "val_age_mae", "Age MAE (years)"),
}


def read_history(path: str | Path) -> pd.DataFrame:
    df = pd.read_csv(path)
    df["epoch"] = df["epoch"].astype(int) + 1  # 1-based for people
    return df


def read_histories(paths: dict[str, Path]) -> tuple[dict[str, pd.DataFrame], list[str]]:
    """The readable histories by name, and the names of those without an epoch to show (an empty file left by
    a run stopped during its first epoch, a damaged file)."""
    good, skipped = {}, []
    for name, path in paths.items():
        try:
            df = read_history(path)
        except (OSError, ValueError, KeyError):  # pandas' EmptyDataError and ParserError are ValueErrors
            skipped.append(name)
            continue
        (good.__setitem__(name, df) if len(df) else skipped.append(name))
    return good, skipped


def history_kind(df: pd.DataFrame) -> str:
    if "val_age_mae" in df.columns:
        return "multitask"
    return "age" if "val_mae" in df.columns else "gender"


def best_epoch(df: pd.DataFrame) -> int | None:
    if "val_loss" not in df.columns or df["val_loss"].isna().all():
        return None
    return int(df.loc[df["val_loss"].idxmin(), "epoch"])


def _mark_best(fig: go.Figure, df: pd.DataFrame) -> None:
    best = best_epoch(df)
    if best is not None:
        fig.add_vline(x=best, line_dash="dot", line_color="green",
                      annotation_text=f"best epoch {best}", annotation_position="top left")


def _mark_stages(fig: go.Figure, df: pd.DataFrame) -> None:
    """A line where each later training stage starts (a model trained further from an earlier export)."""
    if "stage" not in df.columns:
        return
    starts = df.groupby("stage")["epoch"].min().sort_index()
    for stage, epoch in list(starts.items())[1:]:
        fig.add_vline(x=epoch - 0.5, line_dash="dash", line_color="gray",
                      annotation_text=f"stage {int(stage)}", annotation_position="bottom right")


def _mark(fig: go.Figure, df: pd.DataFrame) -> None:
    _mark_stages(fig, df)
    _mark_best(fig, df)


def loss_figure(df: pd.DataFrame, title: str) -> go.Figure:
    fig = go.Figure()
    for col, name in (("loss", "training loss"), ("val_loss", "validation loss")):
        if col in df.columns:
            fig.add_trace(go.Scatter(x=df["epoch"], y=df[col], mode="lines+markers", name=name))
    _mark(fig, df)
    fig.update_layout(title=title, xaxis_title="epoch", yaxis_title="loss", hovermode="x unified",
                      margin={"t": 50, "b": 40})
    return fig


def metric_figure(df: pd.DataFrame, title: str) -> go.Figure:
    train_col, val_col, label = METRIC_COLUMNS[history_kind(df)]
    fig = go.Figure()
    for col, name in ((train_col, "training"), (val_col, "validation")):
        if col in df.columns:
            fig.add_trace(go.Scatter(x=df["epoch"], y=df[col], mode="lines+markers", name=name))
    if history_kind(df) == "multitask" and "val_gender_accuracy" in df.columns:
        fig.add_trace(go.Scatter(x=df["epoch"], y=df["val_gender_accuracy"], name="validation gender accuracy",
                                 mode="lines+markers", yaxis="y2"))
        fig.update_layout(yaxis2={"title": "gender accuracy", "overlaying": "y", "side": "right"})
    _mark(fig, df)
    fig.update_layout(title=title, xaxis_title="epoch", yaxis_title=label, hovermode="x unified",
                      margin={"t": 50, "b": 40})
    return fig


#: What the comparison chart puts on one axis: (title, {history kind: validation column}), one subplot each.
#: Age MAE and gender accuracy mean the same for a single-task model and the multitask model's head; the
#: losses differ between kinds (a multitask loss is a weighted sum, a single-task one includes no other head),
#: so each kind's loss gets its own subplot.
COMPARABLE = (
    ("validation age MAE (years)", {"age": "val_mae", "multitask": "val_age_mae"}),
    ("validation gender accuracy", {"gender": "val_accuracy", "multitask": "val_gender_accuracy"}),
    ("validation loss: age models (mean squared error)", {"age": "val_loss"}),
    ("validation loss: gender models (cross-entropy)", {"gender": "val_loss"}),
    ("validation loss: multitask (weighted sum of the heads)", {"multitask": "val_loss"}),
)


def compare_figure(histories: dict[str, pd.DataFrame]) -> go.Figure:
    """Validation metrics of several runs, one subplot (and y axis) per kind of metric (:data:`COMPARABLE`):
    numbers of different kinds never share an axis."""
    panels = []
    for title, columns in COMPARABLE:
        lines = {name: (df, columns[history_kind(df)]) for name, df in histories.items()
                 if columns.get(history_kind(df)) in df.columns}
        if lines:
            panels.append((title, lines))
    if not panels:
        return go.Figure().update_layout(title="No validation metrics to compare")
    fig = make_subplots(rows=len(panels), cols=1, subplot_titles=[t for t, _ in panels], vertical_spacing=0.08)
    palette = dict(zip(histories, itertools.cycle(plotly.colors.qualitative.Plotly)))
    shown: set[str] = set()
    for row, (_, lines) in enumerate(panels, 1):
        for name, (df, col) in lines.items():
            fig.add_trace(go.Scatter(x=df["epoch"], y=df[col], mode="lines+markers", name=name, legendgroup=name,
                                     showlegend=name not in shown, line={"color": palette[name]}), row=row, col=1)
            shown.add(name)
        fig.update_xaxes(title_text="epoch", row=row, col=1)
    fig.update_layout(title="Compare runs: one chart per kind of metric", height=260 * len(panels) + 80,
                      margin={"t": 70, "b": 40})
    return fig


#: The model's own metric along its lineage: task -> history kind -> (training column, validation column).
LINEAGE_METRIC = {
    "age": ({"multitask": ("age_mae", "val_age_mae"), "age": ("mae", "val_mae")}, "age MAE (years)"),
    "gender": ({"multitask": ("gender_accuracy", "val_gender_accuracy"), "gender": ("accuracy", "val_accuracy")},
               "gender accuracy"),
}


def lineage_frame(task: str, stages: list[Stage]) -> pd.DataFrame:
    """One row per epoch along a shipped model's lineage (:func:`core.modelcard.lineage`): ``epoch`` counted
    from the first stage on, ``stage`` (its title), ``description``, ``input_size``, and the model's metric (``train``,
    ``val``), from the backbone's head for the same task in the backbone's epochs."""
    columns, _ = LINEAGE_METRIC[task]
    parts, offset = [], 0
    for st in stages:
        if st.history is None or st.kind not in columns:
            continue
        df = read_history(st.history)
        if st.stage is not None and "stage" in df.columns:
            df = df[df["stage"] == st.stage]
        train_col, val_col = columns[st.kind]
        part = pd.DataFrame({"epoch": range(offset + 1, offset + len(df) + 1), "stage": st.title,
                             "description": st.description,
                             "input_size": df["input_size"].to_numpy() if "input_size" in df.columns else None,
                             "train": df[train_col].to_numpy() if train_col in df.columns else None,
                             "val": df[val_col].to_numpy() if val_col in df.columns else None})
        parts.append(part)
        offset += len(df)
    return pd.concat(parts, ignore_index=True) if parts else pd.DataFrame(
        columns=["epoch", "stage", "description", "input_size", "train", "val"])


def lineage_figure(task: str, frame: pd.DataFrame) -> go.Figure:
    """The model's metric over its whole making, one shaded band per stage (backbone, fine-tune, ...) and a
    dotted line where the input size changes."""
    _, label = LINEAGE_METRIC[task]
    fig = go.Figure()
    for col, name in (("train", "training"), ("val", "validation")):
        if frame[col].notna().any():
            fig.add_trace(go.Scatter(x=frame["epoch"], y=frame[col], mode="lines+markers", name=name,
                                     customdata=frame[["stage", "input_size"]].to_numpy(),
                                     hovertemplate="epoch %{x} (%{customdata[0]}, %{customdata[1]} px): %{y:.3f}"))
    shades = ("rgba(59, 111, 216, 0.08)", "rgba(216, 140, 59, 0.10)", "rgba(80, 170, 90, 0.10)")
    for k, (stage, rows) in enumerate(frame.groupby("stage", sort=False)):
        fig.add_vrect(x0=rows["epoch"].min() - 0.5, x1=rows["epoch"].max() + 0.5, fillcolor=shades[k % len(shades)],
                      line_width=0, annotation_text=f"{stage}: {len(rows)} epoch{'s' if len(rows) != 1 else ''}",
                      annotation_position="top left")
    sizes = frame["input_size"]
    for i in range(1, len(frame)):
        if pd.notna(sizes.iloc[i]) and pd.notna(sizes.iloc[i - 1]) and sizes.iloc[i] != sizes.iloc[i - 1]:
            fig.add_vline(x=frame["epoch"].iloc[i] - 0.5, line_dash="dot", line_color="gray",
                          annotation_text=f"{int(sizes.iloc[i - 1])} → {int(sizes.iloc[i])} px",
                          annotation_position="bottom right")
    fig.update_layout(title=f"The shipped {task} model, from the first epoch to export: {label}",
                      xaxis_title="epoch (all stages)", yaxis_title=label, hovermode="x unified",
                      margin={"t": 50, "b": 40})
    return fig


def calibration_figure(curve: dict) -> go.Figure:
    """The age model's calibration curve (:func:`core.modelcard.age_curve`) as the years it adds to the age its
    head gives (after the calibration line), knots marked: close to the identity, the change is what shows."""
    ages = np.linspace(0.0, 90.0, 181)
    reported = apply_age_curve(ages, curve["coefficients"], curve["knots"])
    fig = go.Figure()
    fig.add_hline(y=0.0, line_dash="dot", line_color="gray")
    fig.add_trace(go.Scatter(x=ages, y=reported - ages, mode="lines", name="reported - head",
                             customdata=reported, hovertemplate="head %{x:.1f} → reported %{customdata:.1f} years"))
    for knot in curve["knots"]:
        fig.add_vline(x=knot, line_dash="dot", line_color="lightgray", annotation_text=f"{knot:g}",
                      annotation_position="top")
    fig.update_layout(title="Age calibration curve: years it adds to the head's age (after the line)",
                      xaxis_title="age from the head (years)", yaxis_title="reported - head (years)",
                      margin={"t": 50, "b": 40}, height=340, showlegend=False)
    return fig


def _grouped_bars(metrics: dict[str, dict], group: str, value: str) -> go.Figure:
    """One bar per group (age bucket / race) and evaluation mode (chip / detect), ``n`` as the label."""
    fig = go.Figure()
    for mode, m in metrics.items():
        groups = m[group]
        fig.add_trace(go.Bar(x=list(groups), y=[g[value] for g in groups.values()], name=mode,
                             text=[f"n={g['n']}" for g in groups.values()]))
    fig.update_layout(barmode="group", margin={"t": 50, "b": 40})
    return fig


def bucket_mae_figure(metrics: dict[str, dict]) -> go.Figure:
    """Age MAE per age bucket, one bar group per evaluation mode (chip / detect)."""
    fig = _grouped_bars(metrics, "per_age_bucket", "age_mae")
    fig.update_layout(title="Age MAE per age bucket (test split)", xaxis_title="true age", yaxis_title="MAE (years)")
    return fig


def race_accuracy_figure(metrics: dict[str, dict]) -> go.Figure:
    fig = _grouped_bars(metrics, "per_race", "gender_accuracy")
    fig.update_layout(title="Gender accuracy per race (UTKFace labels, test split)", yaxis_title="accuracy",
                      yaxis_range=[0.5, 1.0])
    return fig


def predicted_vs_true_figure(metrics: dict) -> go.Figure:
    preds = pd.DataFrame(metrics.get("predictions", []))
    fig = go.Figure()
    if not preds.empty:
        fig.add_trace(go.Scattergl(x=preds["age"], y=preds["pred_age"], mode="markers", name="faces",
                                   marker={"size": 4, "opacity": 0.4}, text=preds["file"]))
        top = float(max(preds["age"].max(), preds["pred_age"].max()))
        fig.add_trace(go.Scatter(x=[0, top], y=[0, top], mode="lines", name="perfect",
                                 line={"dash": "dash", "color": "gray"}))
    fig.update_layout(title=f"Predicted vs true age ({metrics.get('mode', '')} mode, test split)",
                      xaxis_title="true age", yaxis_title="predicted age", margin={"t": 50, "b": 40})
    return fig


#: The changes against the clean files that the degradation chart can show.
DELTA_LABELS = {"age_mae": "age MAE (years)", "age_bias": "age bias (years)", "gender_accuracy": "gender accuracy",
                "no_face": "images without a face"}
_DASH = {"ours": "solid", "peer": "dash"}


def bias_by_age_figure(datasets: dict[str, dict[str, dict]], mode: str) -> go.Figure:
    """Mean signed age error (predicted - true) per age bucket on each dataset's clean test files, one line per
    dataset and model. ``datasets``: dataset -> model -> the evaluation file of one mode
    (``ModelInfo.generalisation[mode]``)."""
    fig = go.Figure()
    for dataset, models in datasets.items():
        for model, data in models.items():
            groups = data["conditions"]["clean"]["per_age_bucket"]
            fig.add_trace(go.Scatter(x=list(groups), y=[g.get("age_bias") for g in groups.values()],
                                     mode="lines+markers", name=f"{dataset}, {model}",
                                     line={"dash": _DASH.get(model, "dot")},
                                     text=[f"n={g['n']}" for g in groups.values()],
                                     hovertemplate="%{x}: %{y:+.2f} years (%{text})"))
    fig.add_hline(y=0, line_color="gray")
    fig.update_layout(title=f"Age bias per age bucket ({mode} mode, clean test files)", xaxis_title="true age",
                      yaxis_title="mean of predicted - true age (years)", margin={"t": 50, "b": 40})
    return fig


def degradation_figure(datasets: dict[str, dict[str, dict]], mode: str, metric: str = "age_mae") -> go.Figure:
    """Change of ``metric`` (a key of :data:`DELTA_LABELS`) against the clean files for each degradation, one
    bar per dataset and model."""
    fig = go.Figure()
    for dataset, models in datasets.items():
        for model, data in models.items():
            degraded = {name: m for name, m in data["conditions"].items() if name != "clean" and m.get("delta")}
            if degraded:
                fig.add_trace(go.Bar(x=list(degraded), y=[m["delta"].get(metric) for m in degraded.values()],
                                     name=f"{dataset}, {model}",
                                     marker_pattern_shape="/" if model == "peer" else ""))
    if not fig.data:
        fig.add_annotation(text="no degraded runs saved (--degrade)", showarrow=False, x=0.5, y=0.5,
                           xref="paper", yref="paper")
    fig.add_hline(y=0, line_color="gray")
    fig.update_layout(barmode="group", title=f"Change against the clean files: {DELTA_LABELS[metric]} ({mode} mode)",
                      xaxis_title="degradation", yaxis_title=f"change of {DELTA_LABELS[metric]}",
                      yaxis_tickformat="+.1%" if metric == "gender_accuracy" else "+", margin={"t": 50, "b": 40})
    return fig


#: The campaign's validation columns, per kind: (column prefix, axis title).
CAMPAIGN_PANELS = (("val_age_mae_", "validation age MAE (years)"),
                   ("val_gender_acc_", "validation gender accuracy"),
                   ("val_age_slope_", "age slope (1 = no pull to the middle)"))


def campaign_figure(history: pd.DataFrame, log: pd.DataFrame | None = None) -> go.Figure:
    """The backbone campaign's validation curves against images seen, one subplot per kind of metric and a
    line per dataset, with a dashed line where each later stretch (another machine, or a restart) began."""
    panels = [(prefix, title, [c for c in history.columns if c.startswith(prefix)])
              for prefix, title in CAMPAIGN_PANELS]
    panels = [p for p in panels if p[2]]
    if history.empty or not panels:
        return go.Figure().update_layout(title="No campaign validation yet")
    fig = make_subplots(rows=len(panels), cols=1, subplot_titles=[t for _, t, _ in panels], shared_xaxes=True,
                        vertical_spacing=0.07)
    datasets = sorted({c.rsplit("_", 1)[1] for _, _, cols in panels for c in cols})
    palette = dict(zip(datasets, itertools.cycle(plotly.colors.qualitative.Plotly)))
    shown: set[str] = set()
    for row, (prefix, _, cols) in enumerate(panels, 1):
        for col in cols:
            name = col[len(prefix):]
            fig.add_trace(go.Scatter(x=history["images_seen"], y=history[col], mode="lines+markers", name=name,
                                     legendgroup=name, showlegend=name not in shown,
                                     line={"color": palette[name]}), row=row, col=1)
            shown.add(name)
    if log is not None and len(log) > 1:
        for _, stretch in log.iloc[1:].iterrows():
            fig.add_vline(x=stretch["images_at_start"], line_dash="dash", line_color="gray")
    fig.update_xaxes(title_text="images seen", row=len(panels), col=1)
    fig.update_layout(title="Backbone campaign: validation per dataset (at the input size of the time, no flip)",
                      height=240 * len(panels) + 90, margin={"t": 70, "b": 40}, hovermode="x unified")
    return fig
