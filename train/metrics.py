"""Validation numbers per dataset, under the names Keras gives its metrics: what the training history's
``val_<metric>_<dataset>`` columns and the exported metadata's ``validation.per_dataset`` hold."""

from __future__ import annotations

import numpy as np


def dataset_metrics(task: str, pred, y) -> dict[str, float]:
    """Age MAE and gender accuracy of predictions, under the names Keras gives them (``mae``, ``accuracy``;
    ``age_mae``, ``gender_accuracy`` for multitask), over the faces that have the label (-1: none); a
    metric without any labelled face is left out."""
    def mae(p, t):
        p, t = np.ravel(p), np.ravel(t)
        known = t >= 0  # -1: no label (LFW's ages)
        return float(np.mean(np.abs(p[known] - t[known]))) if known.any() else None

    def accuracy(p, t):
        p, t = np.ravel(p), np.ravel(t)
        known = t >= 0
        return float(np.mean((p[known] >= 0.5) == (t[known] >= 0.5))) if known.any() else None

    if task == "age":
        out = {"mae": mae(pred, y)}
    elif task == "gender":
        out = {"accuracy": accuracy(pred, y)}
    else:
        out = {"age_mae": mae(pred["age"], y["age"]), "gender_accuracy": accuracy(pred["gender"], y["gender"])}
    return {k: v for k, v in out.items() if v is not None}


def validation_by_dataset(task: str, pred: np.ndarray, y: np.ndarray, samples) -> dict | None:
    """{dataset: {metric: value, "n": count}} for samples of two or more datasets; ``None`` for one."""
    of = np.array([s.dataset for s in samples])
    names = sorted({s.dataset for s in samples})
    if len(names) < 2:
        return None
    return {name: {**{k: round(v, 4) for k, v in dataset_metrics(task, pred[of == name], y[of == name]).items()},
                   "n": int((of == name).sum())} for name in names}
