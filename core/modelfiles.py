"""Where the shipped models and their companion files live, and what each file is called.

One leaf that both the runtimes (:mod:`core.runtime`) and the loader (:mod:`core.models`) read, so neither
has to ask the other where a file is. Nothing here loads a model.

Next to each ``<task>_model.h5``: ``<task>_model.json`` (metadata), ``<task>_model.export.json`` (the inference
export's sidecar), ``<task>_model.{trunk,head,head.int8}.xml/.bin`` (the export's parts) and
``<task>_model.int8.json`` (the int8 heads' activation ranges).
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

from core.errors import ModelNotFound

#: Folder with the shipped models in a checkout; override with the AGEGENDER_MODELS_DIR environment variable.
DEFAULT_MODELS_DIR = Path(__file__).resolve().parent.parent / "models"
MODEL_FILES = {"age": "age_model.h5", "gender": "gender_model.h5"}


def installed_models_dir() -> Path | None:
    """Where ``pip install`` put the shipped models (``share/agegender/models`` under the install prefix,
    found through the package's record of its files), or ``None`` outside such an install."""
    from importlib import metadata

    try:
        files = metadata.distribution("agegender").files or []
    except metadata.PackageNotFoundError:
        return None
    for file in files:
        if file.name == MODEL_FILES["age"] and "share" in file.parts:
            return Path(metadata.distribution("agegender").locate_file(file)).resolve().parent
    return None


def models_dir(path: str | Path | None = None) -> Path:
    """``path``, else ``$AGEGENDER_MODELS_DIR``, else ``models/`` of the checkout, else the installed models."""
    chosen = path or os.environ.get("AGEGENDER_MODELS_DIR")
    if chosen:
        return Path(chosen)
    if DEFAULT_MODELS_DIR.is_dir():
        return DEFAULT_MODELS_DIR
    return installed_models_dir() or DEFAULT_MODELS_DIR


def model_paths(directory: Path) -> dict[str, Path]:
    return {task: directory / name for task, name in MODEL_FILES.items()}


def metadata_path(model_path: Path) -> Path:
    return model_path.with_suffix(".json")


def read_metadata(model_path: Path) -> dict[str, Any]:
    meta = metadata_path(model_path)
    if not meta.is_file():
        raise ModelNotFound(f"{meta} is missing: every model needs its metadata file next to it. "
                            "Re-export the model with `python -m train`.")
    return json.loads(meta.read_text())


def require_model_file(path: Path) -> None:
    """Raise :class:`ModelNotFound`, saying how to get it, when the model file ``path`` is missing."""
    if not path.is_file():
        raise ModelNotFound(
            f"model file {path} not found. Train it with `python -m train {path.stem.split('_')[0]} "
            "--data-dir PATH/TO/UTKFace` (see README), or put a trained .h5 and its .json there, or point "
            "AGEGENDER_MODELS_DIR at a folder that has them."
        )


def require_models(directory: str | Path | None = None) -> None:
    """Raise :class:`ModelNotFound` at once, before TensorFlow is imported or anything loaded, when a model
    file is missing (:func:`core.pipeline.prepare`, and so the CLI, and the app's loader call this first)."""
    for path in model_paths(models_dir(directory)).values():
        require_model_file(path)


def sidecar_path(model_path: Path) -> Path:
    return model_path.with_suffix(".export.json")


def part_path(model_path: Path, part: str) -> Path:
    """The OpenVINO IR of one part (``trunk``/``head``/``head.int8``); its weights are the ``.bin`` beside it."""
    return model_path.with_suffix(f".{part}.xml")


def int8_ranges_path(model_path: Path) -> Path:
    """``<task>_model.int8.json``: the activation ranges measured on training faces (:mod:`train.quantize`),
    committed next to the ``.h5``; ``python -m train.export`` builds the int8 head from them."""
    return model_path.with_suffix(".int8.json")


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            digest.update(block)
    return digest.hexdigest()
