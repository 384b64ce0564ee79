"""Which runtime runs the two VGG16s: Keras on the ``.h5`` files, or the inference export shipped next to them.

The export (``python -m train.export``, also written by every training export) is OpenVINO IR in float32:
for each model ``<task>_model.trunk.xml/.bin`` (VGG blocks 1-2, up to ``pool2``: see
:data:`core.models.TRUNK_END`) and ``<task>_model.head.xml/.bin`` (the rest), and a sidecar
``<task>_model.export.json`` with the source ``.h5``'s sha256, the runtime and its version, a digest of the
trunk's weights and the parity numbers measured at export. On a CPU without bf16 math it computes what Keras
computes in float32 in about the same time (docs/speed.md), but it loads in a fraction of a second where
Keras needs TensorFlow's model loading, the batch-norm folding and tracing.

``AGEGENDER_RUNTIME`` chooses:

- ``auto`` (default): the export where OpenVINO is importable and the sidecar's hash matches the ``.h5``;
  Keras where the export is missing or stale;
- ``keras``: always the ``.h5``;
- ``export``: always the export; :class:`core.errors.ModelNotFound` says why where it cannot be used.

Precisions: ``float32``; ``bfloat16`` where the CPU has bf16 math; ``int8`` where the int8 heads are built
(``<task>_model.head.int8.xml/.bin``: the head's convolutions on int8, the trunk float32; made by
``python -m train.export`` from the activation ranges in ``<task>_model.int8.json``, see
:mod:`train.quantize`). On the test splits int8 moved ages by 0.06 years on average and the age MAE and
gender accuracy by less than 0.005 years and 0.05 points; it ran 1.7x float32's speed with AVX2 and 2.6x
with AVX-512 VNNI. Which is fastest differs by CPU: OpenVINO's bf16 ran the models twice as fast as float32
on an AMD EPYC (Zen 4, AVX512-BF16) and 1.7x slower on an Intel Xeon with AVX512-BF16 but no AMX
(docs/speed.md). So where there is more than one candidate, :func:`measured_precision` times them once, on the
shipped model's own layers, and remembers the fastest for this CPU in the cache folder.
``AGEGENDER_PRECISION=float32|bfloat16|int8`` skips the measurement.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import time
import warnings
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import numpy as np

from core.hardware import cpu_description, cpu_threads
from core.lite import cache_dir
from core.modelfiles import file_sha256, int8_ranges_path, part_path, read_metadata, sidecar_path

#: float32 NHWC (preprocessed by :func:`core.vggface.preprocess_input`, or trunk features) -> outputs.
Network = Callable[[np.ndarray], np.ndarray]

RUNTIMES = ("auto", "keras", "export")
EXPORT_RUNTIME = "openvino"
#: The parts of each exported model, in the order they run.
EXPORT_PARTS = ("trunk", "head")
#: What each part runs in precision ``int8``: the head's convolutions on int8 (:mod:`train.quantize`), the
#: trunk in float32 (quantizing VGG blocks 1-2 aged faces over 35 by 0.2-0.3 years on average).
INT8_PARTS = {"trunk": "trunk", "head": "head.int8"}


def runtime_choice() -> str:
    """``AGEGENDER_RUNTIME``: ``auto`` (default), ``keras`` or ``export``."""
    choice = os.environ.get("AGEGENDER_RUNTIME", "auto").strip().lower() or "auto"
    if choice not in RUNTIMES:
        raise ValueError(f"AGEGENDER_RUNTIME={choice!r}: expected one of {', '.join(RUNTIMES)}")
    return choice


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


def read_sidecar(model_path: Path) -> tuple[dict[str, Any] | None, str]:
    """The export sidecar of ``model_path`` as written, or None and why not; nothing checked against the
    files (:func:`usable_export` does that)."""
    sidecar = sidecar_path(model_path)
    if not sidecar.is_file():
        return None, f"no export next to {model_path.name} (run `python -m train.export`)"
    try:
        return json.loads(sidecar.read_text()), ""
    except (OSError, ValueError) as exc:
        return None, f"{sidecar.name} is unreadable ({exc})"


def usable_export(model_path: Path) -> tuple[dict[str, Any] | None, str]:
    """The export sidecar of ``model_path`` if the export can stand in for it, else None; and why not."""
    record, why = read_sidecar(model_path)
    if record is None:
        return None, why
    sidecar = sidecar_path(model_path)
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


def usable_int8(model_path: Path, record: dict[str, Any]) -> tuple[bool, str]:
    """Whether the int8 head next to ``model_path`` can run (``record``: its usable export sidecar), and why not.

    The export step records the int8 head it built and the sha256 of the ranges file it was built from;
    ranges measured again since (or for another ``.h5``) make it stale until ``python -m train.export``.
    """
    entry = record.get("int8")
    ranges = int8_ranges_path(model_path)
    if not isinstance(entry, dict):
        return False, (f"no int8 head next to {model_path.name} (`python -m train.quantize` measures its ranges, "
                       "`python -m train.export` builds it)")
    xml = part_path(model_path, INT8_PARTS["head"])
    if not (xml.is_file() and xml.with_suffix(".bin").is_file() and ranges.is_file()):
        return False, f"the int8 head of {model_path.name} or its {ranges.name} is missing"
    if entry.get("ranges_sha256") != file_sha256(ranges):
        return False, f"{ranges.name} changed since the int8 head was built: re-run `python -m train.export`"
    return True, ""


def openvino_network(xml: Path, precision: str = "float32") -> Network:
    """One exported part compiled for the CPU (one stream, every core), called on a batch; ``precision``:
    ``float32``, or ``bfloat16`` (OpenVINO's bf16 inference, output layers kept in float32 by OpenVINO) where
    the CPU has bf16 math. An int8 part (its quantizers in the graph) is compiled in ``float32``: OpenVINO
    runs its quantized convolutions on int8 and the rest in float32.

    OpenVINO keeps the compiled network in the cache folder (:func:`core.lite.cache_dir`), which makes the
    next process's compilation several times faster.
    """
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
#: measurements, one per CPU, OpenVINO version and set of candidates.
PRECISION_FILE = "export_precision.json"
#: Every precision the export can run in (``int8``: see :data:`INT8_PARTS`).
PRECISIONS = ("float32", "bfloat16", "int8")
#: What :func:`measured_precision` compares unless told otherwise (training's question: is bf16 faster here?).
BF16_QUESTION = ("float32", "bfloat16")


def precision_key(candidates: tuple[str, ...] = BF16_QUESTION) -> str:
    """What a precision measurement holds for: the CPU (model, cores, widest unit), OpenVINO's version and,
    other than float32 against bfloat16, the precisions compared."""
    key = f"{cpu_description()}; {cpu_threads()} threads; openvino {runtime_version()}"
    if os.environ.get("ONEDNN_MAX_CPU_ISA"):  # kernels capped (bench --emulate-avx2): another CPU, in effect
        key += f"; oneDNN capped at {os.environ['ONEDNN_MAX_CPU_ISA']}"
    return key if tuple(candidates) == BF16_QUESTION else f"{key}; {' / '.join(candidates)}"


def export_parts(model_path: Path, precision: str) -> dict[str, Path]:
    """The IR of each part (:data:`EXPORT_PARTS`) that runs in ``precision``."""
    names = INT8_PARTS if precision == "int8" else {part: part for part in EXPORT_PARTS}
    return {part: part_path(model_path, names[part]) for part in EXPORT_PARTS}


def compile_precision(precision: str) -> str:
    """The precision OpenVINO compiles in for one of :data:`PRECISIONS` (int8 parts: float32 around them)."""
    return "bfloat16" if precision == "bfloat16" else "float32"


def time_export(model_path: Path, candidates: tuple[str, ...] = BF16_QUESTION, *, rows: int = 16,
                rounds: int = 3) -> dict[str, float]:
    """Seconds for one exported model (trunk + head) on ``rows`` inputs (its input size, from its metadata) in
    each of ``candidates``: all compiled and warmed up first, then timed alternately ``rounds`` times, the
    best run of each (another thread's work, such as the detector building at start-up, then slows all
    alike). A candidate after the first that OpenVINO cannot compile here gets infinity (with a warning)."""
    size = int(read_metadata(model_path)["input_size"])
    x = np.random.default_rng(0).normal(0.0, 60.0, (rows, size, size, 3)).astype(np.float32)
    runs = {}
    best = {precision: float("inf") for precision in candidates}
    for precision in candidates:
        parts = export_parts(model_path, precision)
        try:
            trunk, head = (openvino_network(parts[part], compile_precision(precision)) for part in EXPORT_PARTS)
        except RuntimeError as error:  # e.g. bf16 where oneDNN is capped below the CPU (ONEDNN_MAX_CPU_ISA)
            if precision == candidates[0]:
                raise
            warnings.warn(f"the export does not compile in {precision} here, so it is not a candidate "
                          f"({str(error).strip().splitlines()[-1]})", stacklevel=2)
            continue
        runs[precision] = lambda trunk=trunk, head=head: head(trunk(x))
        runs[precision]()
    for _ in range(rounds):
        for precision, run in runs.items():
            started = time.perf_counter()
            run()
            best[precision] = min(best[precision], time.perf_counter() - started)
    return best


def measured_precision(model_path: Path, candidates: tuple[str, ...] = BF16_QUESTION, *,
                       measure: Callable[[Path, tuple[str, ...]], dict[str, float]] = time_export) -> str:
    """Whichever of ``candidates`` (:data:`PRECISIONS`, float32 first) ran the export of ``model_path``
    fastest on this CPU.

    Measured once per CPU, OpenVINO version and set of candidates (:func:`precision_key`) by ``measure``
    (:func:`time_export`, one to three seconds), and kept in :data:`PRECISION_FILE` in the cache folder with
    the times (and in this process). A cache folder that cannot be written only costs the measurement again
    in the next process.
    """
    candidates = tuple(candidates)
    path, key = _precision_record_place(candidates)
    records = _read_precision_records(path)
    known = _known_precision(path, key, records)
    if known:
        return known
    seconds = measure(model_path, candidates)
    choice = min(candidates, key=lambda p: seconds[p])  # a tie keeps the first (float32, the exact one)
    timed = {p: round(seconds[p], 4) if np.isfinite(seconds[p]) else None for p in candidates}  # None: no compile
    records[key] = {"precision": choice, "seconds": timed,
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


def _precision_record_place(candidates: tuple[str, ...]) -> tuple[Path, str]:
    return cache_dir() / PRECISION_FILE, precision_key(candidates)


def _read_precision_records(path: Path) -> dict[str, Any]:
    try:
        records = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return records if isinstance(records, dict) else {}


def known_precision(candidates: tuple[str, ...] = BF16_QUESTION) -> str | None:
    """The precision :func:`measured_precision` chose among ``candidates`` on this CPU and OpenVINO version
    before (in this process or kept in the cache folder), or None where it has not measured yet."""
    path, key = _precision_record_place(tuple(candidates))
    return _known_precision(path, key, _read_precision_records(path))


def _known_precision(path: Path, key: str, records: dict[str, Any]) -> str | None:
    if (str(path), key) in _measured:
        return _measured[(str(path), key)]
    known = records.get(key)
    if isinstance(known, dict) and known.get("precision") in PRECISIONS:
        return known["precision"]
    return None
