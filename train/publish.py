"""What happens after training: the float32 model saved and calibrated with its metadata, the inference
export, the gender model's reliability rule, and the run's history published next to the shipped models.

Called by the trainer at the end of a run (:func:`export`) and by :mod:`train.soup` (:func:`save_model`,
:func:`publish_history`); nothing here trains.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import platform
import shutil
import subprocess
import warnings
from collections.abc import Mapping
from pathlib import Path

import keras
import numpy as np

from core.models import MODEL_FILES, predict_crops
from train.calibrate import age_metadata, calibrate_age_model, fitted_on
from train.data import Source, describe_dataset, labels, load_chips_of, sources
from train.export import export_model
from train.metrics import validation_by_dataset
from train.model import build_model, compile_args, is_keras_model_h5
from train.reliability import after_export

ROOT = Path(__file__).resolve().parent.parent


def _git_commit() -> str | None:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True,
                              text=True, timeout=5).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def export(model, task: str, size: int, config: dict, run_dir: Path, out_dir: Path,
           data_dir: Path | Mapping[str, Source], val_samples, log, *, cache: bool = True) -> dict:
    """Save a float32 copy of ``model`` as ``<task>_model.h5`` with its metadata (:func:`save_model`), then
    the run's history and configuration next to it, then the gender model's reliability rule
    (:func:`train.reliability.after_export`, once both models are there)."""
    metadata = save_model(model, task, size, config, out_dir, data_dir, val_samples, cache=cache)
    publish_history(run_dir, out_dir, task, config)
    log(f"exported {out_dir / MODEL_FILES[task]}: validation {metadata['validation']}")
    after_export(out_dir, data_dir if isinstance(data_dir, Mapping) else sources([data_dir]), val_samples, log,
                 cache=cache)
    return metadata


def save_model(model, task: str, size: int, config: dict, out_dir: Path, data_dir: Path | Mapping[str, Source],
               val_samples, *, cache: bool = True) -> dict:
    """Save a float32 copy of ``model`` as ``<task>_model.h5`` plus ``<task>_model.json`` metadata.

    ``data_dir``: the dataset folder, or {dataset: Source} for samples of several datasets. Validation numbers
    in the metadata come from the app's crop (MTCNN landmarks of each image). An age model is first
    calibrated on them (:mod:`train.calibrate`: a least-absolute-deviations line folded into the head; with
    several datasets, one line on the union of their validation sets) and its age-range table is fitted on
    the calibrated predictions. With several datasets the validation numbers are also given per dataset.
    """
    keras.mixed_precision.set_global_policy("float32")
    clean = build_model(task)
    clean.set_weights(model.get_weights())
    align = config.get("crop") == "aligned"
    srcs = data_dir if isinstance(data_dir, Mapping) else sources([data_dir])
    x_val = load_chips_of(srcs, val_samples, size, cache=cache, align=True)
    y = labels(val_samples, task)
    calibration = None
    names = sorted({s.dataset for s in val_samples})
    if task == "age":
        calibration, pred, clean = calibrate_age_model(clean, x_val, y, fitted_on=fitted_on(names))
    else:
        pred = predict_crops(clean, x_val, flip=True)
    clean.compile(optimizer="adam", loss=compile_args(task)["loss"])  # the loss reloads with the .h5
    out_dir.mkdir(parents=True, exist_ok=True)
    model_path = out_dir / MODEL_FILES[task]
    clean.save(model_path)

    metadata: dict = {
        "task": task,
        "input_size": size,
        "preprocessing": "vggface_v1: RGB->BGR, minus mean (B, G, R) = (93.5940, 104.7624, 129.1863)",
        "crop": "core.crop.crop_face: similarity transform onto the UTKFace chip landmark template",
        "training_crop": ("MTCNN landmarks of each chip onto the template (the app's crop)" if align
                          else "the chip as it is"),
        "tta_flip": True,
        "output": "age in years" if task == "age" else "probability that the face is female (UTKFace label 1)",
        "validation": {},
        "provenance": {
            "dataset": " + ".join(describe_dataset(name) for name in names),
            "initialisation": config.get("init_note"),
            "run": {k: config.get(k) for k in ("schedule", "batch_size", "lr", "freeze_blocks", "crop", "policy",
                                           "n_train", "n_val", "n_test", "augment", "datasets")},
            "exported": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
            "git_commit": _git_commit(),
            "hardware": f"{platform.machine()} {os.cpu_count()} CPU cores",
        },
    }
    if task == "age":
        metadata.update(age_metadata(calibration, pred, y))
    else:
        metadata["validation"] = {"accuracy": round(float(np.mean((pred >= 0.5) == (y >= 0.5))), 4), "n": len(y),
                                  "crop": "app"}
    by_dataset = validation_by_dataset(task, pred, y, val_samples)
    if by_dataset:
        metadata["validation"]["per_dataset"] = by_dataset
    model_path.with_suffix(".json").write_text(json.dumps(metadata, indent=2))
    _export_for_inference(model_path, x_val[:PARITY_CHIPS], y[:PARITY_CHIPS])
    return metadata


#: Validation chips on which the inference export is compared with the .h5 at the end of training.
PARITY_CHIPS = 256


def _export_for_inference(model_path: Path, faces: np.ndarray, targets: np.ndarray) -> None:
    """The inference export next to the new ``.h5`` (:func:`train.export.export_model`). The ``.h5`` is what
    training produces: if the export fails, core runs the ``.h5`` and ``python -m train.export`` can retry."""
    try:
        export_model(model_path, faces=faces, labels=targets,
                     data=f"validation split, app crops (first {len(faces)})")
    except Exception as error:  # noqa: BLE001 - never lose a finished training run to its export step
        warnings.warn(f"the inference export of {model_path.name} failed ({type(error).__name__}: {error}); "
                      "core will run the .h5. Retry with `python -m train.export`.", RuntimeWarning, stacklevel=2)


def publish_history(run_dir: Path, out_dir: Path, task: str, config: dict) -> None:
    """Copy a run's history and configuration next to the shipped models (for the dashboard and card).

    A run that continued an exported model (``--init models/<task>_model.h5``) is one stage of that model's
    training: the published history is the earlier stages' history followed by this run's epochs (numbered
    on), with a ``stage`` column, and the run record keeps the earlier record under ``parent_run``.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    parent_run, parent_history = _parent_stage(run_dir, config.get("init") or "", task)
    record = {**config, "parent_run": parent_run} if parent_run else config
    if (run_dir / "history.csv").is_file():
        import pandas as pd

        history = pd.read_csv(run_dir / "history.csv")
        if parent_history is not None:
            before = pd.read_csv(parent_history)
            if "stage" not in before.columns:
                before.insert(0, "stage", 1)
            history.insert(0, "stage", int(before["stage"].max()) + 1)
            history["epoch"] += int(before["epoch"].max()) + 1
            history = pd.concat([before, history], ignore_index=True)
        history.to_csv(out_dir / f"history_{task}.csv", index=False)
    (out_dir / f"{task}_run.json").write_text(json.dumps(record, indent=2))


def _parent_stage(run_dir: Path, init: str, task: str) -> tuple[dict | None, Path | None]:
    """Run record and history of the exported model a run started from, if any.

    Both are copied into the run folder the first time (``parent_run.json``, ``parent_history.csv``), so
    publishing again, even over the parent's own files, gives the same result.
    """
    snap_run, snap_history = run_dir / "parent_run.json", run_dir / "parent_history.csv"
    source = Path(init)
    if not snap_run.is_file() and source.suffix == ".h5" and source.is_file() and is_keras_model_h5(source):
        for name, snap in ((f"{task}_run.json", snap_run), (f"history_{task}.csv", snap_history)):
            if (source.parent / name).is_file():
                shutil.copyfile(source.parent / name, snap)
    return (json.loads(snap_run.read_text()) if snap_run.is_file() else None,
            snap_history if snap_history.is_file() else None)
