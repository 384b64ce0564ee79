"""What is known about the shipped models: metadata, test metrics and training histories, from ``models/``."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from core.models import MODEL_FILES, models_dir

METRIC_FILES = {"chip": "metrics_test_chip.json", "detect": "metrics_test_detect.json"}


@dataclass
class ModelInfo:
    directory: Path
    metadata: dict[str, dict[str, Any]] = field(default_factory=dict)  # task -> metadata
    metrics: dict[str, dict[str, Any]] = field(default_factory=dict)  # "chip"/"detect" -> metrics
    histories: dict[str, Path] = field(default_factory=dict)  # run name -> history CSV

    @property
    def available(self) -> bool:
        return all((self.directory / f).is_file() for f in MODEL_FILES.values())


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def load_model_info(directory: str | Path | None = None, runs_dir: str | Path | None = None) -> ModelInfo:
    """Collect metadata, metrics and histories. Missing pieces are simply absent.

    Histories: ``models/history_<task>.csv`` (shipped) and ``runs/<name>/history.csv`` (local runs).
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
    runs = Path(runs_dir) if runs_dir else d.parent / "runs"
    if runs.is_dir():
        for path in sorted(runs.glob("*/history.csv")):
            info.histories[f"run: {path.parent.name}"] = path
    return info
