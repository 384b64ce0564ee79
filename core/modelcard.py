"""What is known about the shipped models: metadata, test metrics and training histories, from ``models/``."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from core.modelfiles import MODEL_FILES, models_dir

METRIC_FILES = {"chip": "metrics_test_chip.json", "detect": "metrics_test_detect.json"}
#: Folder (in ``models/``) of the ``<dataset>_<model>_<mode>.json`` files of ``python -m train.evaluate --out-dir``.
GENERALISATION_DIR = "generalisation"
#: The evaluated models (the ``model`` field of those files), in display order.
MODEL_ORDER = ("ours", "peer")

#: Environment variable naming the folder of local training runs (``runs/<name>/``); default ``runs/`` next to
#: the models folder, where ``python -m train`` writes them.
RUNS_ENV = "AGEGENDER_RUNS_DIR"

#: mode ("chip"/"detect") -> dataset -> model ("ours"/"peer") -> the file's contents
Generalisation = dict[str, dict[str, dict[str, dict[str, Any]]]]


#: Display names of the dataset folders the loader knows (others are shown by their folder name).
DATASET_NAMES = {"utkface": "UTKFace", "aaf": "All-Age-Faces"}


def training_datasets(provenance: dict[str, Any]) -> str:
    """The datasets a model learned from, for people ("UTKFace + All-Age-Faces"), from its metadata's
    ``provenance``: the run's per-dataset record, else its single ``data_dir``; "UTKFace" when neither is there."""
    run = provenance.get("run") or {}
    names = list(run.get("datasets") or {}) or [Path(d).name for d in run.get("data_dirs") or []]
    if not names and run.get("data_dir"):
        names = [Path(run["data_dir"]).name]
    names = sorted(names, key=lambda n: (n != "utkface", n)) or ["utkface"]
    return " + ".join(DATASET_NAMES.get(n, n) for n in names)


@dataclass
class ModelInfo:
    directory: Path
    metadata: dict[str, dict[str, Any]] = field(default_factory=dict)  # task -> metadata
    metrics: dict[str, dict[str, Any]] = field(default_factory=dict)  # "chip"/"detect" -> metrics
    histories: dict[str, Path] = field(default_factory=dict)  # run name -> history CSV
    generalisation: Generalisation = field(default_factory=dict)  # beyond UTKFace: test splits, degradations

    @property
    def available(self) -> bool:
        return all((self.directory / f).is_file() for f in MODEL_FILES.values())


def hinge_basis(ages, knots) -> np.ndarray:
    """Columns 1, age, max(age - k, 0) for each knot k: any continuous piecewise-linear map of ages bending at
    the knots is a linear combination of them (the age model's calibration curve, :mod:`train.calibrate`)."""
    ages = np.asarray(ages, np.float64)
    return np.c_[np.ones_like(ages), ages, np.maximum(ages[:, None] - np.asarray(knots, np.float64)[None, :], 0.0)]


def apply_age_curve(ages, coefficients, knots) -> np.ndarray:
    """The calibration curve with ``coefficients`` on :func:`hinge_basis` (``knots``) at ``ages``."""
    return hinge_basis(ages, knots) @ np.asarray(coefficients, np.float64)


def age_curve(metadata: dict[str, Any]) -> dict[str, Any] | None:
    """The age model's calibration curve record (knots, coefficients, cross-validated MAEs), or None."""
    curve = (metadata.get("calibration") or {}).get("curve")
    return curve if curve and curve.get("knots") and curve.get("coefficients") else None


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def find_runs_dir(path: str | Path | None = None, models: str | Path | None = None) -> Path:
    """The folder of local training runs: ``path``, else ``$AGEGENDER_RUNS_DIR``, else ``runs/`` beside the
    models folder ``models``."""
    return Path(path or os.environ.get(RUNS_ENV) or models_dir(models).parent / "runs")


def load_model_info(directory: str | Path | None = None, runs_dir: str | Path | None = None) -> ModelInfo:
    """Collect metadata, metrics and histories. Missing pieces are simply absent.

    Histories: ``models/history_<task>.csv`` (shipped) and ``runs/<name>/history.csv`` (local runs, see
    :func:`find_runs_dir`).
    """
    d = models_dir(directory)
    info = ModelInfo(directory=d)
    for task, name in MODEL_FILES.items():
        meta = _read_json((d / name).with_suffix(".json"))
        if meta:
            info.metadata[task] = meta
    for mode, name in METRIC_FILES.items():
        m = _read_json(d / name)
        if m:
            info.metrics[mode] = m
    for path in sorted(d.glob("history_*.csv")):
        info.histories[f"shipped: {path.stem.removeprefix('history_')}"] = path
    info.generalisation = load_generalisation(d / GENERALISATION_DIR)
    runs = find_runs_dir(runs_dir, d)
    if runs.is_dir():
        for path in sorted(runs.glob("*/history.csv")):
            info.histories[f"run: {path.parent.name}"] = path
    return info


def run_stages(run: dict[str, Any] | None) -> list[dict[str, Any]]:
    """A run record followed back through ``parent_run`` (a model trained further from an earlier export keeps
    the earlier record there): the records of every stage, oldest first."""
    stages = []
    while run:
        stages.insert(0, run)
        run = run.get("parent_run")
    return stages


@dataclass(frozen=True)
class Stage:
    """One stage in the making of a shipped model."""

    label: str  # "backbone", "fine-tune", "continued"
    kind: str  # the history's kind: "multitask", "age" or "gender"
    run: dict[str, Any]  # its run record
    history: Path | None  # its training history
    stage: int | None = None  # its rows in a staged history (the ``stage`` column); None: the whole file

    @property
    def title(self) -> str:
        """``backbone (multitask, from scratch)``, ``fine-tune (age)``, ..."""
        return f"{self.label} ({self.kind}{', from scratch' if self.run.get('init') == 'scratch' else ''})"

    @property
    def summary(self) -> str:
        """The stage in words, without its training settings (those are :attr:`description`)."""
        what = {"multitask": "age and gender together"}.get(self.kind, self.kind)
        start = "from scratch" if self.run.get("init") == "scratch" else "from an earlier network"
        if self.label == "backbone":
            return f"A shared network learned {what}, {start}."
        if self.label == "fine-tune":
            return f"The {self.kind} model started from that shared network and learned {what} alone."
        if self.label == "training":
            return f"The {self.kind} model learned {what}, {start}."
        return f"The {self.kind} model was trained further ({self.label})."

    @property
    def description(self) -> str:
        r = self.run
        frozen = f", blocks 1-{r['freeze_blocks']} frozen" if r.get("freeze_blocks") else ""
        return (f"{self.title}: {r.get('init_note') or r.get('init')}; schedule {r.get('schedule')}, "
                f"peak lr {r.get('lr')}{frozen}" + (f"; {r['note']}" if r.get("note") else ""))


def lineage(task: str, directory: str | Path | None = None) -> list[Stage]:
    """How the shipped ``task`` model ("age"/"gender") was made, oldest stage first: the multitask backbone it
    was fine-tuned from (``multitask_run.json``, when its first stage started from a ``.keras`` checkpoint of
    a run, which is how the backbone is handed on), then each stage of its own run record (``<task>_run.json``
    and its ``parent_run`` chain) with its rows of ``history_<task>.csv``. Empty without a run record."""
    d = models_dir(directory)
    stages = run_stages(_read_json(d / f"{task}_run.json"))
    if not stages:
        return []

    def history(name: str) -> Path | None:
        return d / name if (d / name).is_file() else None

    out = []
    backbone = _read_json(d / "multitask_run.json")
    if backbone and str(stages[0].get("init") or "").endswith(".keras"):
        out.append(Stage("backbone", "multitask", backbone, history("history_multitask.csv")))
    for k, run in enumerate(stages, 1):
        label = "fine-tune" if k == 1 and out else ("training" if k == 1 else f"continued, stage {k}")
        out.append(Stage(label, task, run, history(f"history_{task}.csv"), k if len(stages) > 1 else None))
    return out


def load_generalisation(folder: Path) -> Generalisation:
    """Every readable evaluation file in ``folder`` (any name ending ``.json``; unreadable files, and files
    without the fields it needs, are left out). UTKFace first, then the other datasets by name."""
    found = []
    for path in sorted(Path(folder).glob("*.json")) if Path(folder).is_dir() else []:
        data = _read_json(path)
        if (isinstance(data, dict) and isinstance(data.get("conditions"), dict) and "clean" in data["conditions"]
                and all(isinstance(data.get(k), str) for k in ("dataset", "model", "mode"))):
            found.append(data)
    found.sort(key=lambda d: (d["dataset"] != "utkface", d["dataset"],
                              MODEL_ORDER.index(d["model"]) if d["model"] in MODEL_ORDER else len(MODEL_ORDER),
                              d["model"]))
    out: Generalisation = {}
    for data in found:
        out.setdefault(data["mode"], {}).setdefault(data["dataset"], {})[data["model"]] = data
    return out


def _fmt(value: Any, spec: str, delta: Any = None) -> str:
    """``value`` formatted, with its change against the clean files in brackets where given."""
    if value is None:
        return "n/a"
    return format(value, spec) + ("" if delta is None else f" ({format(delta, '+' + spec.lstrip('+'))})")


def generalisation_rows(gen: Generalisation) -> list[dict[str, Any]]:
    """One row per mode, dataset and model on the clean files: the table of the model card and the dashboard."""
    rows = []
    for mode, datasets in gen.items():
        for dataset, models in datasets.items():
            for model, data in models.items():
                m = data["conditions"]["clean"]
                files = data.get("files")
                if data.get("limit") and data.get("split_files"):
                    files = f"{files} of {data['split_files']}"
                name = data.get("model_name") or model
                rows.append({"dataset": dataset, "mode": mode, "model": model if name == model else f"{model} ({name})",
                             "files": files, "faces scored": m["n"], "age MAE": _fmt(m["age_mae"], ".2f"),
                             "bias": _fmt(m["age_bias"], "+.2f"),
                             "bias 0-19": _fmt((m.get("under_20") or {}).get("age_bias"), "+.2f"),
                             "gender accuracy": _fmt(m["gender_accuracy"], ".1%"),
                             "gender accuracy 20+": _fmt(m["gender_accuracy_adults"], ".1%")})
    return rows


def degradation_rows(gen: Generalisation) -> list[dict[str, Any]]:
    """One row per mode, dataset and degradation, the same columns for every model found in ``gen``: each
    model's number with its change against the clean files in brackets, n/a where that model was not run."""
    models_run = dict.fromkeys(model for datasets in gen.values() for models in datasets.values() for model in models)
    rows = []
    for mode, datasets in gen.items():
        for dataset, models in datasets.items():
            names = dict.fromkeys(n for data in models.values() for n in data["conditions"] if n != "clean")
            for name in names:
                row: dict[str, Any] = {"dataset": dataset, "mode": mode, "degradation": name}
                for model in models_run:
                    m = models.get(model, {}).get("conditions", {}).get(name)
                    d = (m or {}).get("delta") or {}
                    row[f"{model}: age MAE"] = _fmt(m["age_mae"], ".2f", d.get("age_mae")) if m else "n/a"
                    row[f"{model}: bias"] = _fmt(m["age_bias"], "+.2f", d.get("age_bias")) if m else "n/a"
                    row[f"{model}: gender accuracy"] = (_fmt(m["gender_accuracy"], ".1%", d.get("gender_accuracy"))
                                                        if m else "n/a")
                    row[f"{model}: faces found"] = f"{m['n']} / {m['n'] + m['no_face']}" if m else "n/a"
                rows.append(row)
    return rows
