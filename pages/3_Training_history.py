"""Training dashboard: a run in progress, how the shipped models were made, curves per run, run comparison,
test-split evaluation and beyond-UTKFace charts."""

import pandas as pd
import streamlit as st

from core.modelcard import age_curve, degradation_rows, find_runs_dir, generalisation_rows, lineage
from ui import cache, charts
from ui.campaign import show_campaign
from ui.monitor import show_monitor
from ui.view import page

#: The beyond-UTKFace table's columns in plain words.
PLAIN_COLUMNS = {"faces scored": "faces found", "age MAE": "age error (years)",
                 "bias": "average error (years; + too old)", "bias 0-19": "average error, ages 0-19",
                 "gender accuracy 20+": "gender accuracy, ages 20+"}
#: How the faces were given to the models, in words.
MODES = {"detect": "found in the photo (as in the app)", "chip": "ready-cropped by the dataset"}

page("Training history", "📈")
st.title("Training history")
info = cache.model_info()  # read once, again only when a file changes

st.header("Training now")
show_monitor(find_runs_dir(models=info.directory))
st.subheader("The backbone campaign")
show_campaign(info.directory / "campaign")

st.header("How the shipped models were made")
tasks = [t for t in ("age", "gender") if lineage(t, info.directory)]
if not tasks:
    st.info("No run records of the shipped models (`models/<task>_run.json`, written by `python -m train`).")
for tab, task in zip(st.tabs([f"{t} model" for t in tasks]), tasks):
    stages = lineage(task, info.directory)
    tab.plotly_chart(charts.lineage_figure(task, charts.lineage_frame(task, stages)), key=f"lineage-{task}")
    tab.markdown("\n".join(f"{k}. {s.summary}" for k, s in enumerate(stages, 1)))
    with tab.expander("Training settings of each stage"):
        st.markdown("\n".join(f"{k}. {s.description}" for k, s in enumerate(stages, 1)))
    curve = age_curve(info.metadata.get(task, {})) if task == "age" else None
    if curve:
        tab.plotly_chart(charts.calibration_figure(curve), key="calibration-curve")
        scores = ", ".join(f"{k} {v}" for k, v in curve.get("cross_validated_mae", {}).items())
        tab.caption(f"Fitted at export on the validation faces, where it bends chosen by cross-validated MAE "
                    f"({scores}); validation MAE {curve.get('validation_mae_before')} → "
                    f"{curve.get('validation_mae_after')} years. See docs/training.md, *Age calibration*.")

st.header("Training runs")
histories, skipped = cache.histories(info.histories)
if skipped:
    st.caption("Not shown (no finished epoch yet, or unreadable): " + ", ".join(skipped))
if not histories:
    st.info("No training history found: train a model with `python -m train` (see the README).")
else:
    chosen = st.selectbox("Run", list(histories), index=0)
    df = histories[chosen]
    best = charts.best_epoch(df)
    st.caption(f"{len(df)} epochs; best validation loss at epoch {best}."
               + (f" Training speed: {df['images_per_s'].median():.1f} images/s (median)."
                  if "images_per_s" in df.columns else ""))
    left, right = st.columns(2)
    left.plotly_chart(charts.loss_figure(df, f"Loss: {chosen}"), key="loss")
    right.plotly_chart(charts.metric_figure(df, f"Metric: {chosen}"), key="metric")

    if len(histories) > 1:
        st.subheader("Compare runs")
        picked = st.multiselect("Runs", list(histories), default=list(histories)[:3])
        if picked:
            st.plotly_chart(charts.compare_figure({n: histories[n] for n in picked}), key="compare")

st.header("Evaluation on the test split")
if not info.metrics:
    st.info("No evaluation yet: run `python -m train.evaluate` (see the README).")
else:
    a, b = st.columns(2)
    a.plotly_chart(charts.bucket_mae_figure(info.metrics), key="buckets")
    b.plotly_chart(charts.race_accuracy_figure(info.metrics), key="races")
    mode = "detect" if "detect" in info.metrics else next(iter(info.metrics))
    st.plotly_chart(charts.predicted_vs_true_figure(info.metrics[mode]), key="scatter")
    with st.expander("Raw numbers"):
        for m_name, m in info.metrics.items():
            st.write(f"**{m_name}**", {k: v for k, v in m.items() if k != "predictions"})

st.header("Beyond UTKFace")
gen = info.generalisation
if not gen:
    st.info("No evaluation beyond UTKFace yet: run `python -m train.evaluate --data-dir ... --degrade --out-dir "
            "models/generalisation` (see the README).")
    st.stop()
mode = st.radio("Faces", list(gen), index=list(gen).index("detect") if "detect" in gen else 0, horizontal=True,
                format_func=lambda m: MODES.get(m, m))
rows = generalisation_rows({mode: gen[mode]})
st.dataframe(pd.DataFrame(rows).drop(columns="mode").rename(columns=PLAIN_COLUMNS), hide_index=True)
sampled = [r for r in rows if " of " in str(r["files"])]
full = (info.metrics.get(mode) or {}).get("age_mae")
if sampled:
    st.caption(
        "Where the files column says *N of M*, the numbers are from a sample of N of the dataset's M test files "
        "(each file is also scored in every degraded copy below, which takes long)"
        + (f"; on all of UTKFace's test files the age error is {full:.2f} years (Home, and *Evaluation on the "
           "test split* above): the sample's number differs from it by chance" if full is not None else "")
        + ".")
a, b = st.columns(2)
a.plotly_chart(charts.bias_by_age_figure(gen[mode], mode), key="bias")
metric = b.selectbox("Change against the clean files", list(charts.DELTA_LABELS), format_func=charts.DELTA_LABELS.get)
b.plotly_chart(charts.degradation_figure(gen[mode], mode, metric), key="degradation")
with st.expander("Degraded copies: every number"):
    st.dataframe(pd.DataFrame(degradation_rows({mode: gen[mode]})), hide_index=True)
