"""What the machine can do fast."""

from __future__ import annotations

import os
import threading
from functools import lru_cache
from pathlib import Path

_import_lock = threading.Lock()


def import_tensorflow() -> None:
    """Import TensorFlow and Keras, one thread at a time.

    The detector and the models load in two threads at once (:func:`core.pipeline.prepare`). When both
    import TensorFlow for the first time together, Python's import deadlock avoidance hands one of them a
    half-initialised module (seen in a fresh clone: "module 'tensorflow.python.data.ops.dataset_ops' has no
    attribute 'DatasetV2'"). Every first import of TensorFlow or Keras in ``core`` goes through here."""
    with _import_lock:
        import keras  # noqa: F401 - imports TensorFlow, its backend
        import tensorflow  # noqa: F401


def _read_cpuinfo() -> str:
    """The text of ``/proc/cpuinfo``; empty where there is none (not Linux)."""
    try:
        return Path("/proc/cpuinfo").read_text()
    except OSError:
        return ""


@lru_cache(maxsize=1)
def cpu_supports_bf16() -> bool:
    """True where the CPU has native bfloat16 math (AVX512-BF16 or AMX-BF16), Linux only."""
    flags = _read_cpuinfo()
    return "avx512_bf16" in flags or "amx_bf16" in flags


def cpu_description(cpuinfo: str | None = None) -> str:
    """The CPU's model name, core count and widest vector/matrix unit, e.g. ``AMD EPYC, 2 cores, AVX2``.

    Speed numbers differ several-fold between CPUs with and without bf16 math, so benchmarks print this.
    ``cpuinfo``: the text of ``/proc/cpuinfo`` (read from the machine when not given).
    """
    info = _read_cpuinfo() if cpuinfo is None else cpuinfo
    name = next((line.split(":", 1)[1].strip() for line in info.splitlines() if line.startswith("model name")),
                "unknown CPU")
    flags = set(next((line.split(":", 1)[1].split() for line in info.splitlines() if line.startswith("flags")),
                     []))
    units = [unit for flag, unit in (("amx_bf16", "AMX-BF16"), ("avx512_bf16", "AVX512-BF16"),
                                     ("avx512f", "AVX-512"), ("avx2", "AVX2")) if flag in flags]
    return f"{name}, {os.cpu_count()} cores, {units[0] if units else 'no AVX2'}"


def cpu_threads() -> int:
    """The cores this process may run on (its affinity where the OS tells it)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
