"""Which runtime runs the two VGG16s: Keras on the ``.h5`` files, or the inference export shipped next to them.

The export (``python -m train.export``, also written by every training export) is OpenVINO IR in float32:
for each model ``<task>_model.trunk.xml/.bin`` (VGG blocks 1-2, up to ``pool2``: see
:data:`core.models.TRUNK_END`) and ``<task>_model.head.xml/.bin`` (the rest), and a sidecar
``<task>_model.export.json`` with the source ``.h5``'s sha256, the runtime and its version, a digest of the
trunk's weights and the parity numbers measured at export. On a CPU without bf16 math it computes what Keras
computes in float32 in about the same time (README, "Speed"), but it loads in a fraction of a second where
Keras needs TensorFlow's model loading, the batch-norm folding and tracing.

``AGEGENDER_RUNTIME`` chooses:

- ``auto`` (default): the export where OpenVINO is importable, the sidecar's hash matches the ``.h5`` and
  inference runs in float32; Keras where the CPU has bf16 math (its bf16 path is about twice as fast as any
  float32 runtime there) or the export is missing or stale;
- ``keras``: always the ``.h5``;
- ``export``: always the export; :class:`core.errors.ModelNotFound` says why where it cannot be used.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import numpy as np

#: float32 NHWC (preprocessed by :func:`core.vggface.preprocess_input`, or trunk features) -> outputs.
Network = Callable[[np.ndarray], np.ndarray]

RUNTIMES = ("auto", "keras", "export")
EXPORT_RUNTIME = "openvino"
#: The parts of each exported model, in the order they run.
EXPORT_PARTS = ("trunk", "head")


def runtime_choice() -> str:
    """``AGEGENDER_RUNTIME``: ``auto`` (default), ``keras`` or ``export``."""
    choice = os.environ.get("AGEGENDER_RUNTIME", "auto").strip().lower() or "auto"
    if choice not in RUNTIMES:
        raise ValueError(f"AGEGENDER_RUNTIME={choice!r}: expected one of {', '.join(RUNTIMES)}")
    return choice


def sidecar_path(model_path: Path) -> Path:
    return model_path.with_suffix(".export.json")


def part_path(model_path: Path, part: str) -> Path:
    """The OpenVINO IR of one part (``trunk``/``head``); its weights are the ``.bin`` beside it."""
    return model_path.with_suffix(f".{part}.xml")


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            digest.update(block)
    return digest.hexdigest()


def weights_digest(arrays: Iterable[np.ndarray]) -> str:
    """sha256 over the dtype, shape and bytes of each array, in order: equal iff the weights are identical."""
    digest = hashlib.sha256()
    for a in arrays:
        a = np.ascontiguousarray(a)
        digest.update(f"{a.dtype.str}{a.shape}".encode())
        digest.update(a.tobytes())
    return digest.hexdigest()


def import_openvino():
    """``openvino``, imported without its usage telemetry.

    ``import openvino`` imports its model converter, which sends an event to Google Analytics unless the
    user has opted out (``openvino_telemetry``); the images stay private either way, but this app sends
    nothing anywhere. With ``openvino_telemetry`` marked unimportable, OpenVINO uses its own no-op stub.
    """
    sys.modules.setdefault("openvino_telemetry", None)  # type: ignore[assignment]
    import openvino

    return openvino


def runtime_version() -> str | None:
    """OpenVINO's version, or None where it is not installed."""
    try:
        return import_openvino().get_version()
    except ImportError:
        return None


def usable_export(model_path: Path) -> tuple[dict[str, Any] | None, str]:
    """The export sidecar of ``model_path`` if the export can stand in for it, else None; and why not."""
    sidecar = sidecar_path(model_path)
    if not sidecar.is_file():
        return None, f"no export next to {model_path.name} (run `python -m train.export`)"
    try:
        record = json.loads(sidecar.read_text())
    except (OSError, ValueError) as exc:
        return None, f"{sidecar.name} is unreadable ({exc})"
    if record.get("runtime") != EXPORT_RUNTIME:
        return None, f"{sidecar.name} is for runtime {record.get('runtime')!r}, not {EXPORT_RUNTIME}"
    missing = [p.name for part in EXPORT_PARTS for p in (part_path(model_path, part),
                                                         part_path(model_path, part).with_suffix(".bin"))
               if not p.is_file()]
    if missing:
        return None, f"the export of {model_path.name} lacks {', '.join(missing)}"
    if not model_path.is_file() or record.get("source_sha256") != file_sha256(model_path):
        return None, (f"the export of {model_path.name} was made from another .h5 (sha256 differs): "
                      "re-run `python -m train.export`")
    if runtime_version() is None:
        return None, "OpenVINO is not installed (pip install -r requirements.txt)"
    return record, ""


def openvino_network(xml: Path) -> Network:
    """One exported part compiled for the CPU in float32 (one stream, every core), called on a batch.

    OpenVINO keeps the compiled network in the cache folder (:func:`core.lite.cache_dir`), which makes the
    next process's compilation several times faster.
    """
    from core.hardware import cpu_threads
    from core.lite import cache_dir

    ov = import_openvino()

    config: dict[str, Any] = {"INFERENCE_PRECISION_HINT": "f32", "PERFORMANCE_HINT": "LATENCY",
                              "INFERENCE_NUM_THREADS": cpu_threads()}
    try:
        (cache_dir() / "openvino").mkdir(parents=True, exist_ok=True)
        config["CACHE_DIR"] = str(cache_dir() / "openvino")
    except OSError:
        pass
    request = ov.Core().compile_model(str(xml), "CPU", config).create_infer_request()

    def run(x: np.ndarray) -> np.ndarray:
        return request.infer({0: np.ascontiguousarray(x, np.float32)})[0].copy()

    return run
