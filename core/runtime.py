"""Which runtime runs the two VGG16s: Keras on the ``.h5`` files, or the inference export shipped next to them.

The export (``python -m train.export``, also written by every training export) is OpenVINO IR in float32:
for each model ``<task>_model.trunk.xml/.bin`` (VGG blocks 1-2, up to ``pool2``: see
:data:`core.models.TRUNK_END`) and ``<task>_model.head.xml/.bin`` (the rest), and a sidecar
``<task>_model.export.json`` with the source ``.h5``'s sha256, the runtime and its version, a digest of the
trunk's weights and the parity numbers measured at export. On a CPU without bf16 math it computes what Keras
computes in float32 in about the same time (README, "Speed"), but it loads in a fraction of a second where
Keras needs TensorFlow's model loading, the batch-norm folding and tracing.

``AGEGENDER_RUNTIME`` chooses:

- ``auto`` (default): the export where OpenVINO is importable and the sidecar's hash matches the ``.h5``;
  Keras where the export is missing or stale;
- ``keras``: always the ``.h5``;
- ``export``: always the export; :class:`core.errors.ModelNotFound` says why where it cannot be used.

The export runs in float32 on a CPU without bf16 math. On one with it, bf16 is not always the faster:
measured on two such 2-core machines, OpenVINO's bf16 ran the models twice as fast as float32 on an AMD
EPYC (Zen 4, AVX512-BF16) and 1.7x slower on an Intel Xeon with AVX512-BF16 but no AMX (README, "Speed").
So there :func:`measured_precision` times both once, on the shipped model's own layers, and remembers the
faster for this CPU in the cache folder. ``AGEGENDER_PRECISION=float32|bfloat16`` skips the measurement.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import time
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


def openvino_network(xml: Path, precision: str = "float32") -> Network:
    """One exported part compiled for the CPU (one stream, every core), called on a batch; ``precision``:
    ``float32``, or ``bfloat16`` (OpenVINO's bf16 inference, output layers kept in float32 by OpenVINO) where
    the CPU has bf16 math.

    OpenVINO keeps the compiled network in the cache folder (:func:`core.lite.cache_dir`), which makes the
    next process's compilation several times faster.
    """
    from core.hardware import cpu_threads
    from core.lite import cache_dir

    ov = import_openvino()

    hint = "bf16" if precision == "bfloat16" else "f32"
    config: dict[str, Any] = {"INFERENCE_PRECISION_HINT": hint, "PERFORMANCE_HINT": "LATENCY",
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


#: The file in the cache folder (:func:`core.lite.cache_dir`) where :func:`measured_precision` keeps its
#: measurements, one per CPU and OpenVINO version.
PRECISION_FILE = "export_precision.json"
PRECISIONS = ("float32", "bfloat16")


def precision_key() -> str:
    """What a precision measurement holds for: the CPU (model, cores, widest unit) and OpenVINO's version."""
    from core.hardware import cpu_description, cpu_threads

    return f"{cpu_description()}; {cpu_threads()} threads; openvino {runtime_version()}"


def time_export(model_path: Path, *, rows: int = 16, rounds: int = 3) -> dict[str, float]:
    """Seconds for one exported model (trunk + head) on ``rows`` inputs (its input size, from its metadata) in
    each of :data:`PRECISIONS`: both compiled and warmed up first, then timed alternately ``rounds`` times,
    the best run of each (another thread's work, such as the detector building at start-up, then slows both
    alike)."""
    from core.models import read_metadata

    size = int(read_metadata(model_path)["input_size"])
    x = np.random.default_rng(0).normal(0.0, 60.0, (rows, size, size, 3)).astype(np.float32)
    runs = {}
    for precision in PRECISIONS:
        trunk, head = (openvino_network(part_path(model_path, part), precision) for part in EXPORT_PARTS)
        runs[precision] = lambda trunk=trunk, head=head: head(trunk(x))
        runs[precision]()
    best = {precision: float("inf") for precision in PRECISIONS}
    for _ in range(rounds):
        for precision, run in runs.items():
            started = time.perf_counter()
            run()
            best[precision] = min(best[precision], time.perf_counter() - started)
    return best


def measured_precision(model_path: Path, *, measure: Callable[[Path], dict[str, float]] = time_export) -> str:
    """``float32`` or ``bfloat16``, whichever ran the export of ``model_path`` faster on this CPU.

    Measured once per CPU and OpenVINO version (:func:`precision_key`) by ``measure`` (:func:`time_export`,
    about two seconds), and kept in :data:`PRECISION_FILE` in the cache folder with the times (and in this
    process). A cache folder that cannot be written only costs the measurement again in the next process.
    """
    path, key = _precision_record_place()
    records = _read_precision_records(path)
    known = _known_precision(path, key, records)
    if known:
        return known
    seconds = measure(model_path)
    choice = min(PRECISIONS, key=lambda p: seconds[p])  # a tie keeps float32 (the exact one)
    records[key] = {"precision": choice, "seconds": {p: round(seconds[p], 4) for p in PRECISIONS},
                    "model": model_path.name, "measured": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    try:  # written whole, then renamed: a process reading it at the same time never sees half a file
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_name(f"{path.name}.{os.getpid()}.tmp")
        partial.write_text(json.dumps(records, indent=2))
        os.replace(partial, path)
    except OSError:
        pass
    _measured[(str(path), key)] = choice
    return choice


#: Precisions measured by this process, by (record file, :func:`precision_key`): a cache folder that cannot
#: be written costs the measurement once per process, not once per call.
_measured: dict[tuple[str, str], str] = {}


def _precision_record_place() -> tuple[Path, str]:
    from core.lite import cache_dir

    return cache_dir() / PRECISION_FILE, precision_key()


def _read_precision_records(path: Path) -> dict[str, Any]:
    try:
        records = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return records if isinstance(records, dict) else {}


def known_precision() -> str | None:
    """The precision :func:`measured_precision` chose on this CPU and OpenVINO version before (in this
    process or kept in the cache folder), or None where it has not measured yet."""
    path, key = _precision_record_place()
    return _known_precision(path, key, _read_precision_records(path))


def _known_precision(path: Path, key: str, records: dict[str, Any]) -> str | None:
    if (str(path), key) in _measured:
        return _measured[(str(path), key)]
    known = records.get(key)
    if isinstance(known, dict) and known.get("precision") in PRECISIONS:
        return known["precision"]
    return None
